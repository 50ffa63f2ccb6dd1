//! `chexvision-trainer`: trains the runs that training requests (and, when
//! configured, new datasets) ask for, until SIGTERM or SIGINT. A run in
//! progress stops before its next batch and resumes on the next start.

use anyhow::{Context, Result};
use chexvision_service::{Service, ServiceArgs};
use chexvision_trainer::{parse_device, service::PRODUCER, TrainerServiceSettings};
use clap::Parser;

#[global_allocator]
static GLOBAL: chexvision_trainer::TrainingAllocator = chexvision_trainer::TrainingAllocator;

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

fn main() -> Result<()> {
    // Before the runtime's threads exist: it sets an environment variable.
    chexvision_trainer::park_idle_candle_workers();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run())
}

async fn run() -> Result<()> {
    let args = Args::parse();
    let service = Service::<TrainerServiceSettings>::start(PRODUCER, &args.service).await?;
    let device = parse_device(&service.config.service.device)
        .and_then(|d| d.open())
        .map_err(anyhow::Error::msg)
        .context("service.device")?;
    let tasks = chexvision_trainer::service::spawn(&service, device).await?;
    service.run_until_shutdown(tasks).await
}
