//! `chexvision-ingest`: consumes ingest requests until SIGTERM or SIGINT.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use chexvision_bus::{BusMetrics, Consumer, ConsumerOptions, TopicSpec};
use chexvision_config::{Config, Loader};
use chexvision_ingest::{metrics::IngestMetrics, service::IngestHandler, Ingest, IngestSettings};
use chexvision_telemetry::Telemetry;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for the request in progress to hand back.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "chexvision-ingest",
    version,
    about = "CheXVision ingest service"
)]
struct Args {
    /// YAML config file.
    #[arg(long, env = "CHEXVISION_CONFIG")]
    config: Option<PathBuf>,
    /// Object store: file:///path or s3://bucket/prefix.
    #[arg(long)]
    store: Option<String>,
    /// Event bus: memory:// or kafka://host:port.
    #[arg(long)]
    bus: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let loader = Loader::new()
        .file(args.config.as_ref())
        .store_and_bus_flags(args.store.as_deref(), args.bus.as_deref());
    let config: Config<IngestSettings> = loader.load()?;
    chexvision_telemetry::init_tracing(&config.log);

    let telemetry = Telemetry::new(chexvision_ingest::PRODUCER);
    let metrics = IngestMetrics::register(&telemetry.registry)?;
    let bus_metrics = BusMetrics::register(&telemetry.registry)?;
    telemetry.health.not_ready("bus", "connecting");
    let (server, address) = chexvision_telemetry::serve(&config.http.bind, telemetry.clone())
        .with_context(|| format!("serve http on {}", config.http.bind))?;
    let server_handle = server.handle();
    let server_task = tokio::spawn(server);
    tracing::info!(%address, "http endpoints up");

    let store = chexvision_store::open(&config.store, &config.s3).await?;
    let bus = chexvision_bus::connect(&config.bus, &config.kafka)?;
    bus.create_topics(&[
        TopicSpec::new(&config.topics.ingest_requests, config.kafka.partitions),
        TopicSpec::new(&config.topics.shards_raw, config.kafka.partitions),
        TopicSpec::new(&config.topics.dead_letter, 1),
    ])
    .await?;
    telemetry.health.ready("bus");

    let handler = IngestHandler {
        ingest: Ingest {
            store,
            bus: bus.clone(),
            topics: config.topics.clone(),
            settings: config.service.clone(),
            metrics: Some(metrics.clone()),
        },
        s3: config.s3.clone(),
        metrics: Some(metrics),
    };
    let consumer = Consumer::new(
        bus,
        ConsumerOptions::new(
            &config.service.group,
            &[&config.topics.ingest_requests],
            &config.kafka,
            &config.topics,
        ),
    )
    .with_metrics(bus_metrics);
    let shutdown = CancellationToken::new();
    let consumer_task = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { consumer.run(&handler, shutdown).await })
    };

    chexvision_telemetry::shutdown_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    // An interrupted ingest is not acknowledged: it is delivered again and
    // resumes from the shards already recorded.
    match tokio::time::timeout(SHUTDOWN_GRACE, consumer_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "consumer stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "consumer task failed"),
        Err(_) => tracing::warn!("consumer did not stop within {SHUTDOWN_GRACE:?}; exiting"),
    }
    server_handle.stop(true).await;
    let _ = server_task.await;
    Ok(())
}
