//! Prometheus metrics of the ingest service: the progress of a run shows as
//! images and shards counted by outcome.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

#[derive(Debug, Clone)]
pub struct IngestMetrics {
    /// Images by outcome: written, rejected.
    pub images: IntCounterVec,
    /// Shards by outcome: written, skipped (finished by an earlier run).
    pub shards: IntCounterVec,
    /// Requests by outcome: completed, failed.
    pub requests: IntCounterVec,
    /// Images the running ingest has yet to process.
    pub images_remaining: IntGauge,
}

impl IngestMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let images = IntCounterVec::new(
            Opts::new(
                "chexvision_ingest_images_total",
                "Images ingested, by outcome",
            ),
            &["outcome"],
        )?;
        let shards = IntCounterVec::new(
            Opts::new("chexvision_ingest_shards_total", "Raw shards, by outcome"),
            &["outcome"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new(
                "chexvision_ingest_requests_total",
                "Ingest requests, by outcome",
            ),
            &["outcome"],
        )?;
        let images_remaining = IntGauge::new(
            "chexvision_ingest_images_remaining",
            "Images of the running ingest not yet processed",
        )?;
        registry.register(Box::new(images.clone()))?;
        registry.register(Box::new(shards.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(images_remaining.clone()))?;
        Ok(IngestMetrics {
            images,
            shards,
            requests,
            images_remaining,
        })
    }
}

/// Progress as the remaining-images gauge.
impl crate::Progress for IngestMetrics {
    fn add_total(&self, images: u64) {
        self.images_remaining
            .add(i64::try_from(images).unwrap_or(i64::MAX));
    }

    fn advance(&self, images: u64) {
        self.images_remaining
            .sub(i64::try_from(images).unwrap_or(i64::MAX));
    }
}
