//! Prometheus metrics of the consume loop.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Counters and timings of record handling, labelled by topic.
#[derive(Clone, Debug)]
pub struct BusMetrics {
    consumed: IntCounterVec,
    handler_seconds: HistogramVec,
    dead_letter_failures: IntCounterVec,
    receive_errors: IntCounterVec,
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
        let dead_letter_failures = IntCounterVec::new(
            Opts::new(
                "chexvision_bus_dead_letter_failures_total",
                "Records acknowledged without a dead letter because the bus refused it for good \
                 (too large, not authorised, no dead-letter topic), by source topic",
            ),
            &["topic"],
        )?;
        let receive_errors = IntCounterVec::new(
            Opts::new(
                "chexvision_bus_receive_errors_total",
                "Errors the bus client reported while receiving (broker down, member evicted \
                 for not polling), by consumer group",
            ),
            &["group"],
        )?;
        registry.register(Box::new(consumed.clone()))?;
        registry.register(Box::new(receive_errors.clone()))?;
        registry.register(Box::new(handler_seconds.clone()))?;
        registry.register(Box::new(dead_letter_failures.clone()))?;
        Ok(BusMetrics {
            consumed,
            handler_seconds,
            dead_letter_failures,
            receive_errors,
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

    pub(crate) fn count_dead_letter_failure(&self, topic: &str) {
        self.dead_letter_failures.with_label_values(&[topic]).inc();
    }

    pub(crate) fn count_receive_error(&self, group: &str) {
        self.receive_errors.with_label_values(&[group]).inc();
    }

    /// Receive errors of a consumer group so far.
    pub fn receive_errors(&self, group: &str) -> u64 {
        self.receive_errors.with_label_values(&[group]).get()
    }

    /// Dead letters refused for good, for a source topic.
    pub fn dead_letter_failures(&self, topic: &str) -> u64 {
        self.dead_letter_failures.with_label_values(&[topic]).get()
    }

    /// Current count for a topic and outcome (for tests and status pages).
    pub fn consumed(&self, topic: &str, outcome: &str) -> u64 {
        self.consumed.with_label_values(&[topic, outcome]).get()
    }
}
