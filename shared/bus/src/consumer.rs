//! The consume loop every service runs: hand each record to a handler,
//! acknowledge it once the handler has made its output durable, retry
//! transient failures with backoff, and send records that keep failing (or are
//! malformed) to the dead-letter topic so the partition keeps flowing.

use std::{collections::VecDeque, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use async_trait::async_trait;
use chexvision_config::{KafkaSettings, Topics};
use chexvision_events::{DeadLetter, Envelope};
use futures::FutureExt;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::{header, Bus, BusError, BusMetrics, Delivery, OutboundRecord, Subscription};

/// Why a handler could not process a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The record itself is bad (undecodable, invalid): retrying cannot help,
    /// it goes to the dead-letter topic at once.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// Something else failed: retried with backoff, then dead-lettered.
    #[error("{0}")]
    Failed(String),
    /// A dependency is down (the object store unreachable after its own
    /// retries): the record is fine and its work must not be lost, so it is
    /// retried with backoff for as long as that lasts and never
    /// dead-lettered. Its partition waits, paused and polled, so the member
    /// keeps its place in the group; shutdown interrupts the wait.
    #[error("{0}")]
    Unavailable(String),
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
    /// A dead letter carries at most this much of the original value (and
    /// always its sha256 and size), so it stays publishable whatever the
    /// record's size.
    pub dead_letter_max_payload_bytes: usize,
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
            dead_letter_max_payload_bytes: settings.dead_letter_max_payload_bytes,
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

/// A handler still running after this long gets its partitions paused while
/// the subscription is polled.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// How often the consumer lag gauges are refreshed while waiting for records.
const LAG_REPORT_EVERY: Duration = Duration::from_secs(5);

/// Records taken from the bus while a handler runs, before the pause took
/// effect (or from partitions assigned meanwhile): kept in order and handled
/// next. Beyond this many the consumer stops polling until the handler is done.
const MAX_BUFFERED: usize = 256;

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
    ///
    /// While a handler runs, its partitions are paused and the subscription
    /// is still polled: a handler may take longer than the broker's
    /// `max.poll.interval.ms` without the member being evicted and its record
    /// handed to another member.
    pub async fn run(
        &self,
        handler: &dyn Handler,
        shutdown: CancellationToken,
    ) -> Result<(), BusError> {
        let mut subscription = self
            .bus
            .subscribe(&self.options.group, &self.options.topics)
            .await?;
        if let Some(metrics) = &self.metrics {
            self.options
                .topics
                .iter()
                .for_each(|t| metrics.initialise_topic(t));
        }
        let mut lag_tick = tokio::time::interval(LAG_REPORT_EVERY);
        lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buffered: VecDeque<Delivery> = VecDeque::new();
        let mut receive_failures = 0u32;
        loop {
            let delivery = match buffered.pop_front() {
                Some(delivery) => delivery,
                None => {
                    let next = tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break,
                        _ = lag_tick.tick() => {
                            self.report_lag(subscription.as_ref());
                            continue;
                        }
                        next = subscription.next() => next,
                    };
                    match next {
                        Ok(delivery) => {
                            receive_failures = 0;
                            delivery
                        }
                        Err(err) => {
                            // Broker trouble: keep trying, slower each time.
                            receive_failures += 1;
                            self.count_receive_error();
                            tracing::warn!(group = %self.options.group, error = %err, "receive failed");
                            let pause = self.options.backoff(receive_failures);
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                _ = tokio::time::sleep(pause) => continue,
                            }
                        }
                    }
                }
            };
            let outcome = self
                .process_polling(
                    handler,
                    &delivery,
                    &shutdown,
                    subscription.as_mut(),
                    &mut buffered,
                    &mut lag_tick,
                )
                .await;
            match outcome {
                Outcome::Handled | Outcome::DeadLettered => {
                    if let Err(err) = subscription.ack(&delivery).await {
                        tracing::warn!(%delivery, error = %err, "acknowledgement failed; the record may be delivered again");
                    }
                }
                Outcome::Interrupted => break,
            }
        }
        if let Some(metrics) = &self.metrics {
            // This member holds no partitions once it has left.
            metrics.set_lag(&self.options.group, &[]);
        }
        subscription.close().await
    }

    fn report_lag(&self, subscription: &dyn Subscription) {
        if let Some(metrics) = &self.metrics {
            metrics.set_lag(&self.options.group, &subscription.lag());
        }
    }

    /// [`Consumer::process`], with the subscription paused and polled meanwhile.
    async fn process_polling(
        &self,
        handler: &dyn Handler,
        delivery: &Delivery,
        shutdown: &CancellationToken,
        subscription: &mut dyn Subscription,
        buffered: &mut VecDeque<Delivery>,
        lag_tick: &mut tokio::time::Interval,
    ) -> Outcome {
        let work = self.process(handler, delivery, shutdown);
        tokio::pin!(work);
        // Most handlers finish quickly: pausing (which drops what the client
        // prefetched) only pays for a slow one.
        tokio::select! {
            biased;
            outcome = &mut work => return outcome,
            _ = tokio::time::sleep(PAUSE_AFTER) => {}
        }
        tracing::debug!(%delivery, "slow handler: pausing the partitions and polling meanwhile");
        self.pause(subscription);
        let mut retry_at: Option<tokio::time::Instant> = None;
        let outcome = loop {
            tokio::select! {
                biased;
                outcome = &mut work => break outcome,
                // A long handler must not freeze the lag a dashboard shows.
                _ = lag_tick.tick() => self.report_lag(&*subscription),
                next = subscription.next(), if retry_at.is_none() && buffered.len() < MAX_BUFFERED => {
                    match next {
                        Ok(early) => {
                            tracing::debug!(delivery = %early, "record arrived while paused; kept for later");
                            buffered.push_back(early);
                            // A rebalance may have assigned new, unpaused partitions.
                            self.pause(subscription);
                        }
                        Err(err) => {
                            self.count_receive_error();
                            tracing::warn!(group = %self.options.group, error = %err, "polling while a handler runs failed");
                            retry_at = Some(tokio::time::Instant::now() + self.options.backoff_max.min(Duration::from_secs(1)));
                        }
                    }
                }
                _ = async { tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)).await }, if retry_at.is_some() => {
                    retry_at = None;
                }
            }
        };
        if let Err(err) = subscription.resume() {
            tracing::warn!(group = %self.options.group, error = %err, "resuming partitions failed");
        }
        outcome
    }

    fn pause(&self, subscription: &mut dyn Subscription) {
        if let Err(err) = subscription.pause() {
            tracing::warn!(group = %self.options.group, error = %err, "pausing partitions failed; records may arrive early and are kept in order");
        }
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
            // A panicking handler (a bug) fails the attempt, not the consumer.
            let result = AssertUnwindSafe(handler.handle(delivery))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    Err(HandlerError::Failed(format!(
                        "the handler panicked: {}",
                        panic_message(panic.as_ref())
                    )))
                });
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
            let exhausted = match error {
                HandlerError::Malformed(_) => true,
                HandlerError::Failed(_) => attempt >= self.options.max_attempts,
                HandlerError::Unavailable(_) => false,
            };
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

    /// Publishes the dead letter, retrying while the failure may pass (the
    /// record must not be acknowledged before) or until shutdown. A dead
    /// letter the bus refuses for good (too large, not authorised, no
    /// dead-letter topic) is logged and counted and the record acknowledged:
    /// it must not block its partition. Returns whether to acknowledge.
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
                Err(err) if err.is_permanent() => {
                    tracing::error!(%delivery, error = %err, handler_error = %error, "the dead letter was refused for good; the record is dropped (its error is in this log line)");
                    if let Some(metrics) = &self.metrics {
                        metrics.count_dead_letter_failure(&delivery.topic);
                    }
                    return true;
                }
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

    fn count_receive_error(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.count_receive_error(&self.options.group);
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Longest handler error a dead letter carries (in its body and header).
const MAX_ERROR_BYTES: usize = 4096;

/// `text` cut to at most `max` bytes on a character boundary.
fn truncate_utf8(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

/// The dead-letter record for `delivery`: a DeadLetter event with the
/// original value inside (once; cut to `dead_letter_max_payload_bytes`, with
/// the whole value's sha256 and size), keyed like the original, with the
/// error and the origin in headers as well so tools can filter without
/// decoding.
pub(crate) fn dead_letter_record(
    options: &ConsumerOptions,
    delivery: &Delivery,
    error: &HandlerError,
    attempts: u32,
) -> OutboundRecord {
    let error_text = truncate_utf8(&error.to_string(), MAX_ERROR_BYTES);
    let truncated = delivery.payload.len() > options.dead_letter_max_payload_bytes;
    let kept = delivery
        .payload
        .len()
        .min(options.dead_letter_max_payload_bytes);
    let body = DeadLetter {
        source_topic: delivery.topic.clone(),
        source_partition: delivery.partition,
        source_offset: delivery.offset,
        key: delivery.key.iter().copied().take(1024).collect(),
        original_payload: delivery.payload[..kept].to_vec(),
        error: error_text.clone(),
        attempts,
        consumer_group: options.group.clone(),
        original_sha256: hex::encode(Sha256::digest(&delivery.payload)),
        original_size_bytes: delivery.payload.len() as u64,
        original_truncated: truncated,
    };
    // Keep the correlation id of the original event when it can be read.
    let original = Envelope::decode_checked(&delivery.payload).ok();
    let event = Envelope::follow(original.as_ref(), body, &options.group);
    let key = String::from_utf8_lossy(&delivery.key).into_owned();
    let mut record = OutboundRecord::event(&options.dead_letter_topic, &key, &event);
    record.key = delivery.key.iter().copied().take(1024).collect();
    record.headers.extend([
        (header::DLQ_ERROR.to_owned(), error_text.into_bytes()),
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
            dead_letter_max_payload_bytes: 1024,
        };
        assert_eq!(options.backoff(1), Duration::from_millis(100));
        assert_eq!(options.backoff(2), Duration::from_millis(200));
        assert_eq!(options.backoff(4), Duration::from_millis(800));
        assert_eq!(options.backoff(5), Duration::from_millis(1000));
        assert_eq!(options.backoff(60), Duration::from_millis(1000));
    }

    fn options(cap: usize) -> ConsumerOptions {
        ConsumerOptions {
            group: "g".into(),
            topics: vec!["t".into()],
            dead_letter_topic: "dlq".into(),
            max_attempts: 1,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(1),
            dead_letter_max_payload_bytes: cap,
        }
    }

    fn delivery(payload: Vec<u8>) -> Delivery {
        Delivery {
            topic: "t".into(),
            partition: 2,
            offset: 17,
            key: b"k".to_vec(),
            payload,
            headers: vec![],
        }
    }

    fn letter(record: &OutboundRecord) -> DeadLetter {
        match Envelope::decode_checked(&record.payload).unwrap().body {
            Some(chexvision_events::Body::DeadLetter(letter)) => letter,
            other => panic!("not a dead letter: {other:?}"),
        }
    }

    #[test]
    fn a_dead_letter_carries_the_payload_once() {
        let payload = b"not an envelope".to_vec();
        let record = dead_letter_record(
            &options(1024),
            &delivery(payload.clone()),
            &HandlerError::Malformed("bad".into()),
            1,
        );
        let letter = letter(&record);
        assert_eq!(letter.original_payload, payload);
        assert!(!letter.original_truncated);
        assert_eq!(letter.original_size_bytes, payload.len() as u64);
        assert_eq!(
            letter.original_sha256,
            hex::encode(Sha256::digest(&payload))
        );
        // Headers name the origin and the error, never the payload again.
        let header_bytes: usize = record.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        assert!(header_bytes < 512, "headers hold {header_bytes} bytes");
        assert!(record.payload.len() < payload.len() + 512);
    }

    #[test]
    fn a_large_payload_is_cut_and_identified_by_hash_and_size() {
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let error = HandlerError::Malformed("x".repeat(100_000));
        let record = dead_letter_record(&options(4096), &delivery(payload.clone()), &error, 1);
        let letter = letter(&record);
        assert!(letter.original_truncated);
        assert_eq!(letter.original_payload, payload[..4096]);
        assert_eq!(letter.original_size_bytes, 1_000_000);
        assert_eq!(
            letter.original_sha256,
            hex::encode(Sha256::digest(&payload))
        );
        assert!(
            letter.error.len() < MAX_ERROR_BYTES + 64,
            "{}",
            letter.error.len()
        );
        let whole = format!("({} bytes in all)", error.to_string().len());
        assert!(
            letter.error.ends_with(&whole),
            "{}",
            &letter.error[letter.error.len() - 40..]
        );
        assert!(
            record.payload.len() < 16 * 1024,
            "{} bytes",
            record.payload.len()
        );
    }
}
