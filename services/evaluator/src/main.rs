//! `chexvision-evaluator`: evaluates the checkpoints the trainer announces,
//! keeps the model registry, and exports model AUC for Grafana, until
//! SIGTERM or SIGINT. An evaluation in progress stops between batches and
//! resumes on the next start.

use anyhow::{Context, Result};
use chexvision_evaluator::{service::PRODUCER, EvaluatorServiceSettings};
use chexvision_service::{Service, ServiceArgs};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "chexvision-evaluator",
    version,
    about = "CheXVision evaluator service"
)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let service = Service::<EvaluatorServiceSettings>::start(PRODUCER, &args.service).await?;
    let device = chexvision_trainer::parse_device(&service.config.service.evaluation.device)
        .and_then(|d| d.open())
        .map_err(anyhow::Error::msg)
        .context("service.evaluation.device")?;
    let tasks = chexvision_evaluator::service::spawn(&service, device).await?;
    service.run_until_shutdown(tasks).await
}
