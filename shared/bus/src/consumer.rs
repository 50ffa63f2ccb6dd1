//! The consume loop every service runs: hand each record to a handler,
//! acknowledge it once the handler has made its output durable, retry
//! transient failures with backoff, and send records that keep failing (or are
//! malformed) to the dead-letter topic so the partition keeps flowing.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chexvision_config::{KafkaSettings, Topics};
use chexvision_events::{DeadLetter, Envelope};
use tokio_util::sync::CancellationToken;

use crate::{header, Bus, BusError, BusMetrics, Delivery, OutboundRecord, Subscription};

/// Why a handler could not process a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The record itself is bad (undecodable, invalid): retrying cannot help,
    /// it goes to the dead-letter topic at once.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// Something else failed (store unreachable, ...): retried with backoff,
    /// then dead-lettered.
    #[error("{0}")]
    Failed(String),
}

#[async_trait]
pub trait Handler: Send + Sync {
    /// Processes one record. Return only once its output is durable: the record
    /// is acknowledged right after.
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError>;
}

#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub group: String,
    pub topics: Vec<String>,
    pub dead_letter_topic: String,
    /// Attempts per record, including the first.
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl ConsumerOptions {
    pub fn new(group: &str, topics: &[&str], settings: &KafkaSettings, names: &Topics) -> Self {
        ConsumerOptions {
            group: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            dead_letter_topic: names.dead_letter.clone(),
            max_attempts: settings.handler_max_attempts.max(1),
            backoff_initial: Duration::from_millis(settings.retry_backoff_initial_ms),
            backoff_max: Duration::from_millis(settings.retry_backoff_max_ms),
        }
    }

    /// Exponential backoff before attempt `attempt + 1`.
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// Runs a handler over a consumer group until shut down.
pub struct Consumer {
    bus: Arc<dyn Bus>,
    options: ConsumerOptions,
    metrics: Option<BusMetrics>,
}

enum Outcome {
    Handled,
    DeadLettered,
    /// Shutdown came first: not acknowledged, so it will be delivered again.
    Interrupted,
}

impl Consumer {
    pub fn new(bus: Arc<dyn Bus>, options: ConsumerOptions) -> Self {
        Consumer {
            bus,
            options,
            metrics: None,
        }
    }

    pub fn with_metrics(mut self, metrics: BusMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Consumes until `shutdown` is cancelled. A record being handled when
    /// shutdown comes is finished first; acknowledged offsets are committed
    /// before returning.
    pub async fn run(
        &self,
        handler: &dyn Handler,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let mut subscription = self
            .bus
            .subscribe(&self.options.group, &self.options.topics)
            .await?;
        let mut receive_failures = 0u32;
        loop {
            let delivery = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = subscription.next() => next,
            };
            let delivery = match delivery {
                Ok(delivery) => {
                    receive_failures = 0;
                    delivery
                }
                Err(err) => {
                    // Broker trouble: keep trying, slower each time.
                    receive_failures += 1;
                    tracing::warn!(group = %self.options.group, error = %err, "receive failed");
                    let pause = self.options.backoff(receive_failures);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            };
            match self.process(handler, &delivery, &shutdown).await {
                Outcome::Handled | Outcome::DeadLettered => {
                    if let Err(err) = subscription.ack(&delivery).await {
                        tracing::warn!(%delivery, error = %err, "acknowledgement failed; the record may be delivered again");
                    }
                }
                Outcome::Interrupted => break,
            }
        }
        subscription.close().await
    }

    async fn process(
        &self,
        handler: &dyn Handler,
        delivery: &Delivery,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = std::time::Instant::now();
            let result = handler.handle(delivery).await;
            if let Some(metrics) = &self.metrics {
                metrics.observe_handler(&delivery.topic, started.elapsed());
            }
            let error = match result {
                Ok(()) => {
                    self.count(&delivery.topic, "handled");
                    return Outcome::Handled;
                }
                Err(error) => error,
            };
            let exhausted =
                matches!(error, HandlerError::Malformed(_)) || attempt >= self.options.max_attempts;
            if exhausted {
                tracing::error!(%delivery, attempt, error = %error, "giving up on record: sending it to the dead-letter topic");
                return match self.dead_letter(delivery, &error, attempt, shutdown).await {
                    true => {
                        self.count(&delivery.topic, "dead_lettered");
                        Outcome::DeadLettered
                    }
                    false => Outcome::Interrupted,
                };
            }
            self.count(&delivery.topic, "retried");
            let pause = self.options.backoff(attempt);
            tracing::warn!(%delivery, attempt, error = %error, ?pause, "handler failed; retrying");
            tokio::select! {
                _ = shutdown.cancelled() => return Outcome::Interrupted,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Publishes the dead letter, retrying until it is durable (the record must
    /// not be acknowledged before) or shutdown. Returns whether it was published.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        error: &HandlerError,
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> bool {
        let record = dead_letter_record(&self.options, delivery, error, attempts);
        let mut failures = 0;
        loop {
            match self.bus.publish(record.clone()).await {
                Ok(()) => return true,
                Err(err) => {
                    failures += 1;
                    tracing::error!(%delivery, error = %err, "publishing to the dead-letter topic failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(self.options.backoff(failures)) => {}
                    }
                }
            }
        }
    }

    fn count(&self, topic: &str, outcome: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.count_consumed(topic, outcome);
        }
    }
}

/// The dead-letter record for `delivery`: a DeadLetter event (with the original
/// value inside), keyed like the original, with the error and the origin in
/// headers as well so tools can filter without decoding.
pub(crate) fn dead_letter_record(
    options: &ConsumerOptions,
    delivery: &Delivery,
    error: &HandlerError,
    attempts: u32,
) -> OutboundRecord {
    let body = DeadLetter {
        source_topic: delivery.topic.clone(),
        source_partition: delivery.partition,
        source_offset: delivery.offset,
        key: delivery.key.clone(),
        original_payload: delivery.payload.clone(),
        error: error.to_string(),
        attempts,
        consumer_group: options.group.clone(),
    };
    // Keep the correlation id of the original event when it can be read.
    let event = match Envelope::decode_checked(&delivery.payload) {
        Ok(original) => Envelope::caused_by(&original, body, &options.group),
        Err(_) => Envelope::new(body, &options.group),
    };
    let key = String::from_utf8_lossy(&delivery.key).into_owned();
    let mut record = OutboundRecord::event(&options.dead_letter_topic, &key, &event);
    record.key = delivery.key.clone();
    record.headers.extend([
        (header::DLQ_ERROR.to_owned(), error.to_string().into_bytes()),
        (
            header::DLQ_SOURCE_TOPIC.to_owned(),
            delivery.topic.clone().into_bytes(),
        ),
        (
            header::DLQ_SOURCE_PARTITION.to_owned(),
            delivery.partition.to_string().into_bytes(),
        ),
        (
            header::DLQ_SOURCE_OFFSET.to_owned(),
            delivery.offset.to_string().into_bytes(),
        ),
        (
            header::DLQ_ATTEMPTS.to_owned(),
            attempts.to_string().into_bytes(),
        ),
        (
            header::DLQ_GROUP.to_owned(),
            options.group.clone().into_bytes(),
        ),
        (
            header::DLQ_ORIGINAL_PAYLOAD.to_owned(),
            delivery.payload.clone(),
        ),
    ]);
    record
}

/// Subscriptions also work without the consume loop (tools, tests).
pub async fn drain(
    subscription: &mut dyn Subscription,
    max: usize,
    idle: Duration,
) -> Vec<Delivery> {
    let mut out = Vec::new();
    while out.len() < max {
        match tokio::time::timeout(idle, subscription.next()).await {
            Ok(Ok(delivery)) => out.push(delivery),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let options = ConsumerOptions {
            group: "g".into(),
            topics: vec![],
            dead_letter_topic: "dlq".into(),
            max_attempts: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
        };
        assert_eq!(options.backoff(1), Duration::from_millis(100));
        assert_eq!(options.backoff(2), Duration::from_millis(200));
        assert_eq!(options.backoff(4), Duration::from_millis(800));
        assert_eq!(options.backoff(5), Duration::from_millis(1000));
        assert_eq!(options.backoff(60), Duration::from_millis(1000));
    }
}
