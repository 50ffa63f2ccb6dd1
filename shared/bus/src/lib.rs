//! The event bus the services coordinate through.
//!
//! One trait, two implementations with the same semantics:
//! - [`KafkaBus`]: any Kafka-protocol broker through rdkafka: idempotent
//!   producer (acks=all), consumer groups, offsets committed only for records a
//!   handler acknowledged;
//! - [`MemoryBus`]: in-process, for the embedded mode and unit tests: the same
//!   topics, partitions, groups, rebalancing and committed offsets.
//!
//! Delivery is at-least-once: a record not acknowledged (its handler crashed,
//! its consumer left) is delivered again, to this or another group member.
//! [`Consumer`] adds the policy every service shares: bounded retries with
//! backoff, then the dead-letter topic, so a poison record never blocks a
//! partition.

mod consumer;
mod kafka;
mod memory;
mod metrics;

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use chexvision_config::{KafkaSettings, Topics};
use chexvision_events::{Body, Envelope, ShardStage};

pub use consumer::{drain, Consumer, ConsumerOptions, Handler, HandlerError};
pub use kafka::KafkaBus;
pub use memory::MemoryBus;
pub use metrics::BusMetrics;

/// Record headers, in order.
pub type Headers = Vec<(String, Vec<u8>)>;

/// Header names the platform writes.
pub mod header {
    /// MIME-style description of the payload.
    pub const CONTENT_TYPE: &str = "content-type";
    pub const EVENT_ID: &str = "chexvision-event-id";
    pub const EVENT_KIND: &str = "chexvision-event-kind";
    pub const CORRELATION_ID: &str = "chexvision-correlation-id";
    /// On dead letters: the error of the last attempt.
    pub const DLQ_ERROR: &str = "chexvision-dlq-error";
    pub const DLQ_SOURCE_TOPIC: &str = "chexvision-dlq-source-topic";
    pub const DLQ_SOURCE_PARTITION: &str = "chexvision-dlq-source-partition";
    pub const DLQ_SOURCE_OFFSET: &str = "chexvision-dlq-source-offset";
    pub const DLQ_ATTEMPTS: &str = "chexvision-dlq-attempts";
    pub const DLQ_GROUP: &str = "chexvision-dlq-group";
}

/// Content type of every platform event.
pub const ENVELOPE_CONTENT_TYPE: &str =
    "application/x-protobuf; messageType=chexvision.v1.Envelope";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid bus URI `{uri}`: {reason}")]
    InvalidUri { uri: String, reason: String },
    #[error("topic `{topic}` does not exist (services create their topics at start; see `kafka.partitions`)")]
    UnknownTopic { topic: String },
    #[error("publishing to `{topic}` failed: {detail}")]
    Publish { topic: String, detail: String },
    /// The bus refused the record for good (too large, invalid, not
    /// authorised): sending it again cannot help.
    #[error("`{topic}` refused the record: {detail}")]
    Rejected { topic: String, detail: String },
    #[error("creating topic `{topic}` failed: {detail}")]
    CreateTopic { topic: String, detail: String },
    #[error("consumer group `{group}`: {detail}")]
    Consume { group: String, detail: String },
    #[error("the bus was closed")]
    Closed,
}

impl BusError {
    /// Whether retrying the same operation cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            BusError::Rejected { .. } | BusError::UnknownTopic { .. }
        )
    }
}

/// A record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRecord {
    pub topic: String,
    /// Records with the same key go to the same partition, in order.
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Headers,
}

impl OutboundRecord {
    /// A platform event, keyed by `key` (a request id or content hash, so
    /// retries of the same work land on the same partition).
    pub fn event(topic: &str, key: &str, event: &Envelope) -> Self {
        let mut headers: Headers = vec![
            (header::CONTENT_TYPE.into(), ENVELOPE_CONTENT_TYPE.into()),
            (
                header::EVENT_ID.into(),
                event.event_id().as_bytes().to_vec(),
            ),
            (
                header::CORRELATION_ID.into(),
                event.correlation_id().as_bytes().to_vec(),
            ),
        ];
        if let Some(kind) = event.kind() {
            headers.push((
                header::EVENT_KIND.into(),
                kind.json_name().as_bytes().to_vec(),
            ));
        }
        OutboundRecord {
            topic: topic.to_owned(),
            key: key.as_bytes().to_vec(),
            payload: event.to_bytes(),
            headers,
        }
    }
}

/// A record received by a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Headers,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// A header as text, if present and UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]@{}", self.topic, self.partition, self.offset)
    }
}

/// A topic and its partition count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        TopicSpec {
            name: name.into(),
            partitions,
        }
    }
}

#[async_trait]
pub trait Bus: Send + Sync + fmt::Debug {
    /// Creates topics that do not exist yet; existing ones are left as they are.
    async fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), BusError>;

    /// Returns once the record is durable on the bus (acknowledged by all replicas).
    async fn publish(&self, record: OutboundRecord) -> Result<(), BusError>;

    /// Joins consumer group `group` on `topics`. Members of one group share the
    /// topics' partitions; each record goes to one member.
    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, BusError>;

    /// Checks the bus answers (for readiness): a metadata request to the
    /// brokers, bounded in time.
    async fn probe(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// Waits until records handed to `publish` are delivered or `timeout`
    /// passes (at shutdown); blocking work runs off the async threads.
    async fn flush(&self, _timeout: std::time::Duration) -> Result<(), BusError> {
        Ok(())
    }
}

#[async_trait]
pub trait Subscription: Send {
    /// The next record; waits until there is one.
    async fn next(&mut self) -> Result<Delivery, BusError>;

    /// Marks `delivery` and everything before it on its partition as done: it
    /// will not be delivered to this group again. Call only once the handler's
    /// output is durable.
    async fn ack(&mut self, delivery: &Delivery) -> Result<(), BusError>;

    /// Stops fetching from the partitions assigned now, while the caller
    /// keeps calling [`Subscription::next`] to stay a live member (a record
    /// fetched before the pause may still arrive). Undone by `resume`.
    fn pause(&mut self) -> Result<(), BusError> {
        Ok(())
    }

    /// Fetches again from where the last record returned left off.
    fn resume(&mut self) -> Result<(), BusError> {
        Ok(())
    }

    /// Records not yet committed by this group, per partition assigned to
    /// this member: the partition's high watermark minus the group's
    /// committed offset (the whole partition before a first commit). As
    /// last known: Kafka's numbers are the client's statistics, refreshed
    /// every few seconds. Empty where the bus cannot tell.
    fn lag(&self) -> Vec<PartitionLag> {
        Vec::new()
    }

    /// Commits acknowledged offsets and leaves the group.
    async fn close(self: Box<Self>) -> Result<(), BusError>;
}

/// One assigned partition's consumer lag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// Records on the partition after the committed offset.
    pub records: i64,
}

/// Connects to the bus a URI names: `memory://` (a new in-process bus) or
/// `kafka://host:port[,host:port]`.
pub fn connect(uri: &str, settings: &KafkaSettings) -> Result<Arc<dyn Bus>, BusError> {
    if uri == "memory://" {
        Ok(Arc::new(MemoryBus::new()))
    } else if let Some(brokers) = uri.strip_prefix("kafka://") {
        Ok(Arc::new(KafkaBus::connect(brokers, settings)?))
    } else {
        Err(BusError::InvalidUri {
            uri: uri.to_owned(),
            reason: "use memory:// or kafka://host:port".into(),
        })
    }
}

/// The topic an event belongs on: where producers publish it and the only
/// topic a consumer accepts it from.
pub fn home_topic<'t>(event: &Envelope, topics: &'t Topics) -> Option<&'t str> {
    let topic = match event.body.as_ref()? {
        Body::IngestRequested(_) => &topics.ingest_requests,
        Body::ShardWritten(shard) if shard.stage() == ShardStage::Ready => &topics.shards_ready,
        Body::ShardWritten(_) | Body::DatasetIngested(_) => &topics.shards_raw,
        Body::DatasetReady(_) => &topics.datasets,
        Body::TrainingRequested(_) => &topics.training_requests,
        Body::CheckpointCreated(_) => &topics.checkpoints,
        Body::EvaluationCompleted(_) => &topics.evaluations,
        Body::ModelPromoted(_) => &topics.models_promoted,
        Body::DeadLetter(_) => &topics.dead_letter,
        Body::PredictionMade(_) => &topics.predictions,
        Body::FeedbackReceived(_) => &topics.feedback,
    };
    Some(topic.as_str())
}

/// Decodes a delivered record as a platform event and checks it arrived on
/// its own topic (a training request sent to `chexvision.datasets` is not a
/// training request for whoever reads that topic). Either failure is a
/// malformed record.
pub fn decode_event(delivery: &Delivery, topics: &Topics) -> Result<Envelope, HandlerError> {
    let envelope = Envelope::decode_checked(&delivery.payload)
        .map_err(|e| HandlerError::Malformed(e.to_string()))?;
    match home_topic(&envelope, topics) {
        Some(home) if home == delivery.topic => Ok(envelope),
        Some(home) => Err(HandlerError::Malformed(format!(
            "a {} event belongs on {home}, not on {}",
            envelope.kind().map_or("?", |k| k.json_name()),
            delivery.topic
        ))),
        None => Err(HandlerError::Malformed("event has no body".into())),
    }
}

/// Publishes a platform event.
pub async fn publish_event(
    bus: &dyn Bus,
    topic: &str,
    key: &str,
    event: &Envelope,
) -> Result<(), BusError> {
    bus.publish(OutboundRecord::event(topic, key, event)).await
}
