//! `chexvision-preprocess`: consumes raw shard announcements until SIGTERM
//! or SIGINT. A shard in progress is not acknowledged: it is delivered again.

use anyhow::Result;
use chexvision_preprocess::{
    service::{PreprocessHandler, PreprocessMetrics},
    Preprocess, PreprocessSettings,
};
use chexvision_service::{Service, ServiceArgs};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "chexvision-preprocess",
    version,
    about = "CheXVision preprocess service"
)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let service =
        Service::<PreprocessSettings>::start(chexvision_preprocess::PRODUCER, &args.service)
            .await?;
    let metrics = PreprocessMetrics::register(&service.telemetry.registry)?;
    let config = &service.config;
    let topics = &config.topics;
    service
        .create_topics(&[&topics.shards_raw, &topics.shards_ready, &topics.datasets])
        .await?;
    let handler = PreprocessHandler {
        preprocess: Preprocess {
            store: service.store.clone(),
            bus: service.bus.clone(),
            topics: topics.clone(),
            settings: config.service.clone(),
        },
        metrics: Some(metrics),
    };
    let consumer = service.spawn_consumer(&config.service.group, &[&topics.shards_raw], handler);
    service.run_until_shutdown(vec![consumer]).await
}
