//! What every CheXVision service's `main` does, once: read the config
//! (file, environment, `--store`/`--bus` flags), start logging and the
//! `/metrics` + health endpoints, open the store, connect the bus and create
//! its topics, run the service's tasks (consumers, workers) and, on SIGTERM
//! or SIGINT, stop them within a grace period.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use chexvision_service::{Service, ServiceArgs};
//! # #[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
//! # struct MySettings { group: String }
//! # impl chexvision_config::Validate for MySettings { fn validate(&self) -> Vec<(String, String)> { vec![] } }
//! let args = ServiceArgs { config: None, store: None, bus: None };
//! let service = Service::<MySettings>::start("chexvision-example", &args).await?;
//! // ... register metrics on service.telemetry.registry, create topics,
//! // spawn consumers with service.shutdown ...
//! service.run_until_shutdown(Vec::new()).await
//! # }
//! ```

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use chexvision_bus::{Bus, BusMetrics, Consumer, ConsumerOptions, Handler, TopicSpec};
use chexvision_config::{Config, Loader, Validate};
use chexvision_store::ObjectStore;
use chexvision_telemetry::{RunningServer, Telemetry};
use serde::{de::DeserializeOwned, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for the service's tasks to hand back their work.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The flags every service takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// YAML config file.
    #[arg(long, env = "CHEXVISION_CONFIG")]
    pub config: Option<PathBuf>,
    /// Object store: file:///path or s3://bucket/prefix.
    #[arg(long)]
    pub store: Option<String>,
    /// Event bus: memory:// or kafka://host:port.
    #[arg(long)]
    pub bus: Option<String>,
}

/// A running service: its config and connections, and the token that tells
/// its tasks to stop.
pub struct Service<S> {
    pub config: Config<S>,
    pub telemetry: Telemetry,
    pub store: Arc<dyn ObjectStore>,
    pub bus: Arc<dyn Bus>,
    pub bus_metrics: BusMetrics,
    /// Cancelled on SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
    server: RunningServer,
}

impl<S> Service<S>
where
    S: Serialize + DeserializeOwned + Default + Validate + Clone,
{
    /// Loads the config, starts logging and the HTTP endpoints (reported not
    /// ready until [`Service::bus_ready`]), opens the store and connects the bus.
    pub async fn start(name: &str, args: &ServiceArgs) -> Result<Self> {
        let config: Config<S> = Loader::new()
            .file(args.config.as_ref())
            .store_and_bus_flags(args.store.as_deref(), args.bus.as_deref())
            .load()?;
        chexvision_telemetry::init_tracing(&config.log);
        let telemetry = Telemetry::new(name);
        let bus_metrics = BusMetrics::register(&telemetry.registry)?;
        telemetry.health.not_ready("bus", "connecting");
        let (server, address) = chexvision_telemetry::spawn(&config.http.bind, telemetry.clone())
            .with_context(|| format!("serve http on {}", config.http.bind))?;
        tracing::info!(%address, service = name, "http endpoints up");
        let store = chexvision_store::open(&config.store, &config.s3).await?;
        let bus = chexvision_bus::connect(&config.bus, &config.kafka)?;
        Ok(Service {
            config,
            telemetry,
            store,
            bus,
            bus_metrics,
            shutdown: CancellationToken::new(),
            server,
        })
    }

    /// Creates the topics the service reads and writes (the dead-letter
    /// topic always) and reports the bus ready.
    pub async fn create_topics(&self, topics: &[&str]) -> Result<()> {
        let mut specs: Vec<TopicSpec> = topics
            .iter()
            .map(|t| TopicSpec::new(*t, self.config.kafka.partitions))
            .collect();
        specs.push(TopicSpec::new(&self.config.topics.dead_letter, 1));
        self.bus.create_topics(&specs).await?;
        self.telemetry.health.ready("bus");
        Ok(())
    }

    /// Runs `handler` over `topics` in consumer group `group` until shutdown.
    pub fn spawn_consumer(
        &self,
        group: &str,
        topics: &[&str],
        handler: impl Handler + 'static,
    ) -> (String, JoinHandle<Result<()>>) {
        let consumer = Consumer::new(
            self.bus.clone(),
            ConsumerOptions::new(group, topics, &self.config.kafka, &self.config.topics),
        )
        .with_metrics(self.bus_metrics.clone());
        let shutdown = self.shutdown.clone();
        let task = tokio::spawn(async move {
            consumer
                .run(&handler, shutdown)
                .await
                .map_err(anyhow::Error::from)
        });
        (format!("consumer {}", topics.join(",")), task)
    }

    /// Waits for SIGTERM or SIGINT, cancels [`Service::shutdown`], gives
    /// `tasks` [`SHUTDOWN_GRACE`] to finish (work not acknowledged by then is
    /// delivered again), then stops the HTTP endpoints.
    pub async fn run_until_shutdown(
        self,
        tasks: Vec<(String, JoinHandle<Result<()>>)>,
    ) -> Result<()> {
        chexvision_telemetry::shutdown_signal().await;
        tracing::info!("shutting down");
        self.telemetry.health.not_ready("service", "shutting down");
        self.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for (name, task) in tasks {
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(task = %name, error = %e, "stopped with an error"),
                Ok(Err(e)) => tracing::warn!(task = %name, error = %e, "task failed"),
                Err(_) => {
                    tracing::warn!(task = %name, "did not stop within {SHUTDOWN_GRACE:?}; exiting")
                }
            }
        }
        self.server.stop().await;
        Ok(())
    }
}
