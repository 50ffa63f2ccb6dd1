//! `chexvision-inference`: serves the registry's production model (or the
//! checkpoint named with `--checkpoint`) over REST, FHIR and the Open
//! Inference Protocol, follows promotions, until SIGTERM or SIGINT.

use anyhow::Result;
use chexvision_inference::{service, InferenceSettings};
use chexvision_service::{Service, ServiceArgs};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "chexvision-inference",
    version,
    about = "CheXVision inference service"
)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
    /// Serve this checkpoint (store key or URI) instead of the registry's
    /// production model; promotions are still followed.
    #[arg(long)]
    checkpoint: Option<String>,
    /// The checkpoint's sha256, checked before it is loaded.
    #[arg(long, requires = "checkpoint")]
    checkpoint_sha256: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut service = Service::<InferenceSettings>::start(service::PRODUCER, &args.service).await?;
    if let Some(checkpoint) = args.checkpoint {
        service.config.service.model.checkpoint = checkpoint;
        service.config.service.model.checkpoint_sha256 = args.checkpoint_sha256.unwrap_or_default();
    }
    let (tasks, _api, address) = service::spawn(&service).await?;
    tracing::info!(%address, "serving");
    service.run_until_shutdown(tasks).await
}
