//! What every CheXVision service's `main` does, once: read the config
//! (file, environment, `--store`/`--bus` flags), start logging and the
//! `/metrics` + health endpoints, open the store, connect the bus and create
//! its topics, run the service's tasks (consumers, workers) and, on SIGTERM
//! or SIGINT, stop them within a grace period.
//!
//! The runtime watches what it runs: the first task to end before shutdown
//! (a consumer whose subscription failed, a worker that stopped or
//! panicked) marks the service not ready and not alive (`/readyz` and
//! `/healthz` answer 503 with the reason), the other tasks are stopped and
//! the process exits non-zero, so Kubernetes restarts it instead of
//! keeping an idle pod that looks healthy. The bus is probed every few
//! seconds: a bus that does not answer makes the service not ready.
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

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{anyhow, Context, Result};
use chexvision_bus::{Bus, BusMetrics, Consumer, ConsumerOptions, Handler, TopicSpec};
use chexvision_config::{Config, Loader, Validate};
use chexvision_store::ObjectStore;
use chexvision_telemetry::{Health, RunningServer, Telemetry};
use serde::{de::DeserializeOwned, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for the service's tasks to hand back their work.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// After a task failed, the endpoints keep answering 503 this long before
/// the process exits, so probes and the last scrape see why.
pub const FAILURE_LINGER: Duration = Duration::from_secs(2);

/// How often the bus is probed for readiness.
pub const BUS_PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// A task the runtime watches: its name and handle.
pub type Task = (String, JoinHandle<Result<()>>);

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
    /// Cancelled on SIGTERM/SIGINT, or when a task ends unexpectedly.
    pub shutdown: CancellationToken,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub address: SocketAddr,
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
        let store = chexvision_store::MeteredStore::wrap(
            chexvision_store::open(&config.store, &config.s3).await?,
            chexvision_store::StoreMetrics::register(&telemetry.registry)?,
        );
        let bus = chexvision_bus::connect(&config.bus, &config.kafka)?;
        Ok(Service {
            config,
            telemetry,
            store,
            bus,
            bus_metrics,
            shutdown: CancellationToken::new(),
            address,
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
    ) -> Task {
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

    /// Runs until SIGTERM or SIGINT (or [`Service::shutdown`] is cancelled),
    /// or until one of `tasks` ends on its own, which is a failure. Then
    /// cancels [`Service::shutdown`], gives the tasks [`SHUTDOWN_GRACE`] to
    /// finish (work not acknowledged by then is delivered again), flushes
    /// the bus and stops the HTTP endpoints. Returns an error naming the
    /// task when one failed: `main` exits non-zero.
    pub async fn run_until_shutdown(self, tasks: Vec<Task>) -> Result<()> {
        let watcher = tokio::spawn(watch_bus(
            self.bus.clone(),
            self.telemetry.health.clone(),
            BUS_PROBE_INTERVAL,
            self.shutdown.clone(),
        ));
        let (names, handles): (Vec<String>, Vec<JoinHandle<Result<()>>>) =
            tasks.into_iter().unzip();
        let mut handles: Vec<Option<JoinHandle<Result<()>>>> =
            handles.into_iter().map(Some).collect();
        let first_end = async {
            if handles.is_empty() {
                return std::future::pending().await;
            }
            let (result, index, _) = futures::future::select_all(
                handles
                    .iter_mut()
                    .map(|h| h.as_mut().expect("unfinished task")),
            )
            .await;
            (index, result)
        };
        // `biased`: a stop that was asked for is seen before the tasks that
        // end because of it (tokio::select! otherwise picks among ready
        // branches at random, and a clean stop could read as a failure).
        let failure = tokio::select! {
            biased;
            _ = chexvision_telemetry::shutdown_signal() => None,
            _ = self.shutdown.cancelled() => None,
            (index, result) = first_end => {
                handles[index] = None;
                let reason = match result {
                    // Ended cleanly because shutdown began meanwhile.
                    Ok(Ok(())) if self.shutdown.is_cancelled() => None,
                    Ok(Ok(())) => Some(format!("{} stopped unexpectedly", names[index])),
                    Ok(Err(e)) => Some(format!("{} failed: {e:#}", names[index])),
                    Err(e) => Some(format!("{} panicked: {e}", names[index])),
                };
                reason.map(|reason| (names[index].clone(), reason))
            }
        };
        match &failure {
            Some((task, reason)) => {
                tracing::error!(%task, %reason, "a task ended before shutdown: the service stops");
                self.telemetry.health.fail(task, reason.clone());
            }
            None => {
                tracing::info!("shutting down");
                self.telemetry.health.not_ready("service", "shutting down");
            }
        }
        self.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for (name, task) in names.iter().zip(handles) {
            let Some(task) = task else { continue };
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(task = %name, error = %e, "stopped with an error"),
                Ok(Err(e)) => tracing::warn!(task = %name, error = %e, "task failed"),
                Err(_) => {
                    tracing::warn!(task = %name, "did not stop within {SHUTDOWN_GRACE:?}; exiting")
                }
            }
        }
        let _ = watcher.await;
        if let Err(e) = self.bus.flush(Duration::from_secs(10)).await {
            tracing::warn!(error = %e, "records still queued for the bus at exit");
        }
        if failure.is_some() {
            tokio::time::sleep(FAILURE_LINGER).await;
        }
        self.server.stop().await;
        match failure {
            Some((_, reason)) => Err(anyhow!(reason)),
            None => Ok(()),
        }
    }
}

/// Probes `bus` every `interval` until `shutdown`: a bus that does not
/// answer makes the service not ready (`bus` in `/readyz`) until it does.
pub async fn watch_bus(
    bus: Arc<dyn Bus>,
    health: Health,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut down = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = bus.probe() => result,
        };
        match result {
            Ok(()) if down => {
                tracing::info!("the bus answers again");
                health.ready("bus");
                down = false;
            }
            Ok(()) => {}
            Err(e) => {
                if !down {
                    tracing::warn!(error = %e, "the bus does not answer: not ready");
                }
                health.not_ready("bus", format!("the bus does not answer: {e}"));
                down = true;
            }
        }
    }
}

/// A store error as a consumer handler's error: a store that does not
/// answer is [`HandlerError::Unavailable`] (the record waits until it
/// does, never dead-lettered: its work must not be lost to an outage);
/// anything else [`HandlerError::Failed`] (retried, then dead-lettered).
pub fn store_failure(
    context: &str,
    error: &chexvision_store::StoreError,
) -> chexvision_bus::HandlerError {
    let message = format!("{context}: {error}");
    if error.is_unavailable() {
        chexvision_bus::HandlerError::Unavailable(message)
    } else {
        chexvision_bus::HandlerError::Failed(message)
    }
}
