//! The inference service's Prometheus metrics (`chexvision_inference_*`).

use std::collections::VecDeque;
use std::sync::Mutex;

use chexvision_dataset::LABELS;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry,
};

/// Predictions the drift gauges average over.
pub const DRIFT_WINDOW: usize = 1000;

#[derive(Clone)]
pub struct InferenceMetrics {
    /// By route pattern and status code.
    pub requests: IntCounterVec,
    /// End to end, by route pattern.
    pub request_seconds: HistogramVec,
    /// decode, preprocess, queue, inference, heatmap.
    pub stage_seconds: HistogramVec,
    /// Images admitted and not yet answered.
    pub queue_depth: IntGauge,
    pub batch_size: Histogram,
    /// Refused before any work: queue_full, not_ready, unauthorized, ….
    pub rejected: IntCounterVec,
    /// Work dropped: client_gone, deadline.
    pub skipped: IntCounterVec,
    /// 1 for the model being served.
    pub model_info: prometheus::IntGaugeVec,
    pub model_loaded_seconds: Gauge,
    pub swaps: IntCounter,
    pub swap_failures: IntCounterVec,
    pub finding_mean: GaugeVec,
    pub finding_positive_rate: GaugeVec,
    /// `PredictionMade` events: published, failed, dropped.
    pub prediction_events: IntCounterVec,
    drift: std::sync::Arc<Mutex<Drift>>,
}

/// The last [`DRIFT_WINDOW`] predictions' probabilities and decisions,
/// with their running sums (one row in, one out: no pass over the window
/// on the compute thread).
#[derive(Default)]
struct Drift {
    rows: VecDeque<[(f32, bool); 15]>,
    sums: [f64; 15],
    positives: [usize; 15],
}

impl InferenceMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let latency_buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let requests = IntCounterVec::new(
            Opts::new(
                "chexvision_inference_requests_total",
                "HTTP requests answered, by route pattern and status code",
            ),
            &["route", "status"],
        )?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "chexvision_inference_request_duration_seconds",
                "Time from a request's arrival to its answer, by route pattern",
            )
            .buckets(latency_buckets.clone()),
            &["route"],
        )?;
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new(
                "chexvision_inference_stage_duration_seconds",
                "Time per image in each stage: decode, preprocess, queue, inference, heatmap",
            )
            .buckets(latency_buckets),
            &["stage"],
        )?;
        let queue_depth = IntGauge::new(
            "chexvision_inference_queue_depth",
            "Images admitted and not yet answered (decoding, queued or computing)",
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "chexvision_inference_batch_size",
                "Images per forward pass (each test-time view counts)",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "chexvision_inference_rejected_total",
                "Requests refused, by reason (the error code)",
            ),
            &["reason"],
        )?;
        let skipped = IntCounterVec::new(
            Opts::new(
                "chexvision_inference_skipped_total",
                "Images admitted but not computed: client_gone, deadline",
            ),
            &["reason"],
        )?;
        let model_info = prometheus::IntGaugeVec::new(
            Opts::new(
                "chexvision_inference_model_info",
                "The model being served (1), with its version and architecture",
            ),
            &["version", "architecture", "synthetic"],
        )?;
        let model_loaded_seconds = Gauge::new(
            "chexvision_inference_model_loaded_timestamp_seconds",
            "When the served model was loaded (Unix time)",
        )?;
        let swaps = IntCounter::new(
            "chexvision_inference_model_swaps_total",
            "Models swapped in",
        )?;
        let swap_failures = IntCounterVec::new(
            Opts::new(
                "chexvision_inference_model_swap_failures_total",
                "Models that failed to load (the old one kept serving), by reason",
            ),
            &["reason"],
        )?;
        let finding_mean = GaugeVec::new(
            Opts::new(
                "chexvision_inference_finding_probability_mean",
                "Mean predicted probability over the last 1000 predictions, by finding",
            ),
            &["finding"],
        )?;
        let finding_positive_rate = GaugeVec::new(
            Opts::new(
                "chexvision_inference_finding_positive_rate",
                "Share of the last 1000 predictions positive at the threshold, by finding",
            ),
            &["finding"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(stage_seconds.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        // Known reasons start at zero: a first failure is an increase a
        // rule can see, and a panel has a series before it.
        for reason in ["checkpoint", "model", "registry", "no_model"] {
            swap_failures.with_label_values(&[reason]);
        }
        for reason in ["client_gone", "deadline"] {
            skipped.with_label_values(&[reason]);
        }
        for code in [
            "queue_full",
            "model_not_ready",
            "shutting_down",
            "deadline_exceeded",
            "unauthorized",
            "forbidden",
            "bad_request",
            "payload_too_large",
            "unsupported_media_type",
            "undecodable_image",
            "image_too_large",
        ] {
            rejected.with_label_values(&[code]);
        }
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(skipped.clone()))?;
        registry.register(Box::new(model_info.clone()))?;
        registry.register(Box::new(model_loaded_seconds.clone()))?;
        registry.register(Box::new(swaps.clone()))?;
        registry.register(Box::new(swap_failures.clone()))?;
        let prediction_events = IntCounterVec::new(
            Opts::new(
                "chexvision_inference_prediction_events_total",
                "Predictions sent to chexvision.predictions, by outcome (published, failed, dropped: the queue was full or there is no bus)",
            ),
            &["outcome"],
        )?;
        for outcome in ["published", "failed", "dropped"] {
            prediction_events.with_label_values(&[outcome]);
        }
        registry.register(Box::new(prediction_events.clone()))?;
        registry.register(Box::new(finding_mean.clone()))?;
        registry.register(Box::new(finding_positive_rate.clone()))?;
        Ok(InferenceMetrics {
            requests,
            request_seconds,
            stage_seconds,
            queue_depth,
            batch_size,
            rejected,
            skipped,
            model_info,
            model_loaded_seconds,
            swaps,
            swap_failures,
            finding_mean,
            finding_positive_rate,
            prediction_events,
            drift: Default::default(),
        })
    }

    /// Adds one prediction (15 probabilities, 15 thresholds) to the drift
    /// window and updates the gauges.
    pub fn observe_prediction(&self, probabilities: &[f32], thresholds: &[f64]) {
        let mut row = [(0f32, false); 15];
        for (i, slot) in row.iter_mut().enumerate() {
            let p = probabilities.get(i).copied().unwrap_or(0.0);
            let t = thresholds.get(i).copied().unwrap_or(0.5);
            *slot = (p, f64::from(p) >= t);
        }
        let mut drift = self.drift.lock().unwrap_or_else(|p| p.into_inner());
        let drift = &mut *drift;
        if drift.rows.len() == DRIFT_WINDOW {
            if let Some(old) = drift.rows.pop_front() {
                for (i, (p, positive)) in old.iter().enumerate() {
                    drift.sums[i] -= f64::from(*p);
                    drift.positives[i] -= usize::from(*positive);
                }
            }
        }
        for (i, (p, positive)) in row.iter().enumerate() {
            drift.sums[i] += f64::from(*p);
            drift.positives[i] += usize::from(*positive);
        }
        drift.rows.push_back(row);
        let n = drift.rows.len() as f64;
        for (i, name) in LABELS.iter().copied().chain(["abnormal"]).enumerate() {
            self.finding_mean
                .with_label_values(&[name])
                .set(drift.sums[i] / n);
            self.finding_positive_rate
                .with_label_values(&[name])
                .set(drift.positives[i] as f64 / n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_gauges_follow_the_window() {
        let m = InferenceMetrics::register(&Registry::new()).unwrap();
        let thresholds = [0.5; 15];
        for _ in 0..DRIFT_WINDOW {
            m.observe_prediction(&[0.9; 15], &thresholds);
        }
        let mean = || m.finding_mean.with_label_values(&["Atelectasis"]).get();
        let rate = || {
            m.finding_positive_rate
                .with_label_values(&["abnormal"])
                .get()
        };
        assert!((mean() - 0.9).abs() < 1e-6 && rate() == 1.0);
        // Half the window replaced: the oldest rows leave the sums.
        for _ in 0..DRIFT_WINDOW / 2 {
            m.observe_prediction(&[0.1; 15], &thresholds);
        }
        assert!((mean() - 0.5).abs() < 1e-6, "{}", mean());
        assert!((rate() - 0.5).abs() < 1e-12, "{}", rate());
    }
}
