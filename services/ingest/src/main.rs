//! `chexvision-ingest`: consumes ingest requests until SIGTERM or SIGINT.
//! An interrupted ingest is not acknowledged: it is delivered again and
//! resumes from the shards already recorded.

use anyhow::Result;
use chexvision_ingest::{metrics::IngestMetrics, service::IngestHandler, Ingest, IngestSettings};
use chexvision_service::{Service, ServiceArgs};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "chexvision-ingest",
    version,
    about = "CheXVision ingest service"
)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let service =
        Service::<IngestSettings>::start(chexvision_ingest::PRODUCER, &args.service).await?;
    let metrics = IngestMetrics::register(&service.telemetry.registry)?;
    let config = &service.config;
    service
        .create_topics(&[&config.topics.ingest_requests, &config.topics.shards_raw])
        .await?;
    let handler = IngestHandler {
        ingest: Ingest {
            store: service.store.clone(),
            bus: service.bus.clone(),
            topics: config.topics.clone(),
            settings: config.service.clone(),
            metrics: Some(metrics.clone()),
        },
        s3: config.s3.clone(),
        metrics: Some(metrics),
    };
    let consumer = service.spawn_consumer(
        &config.service.group,
        &[&config.topics.ingest_requests],
        handler,
    );
    service.run_until_shutdown(vec![consumer]).await
}
