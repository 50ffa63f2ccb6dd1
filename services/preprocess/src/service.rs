//! The service side: raw shard announcements and dataset completions.

use async_trait::async_trait;
use chexvision_bus::{decode_event, Delivery, Handler, HandlerError};
use chexvision_events::Body;
use prometheus::{IntCounterVec, Opts, Registry};

use crate::{Preprocess, PreprocessError, ShardOutcome};

#[derive(Debug, Clone)]
pub struct PreprocessMetrics {
    /// Images by outcome: ready, rejected.
    pub images: IntCounterVec,
    /// Shards by outcome: written, skipped.
    pub shards: IntCounterVec,
    /// Datasets announced ready.
    pub datasets: IntCounterVec,
}

impl PreprocessMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let images = IntCounterVec::new(
            Opts::new(
                "chexvision_preprocess_images_total",
                "Images preprocessed, by outcome",
            ),
            &["outcome"],
        )?;
        let shards = IntCounterVec::new(
            Opts::new(
                "chexvision_preprocess_shards_total",
                "Ready shards, by outcome",
            ),
            &["outcome"],
        )?;
        let datasets = IntCounterVec::new(
            Opts::new(
                "chexvision_preprocess_datasets_ready_total",
                "Datasets announced ready",
            ),
            &["size_px"],
        )?;
        registry.register(Box::new(images.clone()))?;
        registry.register(Box::new(shards.clone()))?;
        registry.register(Box::new(datasets.clone()))?;
        Ok(PreprocessMetrics {
            images,
            shards,
            datasets,
        })
    }
}

pub struct PreprocessHandler {
    pub preprocess: Preprocess,
    pub metrics: Option<PreprocessMetrics>,
}

fn handler_error(error: PreprocessError) -> HandlerError {
    match error {
        e @ (PreprocessError::BadEvent(_) | PreprocessError::Stale { .. }) => {
            HandlerError::Malformed(e.to_string())
        }
        // A raw shard the event names but the store does not hold will not
        // appear by retrying either.
        PreprocessError::Store(e) if e.is_not_found() => HandlerError::Malformed(e.to_string()),
        // The store down: wait for it rather than give the shard up.
        PreprocessError::Store(e) if e.is_unavailable() => HandlerError::Unavailable(e.to_string()),
        e => HandlerError::Failed(e.to_string()),
    }
}

#[async_trait]
impl Handler for PreprocessHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let envelope = decode_event(delivery, &self.preprocess.topics)?;
        match &envelope.body {
            Some(Body::ShardWritten(raw)) => {
                let outcome = self
                    .preprocess
                    .process_raw_shard(raw, Some(&envelope))
                    .await
                    .map_err(handler_error)?;
                if let Some(metrics) = &self.metrics {
                    let (kind, shard) = match &outcome {
                        ShardOutcome::Written(s) => ("written", s),
                        ShardOutcome::Skipped(s) => ("skipped", s),
                    };
                    metrics.shards.with_label_values(&[kind]).inc();
                    if kind == "written" {
                        metrics
                            .images
                            .with_label_values(&["ready"])
                            .inc_by(shard.rows);
                        metrics
                            .images
                            .with_label_values(&["rejected"])
                            .inc_by(shard.rejected.len() as u64);
                    }
                }
                // The announcement is the dataset partition owner's job.
                self.preprocess
                    .hand_over_if_complete(&raw.dataset_id, Some(&envelope))
                    .await
                    .map_err(handler_error)?;
            }
            Some(Body::DatasetIngested(done)) => {
                let ready = self
                    .preprocess
                    .announce_if_complete(&done.dataset_id, Some(&envelope))
                    .await
                    .map_err(handler_error)?;
                if let (Some(ready), Some(metrics)) = (ready, &self.metrics) {
                    metrics
                        .datasets
                        .with_label_values(&[&ready.image_size_px.to_string()])
                        .inc();
                }
            }
            other => {
                return Err(HandlerError::Malformed(format!(
                    "expected a raw shard or a dataset completion, got {:?}",
                    other.as_ref().map(Body::kind)
                )))
            }
        }
        Ok(())
    }
}
