//! Prometheus metrics of the consume loop.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::PartitionLag;

/// (topic, partition) as label values.
type TopicPartition = (String, String);

/// Counters and timings of record handling, labelled by topic.
#[derive(Clone, Debug)]
pub struct BusMetrics {
    consumed: IntCounterVec,
    handler_seconds: HistogramVec,
    dead_letter_failures: IntCounterVec,
    receive_errors: IntCounterVec,
    consumer_lag: IntGaugeVec,
    /// Partitions last reported per group, so a partition that moved to
    /// another member stops being reported here.
    lag_reported: Arc<Mutex<HashMap<String, Vec<TopicPartition>>>>,
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
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "chexvision_bus_consumer_lag_records",
                "Records after the consumer group's committed offset, per partition assigned \
                 to this process (the partition's high watermark minus the committed offset)",
            ),
            &["group", "topic", "partition"],
        )?;
        registry.register(Box::new(consumer_lag.clone()))?;
        registry.register(Box::new(consumed.clone()))?;
        registry.register(Box::new(receive_errors.clone()))?;
        registry.register(Box::new(handler_seconds.clone()))?;
        registry.register(Box::new(dead_letter_failures.clone()))?;
        Ok(BusMetrics {
            consumed,
            handler_seconds,
            dead_letter_failures,
            receive_errors,
            consumer_lag,
            lag_reported: Arc::default(),
        })
    }

    /// Sets the lag of the partitions a group's member holds now; those it
    /// held before and not now are removed.
    pub fn set_lag(&self, group: &str, lags: &[PartitionLag]) {
        let now: Vec<TopicPartition> = lags
            .iter()
            .map(|l| (l.topic.clone(), l.partition.to_string()))
            .collect();
        let mut reported = self.lag_reported.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, partition) in reported.get(group).into_iter().flatten() {
            if !now.contains(&(topic.clone(), partition.clone())) {
                let _ = self
                    .consumer_lag
                    .remove_label_values(&[group, topic, partition]);
            }
        }
        for (lag, (topic, partition)) in lags.iter().zip(&now) {
            self.consumer_lag
                .with_label_values(&[group, topic, partition])
                .set(lag.records);
        }
        reported.insert(group.to_owned(), now);
    }

    /// The lag last set for a group's partition (for tests).
    pub fn lag(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        let reported = self.lag_reported.lock().unwrap_or_else(|p| p.into_inner());
        let partition = partition.to_string();
        reported
            .get(group)?
            .iter()
            .any(|(t, p)| t == topic && *p == partition)
            .then(|| {
                self.consumer_lag
                    .with_label_values(&[group, topic, &partition])
                    .get()
            })
    }

    /// Counters of a consumer's topics start at zero for every outcome, so
    /// a rate (dead letters per topic, say) exists before the first one.
    pub(crate) fn initialise_topic(&self, topic: &str) {
        for outcome in ["handled", "retried", "dead_lettered"] {
            self.consumed.with_label_values(&[topic, outcome]);
        }
        self.dead_letter_failures.with_label_values(&[topic]);
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
