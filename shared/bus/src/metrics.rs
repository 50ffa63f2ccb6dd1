//! Prometheus metrics of the consume loop.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Counters and timings of record handling, labelled by topic.
#[derive(Clone, Debug)]
pub struct BusMetrics {
    consumed: IntCounterVec,
    handler_seconds: HistogramVec,
}

impl BusMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let consumed = IntCounterVec::new(
            Opts::new(
                "chexvision_bus_records_total",
                "Records taken from the bus, by topic and outcome (handled, retried, dead_lettered)",
            ),
            &["topic", "outcome"],
        )?;
        let handler_seconds = HistogramVec::new(
            HistogramOpts::new(
                "chexvision_bus_handler_seconds",
                "Time one handler attempt took, by topic",
            )
            .buckets(vec![0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0]),
            &["topic"],
        )?;
        registry.register(Box::new(consumed.clone()))?;
        registry.register(Box::new(handler_seconds.clone()))?;
        Ok(BusMetrics {
            consumed,
            handler_seconds,
        })
    }

    pub(crate) fn count_consumed(&self, topic: &str, outcome: &str) {
        self.consumed.with_label_values(&[topic, outcome]).inc();
    }

    pub(crate) fn observe_handler(&self, topic: &str, elapsed: Duration) {
        self.handler_seconds
            .with_label_values(&[topic])
            .observe(elapsed.as_secs_f64());
    }

    /// Current count for a topic and outcome (for tests and status pages).
    pub fn consumed(&self, topic: &str, outcome: &str) -> u64 {
        self.consumed.with_label_values(&[topic, outcome]).get()
    }
}
