//! The service side: ingest requests from the bus, one at a time.

use std::sync::Arc;

use async_trait::async_trait;
use chexvision_bus::{decode_event, Delivery, Handler, HandlerError};
use chexvision_config::S3Settings;
use chexvision_events::{Body, SourceFormat as ProtoSourceFormat};
use chexvision_synth::SynthConfig;

use crate::{metrics::IngestMetrics, Ingest, IngestError, Progress, Source};

pub struct IngestHandler {
    pub ingest: Ingest,
    pub s3: S3Settings,
    pub metrics: Option<IngestMetrics>,
}

impl IngestHandler {
    async fn source_for(
        &self,
        request: &chexvision_events::IngestRequested,
    ) -> Result<Source, HandlerError> {
        match ProtoSourceFormat::try_from(request.source_format) {
            Ok(ProtoSourceFormat::Synthetic) => {
                self.ingest
                    .settings
                    .check_synthetic(request.synthetic_rows, request.synthetic_size_px)
                    .map_err(HandlerError::Malformed)?;
                Source::synthetic(SynthConfig {
                    rows: request.synthetic_rows as usize,
                    size_px: request.synthetic_size_px,
                    seed: request.synthetic_seed,
                })
                .map_err(|e| HandlerError::Malformed(e.to_string()))
            }
            Ok(ProtoSourceFormat::Nih | ProtoSourceFormat::Parquet) => {
                if request.source_uri.is_empty() {
                    return Err(HandlerError::Malformed("source_uri is empty".into()));
                }
                // A missing folder or an unreachable store may come back: retry.
                Source::open(&request.source_uri, &self.s3)
                    .await
                    .map_err(|e| HandlerError::Failed(e.to_string()))
            }
            Ok(ProtoSourceFormat::Unspecified) | Err(_) => Err(HandlerError::Malformed(format!(
                "source_format {} is not one of NIH, PARQUET, SYNTHETIC",
                request.source_format
            ))),
        }
    }
}

#[async_trait]
impl Handler for IngestHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let envelope = decode_event(delivery, &self.ingest.topics)?;
        let Some(Body::IngestRequested(request)) = &envelope.body else {
            return Err(HandlerError::Malformed(format!(
                "expected an ingest request, got {:?}",
                envelope.kind()
            )));
        };
        crate::validate_dataset_id(&request.dataset_id)
            .map_err(|e| HandlerError::Malformed(e.to_string()))?;
        let mut ingest = self.ingest.clone();
        ingest.settings = self
            .ingest
            .settings
            .for_request(request.shard_target_rows, request.shard_target_bytes)
            .map_err(HandlerError::Malformed)?;
        let source = self.source_for(request).await?;
        tracing::info!(
            request_id = %request.request_id,
            dataset_id = %request.dataset_id,
            source = %source.uri,
            "ingest started"
        );
        let progress: Arc<dyn Progress> = match &self.metrics {
            Some(metrics) => Arc::new(metrics.clone()),
            None => Arc::new(crate::NoProgress),
        };
        let result = ingest
            .run(
                source,
                &request.dataset_id,
                Some(&envelope),
                progress.as_ref(),
            )
            .await;
        let outcome = if result.is_ok() {
            "completed"
        } else {
            "failed"
        };
        if let Some(metrics) = &self.metrics {
            metrics.requests.with_label_values(&[outcome]).inc();
            metrics.images_remaining.set(0);
        }
        match result {
            Ok(report) => {
                tracing::info!(
                    dataset_id = %request.dataset_id,
                    rows = report.manifest.rows_total,
                    rejected = report.manifest.rejected_total,
                    shards_written = report.shards_written,
                    shards_skipped = report.shards_skipped,
                    manifest = %report.manifest_uri,
                    "ingest completed"
                );
                Ok(())
            }
            // Retrying cannot change these: straight to the dead-letter topic.
            Err(
                e @ (IngestError::Conflict { .. }
                | IngestError::InvalidDatasetId(_)
                | IngestError::TooManyRejected { .. }),
            ) => Err(HandlerError::Malformed(e.to_string())),
            // The store down: the request waits for it (an ingest resumes
            // where it stopped) rather than being given up.
            Err(IngestError::Store(e)) if e.is_unavailable() => {
                Err(HandlerError::Unavailable(e.to_string()))
            }
            Err(e) => Err(HandlerError::Failed(e.to_string())),
        }
    }
}
