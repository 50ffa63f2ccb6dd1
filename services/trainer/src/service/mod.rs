//! The trainer service: training requests (and, when configured, dataset
//! completions) from the bus become runs in the store, trained one at a
//! time by a worker.
//!
//! * [`request`]: a request becomes a run's settings (its named config and
//!   overrides) checked against the trainer's limits, on a dataset ready at
//!   the run's image size. One that cannot (unknown config, bad or
//!   out-of-bounds override, dataset not prepared, model kind that
//!   contradicts the config) is malformed: the consumer sends it to the
//!   dead-letter topic with the reason.
//! * [`handler`]: a request is acknowledged once its run is durable
//!   (`config.yaml` and `state.json` written). Its run id is its request
//!   id, so a duplicate finds the run and starts nothing.
//! * [`worker`]: runs are trained one at a time, each by the replica that
//!   holds its lease; a killed trainer's runs resume on the next start.
//! * [`spawn`]: all of it on a started service, for `main` and the tests.

mod handler;
mod request;
mod worker;

use std::{path::Path, sync::Arc};

use anyhow::{Context, Result};
use chexvision_models::candle_core::Device;
use chexvision_service::{Service, Task};
use tokio::sync::mpsc;

pub use handler::{Accepted, TrainerHandler};
pub use request::{
    config_name, dataset_ready_request, latest_ready_dataset, load_run_settings, resolve_request,
    RequestError, ResolvedRequest,
};
pub use worker::{pending_runs, JobOutcome, TrainerWorker};

use crate::{TrainerMetrics, TrainerServiceSettings};

/// The `producer` of the trainer's events.
pub const PRODUCER: &str = "chexvision-trainer";

/// Starts what `chexvision-trainer` runs on a started service: checks the
/// configs it falls back on, creates its topics, and spawns the worker
/// (which resumes the runs a killed trainer left) and the request consumer.
pub async fn spawn(service: &Service<TrainerServiceSettings>, device: Device) -> Result<Vec<Task>> {
    let metrics = TrainerMetrics::register(&service.telemetry.registry)?;
    let config = &service.config;
    let settings = config.service.clone();
    let topics = &config.topics;
    // The configs this service falls back on must load: a typo there is the
    // operator's, not a request's, so it stops the start instead of
    // dead-lettering every request that needs it.
    let mut fallbacks = vec![
        settings.default_config.clone(),
        settings.densenet_config.clone(),
        settings.se_resnet_config.clone(),
    ];
    if settings.train_on_dataset_ready {
        fallbacks.push(settings.dataset_ready_config.clone());
    }
    let configs_dir = settings.configs_dir.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        for name in fallbacks {
            load_run_settings(
                Path::new(&configs_dir),
                &name,
                &Default::default(),
                "service settings",
            )
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("training config `{name}` in {configs_dir}"))?;
        }
        Ok(())
    })
    .await??;
    let mut listen = vec![topics.training_requests.as_str()];
    if settings.train_on_dataset_ready {
        listen.push(&topics.datasets);
    }
    let mut topic_names = listen.clone();
    topic_names.push(&topics.checkpoints);
    service.create_topics(&topic_names).await?;

    let (jobs, queue) = mpsc::unbounded_channel();
    let worker = Arc::new(TrainerWorker {
        store: service.store.clone(),
        bus: service.bus.clone(),
        topics: topics.clone(),
        settings: settings.clone(),
        device,
        metrics: Some(metrics.clone()),
    });
    let worker_task = (
        "worker".to_string(),
        tokio::spawn(worker.run(queue, service.shutdown.clone())),
    );
    let handler = TrainerHandler {
        store: service.store.clone(),
        topics: topics.clone(),
        settings: settings.clone(),
        jobs,
        metrics: Some(metrics),
    };
    let consumer = service.spawn_consumer(&settings.group, &listen, handler);
    Ok(vec![consumer, worker_task])
}
