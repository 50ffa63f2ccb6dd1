//! `chexvision-trainer`: trains the runs that training requests (and, when
//! configured, new datasets) ask for, until SIGTERM or SIGINT. A run in
//! progress stops before its next batch and resumes on the next start.

use std::sync::Arc;

use anyhow::{Context, Result};
use chexvision_service::{Service, ServiceArgs};
use chexvision_trainer::{
    parse_device,
    service::{load_run_settings, pending_runs, TrainerHandler, TrainerWorker, PRODUCER},
    TrainerMetrics, TrainerServiceSettings,
};
use clap::Parser;
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(
    name = "chexvision-trainer",
    version,
    about = "CheXVision trainer service"
)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let service = Service::<TrainerServiceSettings>::start(PRODUCER, &args.service).await?;
    let metrics = TrainerMetrics::register(&service.telemetry.registry)?;
    let config = &service.config;
    let settings = config.service.clone();
    let topics = &config.topics;
    let device = parse_device(&settings.device)
        .and_then(|d| d.open())
        .map_err(anyhow::Error::msg)
        .context("service.device")?;
    // The configs this service falls back on must load: a typo there is the
    // operator's, not a request's, so it stops the start instead of
    // dead-lettering every request that needs it.
    let mut fallbacks = vec![
        &settings.default_config,
        &settings.densenet_config,
        &settings.se_resnet_config,
    ];
    if settings.train_on_dataset_ready {
        fallbacks.push(&settings.dataset_ready_config);
    }
    for name in fallbacks {
        load_run_settings(
            std::path::Path::new(&settings.configs_dir),
            name,
            &Default::default(),
            "service settings",
        )
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("training config `{name}` in {}", settings.configs_dir))?;
    }
    let mut listen = vec![topics.training_requests.as_str()];
    if settings.train_on_dataset_ready {
        listen.push(&topics.datasets);
    }
    let mut topic_names = listen.clone();
    topic_names.push(&topics.checkpoints);
    service.create_topics(&topic_names).await?;

    // Runs a killed trainer left unfinished go first, oldest first.
    let (jobs, queue) = mpsc::unbounded_channel();
    let pending = pending_runs(service.store.as_ref()).await?;
    if !pending.is_empty() {
        tracing::info!(runs = ?pending, "resuming unfinished runs");
    }
    for run_id in pending {
        metrics.queued_runs.inc();
        let _ = jobs.send(run_id);
    }
    let worker = Arc::new(TrainerWorker {
        store: service.store.clone(),
        bus: service.bus.clone(),
        topics: topics.clone(),
        settings: settings.clone(),
        device,
        metrics: Some(metrics.clone()),
    });
    let worker_task = {
        let shutdown = service.shutdown.clone();
        (
            "worker".to_string(),
            tokio::spawn(worker.run(queue, shutdown)),
        )
    };
    let handler = TrainerHandler {
        store: service.store.clone(),
        settings: settings.clone(),
        jobs,
        metrics: Some(metrics),
    };
    let consumer = service.spawn_consumer(&settings.group, &listen, handler);
    service
        .run_until_shutdown(vec![consumer, worker_task])
        .await
}
