//! Kafka through rdkafka (bundled librdkafka).
//!
//! Producer: idempotent, acks=all, zstd by default, retrying each record for
//! `kafka.message_timeout_ms` so a broker restart delays records but loses none.
//! Consumer: offsets are stored only when a record is acknowledged and committed
//! from those stored offsets (periodically and when leaving the group), so a
//! record whose handler never finished is delivered again.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chexvision_config::KafkaSettings;
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::{ClientContext, DefaultClientContext},
    config::ClientConfig,
    consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, Headers as _, Message, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer},
    statistics::Statistics,
    util::Timeout,
};

use crate::{Bus, BusError, Delivery, OutboundRecord, PartitionLag, Subscription, TopicSpec};

/// How often a consumer's client reports its statistics (the lag).
const STATISTICS_INTERVAL_MS: &str = "5000";

/// Lag by (topic, partition), as the client's last statistics gave it.
type LagTable = Arc<Mutex<BTreeMap<(String, i32), i64>>>;

/// A consumer context that keeps the lag of the assigned partitions from
/// librdkafka's statistics: no extra broker requests.
struct LagContext {
    lag: LagTable,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        let mut table = BTreeMap::new();
        for (name, topic) in &statistics.topics {
            for partition in topic.partitions.values() {
                // -1 is librdkafka's internal "unassigned" partition.
                if partition.partition < 0 || partition.hi_offset < 0 {
                    continue;
                }
                // Before a first commit every record is unconsumed.
                let base = if partition.committed_offset >= 0 {
                    partition.committed_offset
                } else {
                    partition.lo_offset.max(0)
                };
                table.insert(
                    (name.clone(), partition.partition),
                    (partition.hi_offset - base).max(0),
                );
            }
        }
        *self.lag.lock().unwrap_or_else(|p| p.into_inner()) = table;
    }
}

impl ConsumerContext for LagContext {}

/// How long `create_topics` waits for new topics to appear in metadata.
const TOPIC_VISIBLE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct KafkaBus {
    brokers: String,
    settings: KafkaSettings,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.brokers)
            .finish()
    }
}

impl KafkaBus {
    /// Connects to `brokers` (`host:port[,host:port]`). Connections are made
    /// lazily; a broker that is down delays work instead of failing here.
    pub fn connect(brokers: &str, settings: &KafkaSettings) -> Result<Self, BusError> {
        let invalid = |e: KafkaError| BusError::InvalidUri {
            uri: format!("kafka://{brokers}"),
            reason: e.to_string(),
        };
        let producer: FutureProducer = producer_config(brokers, settings)
            .create()
            .map_err(invalid)?;
        let admin: AdminClient<DefaultClientContext> =
            with_overrides(base_config(brokers, settings), settings)
                .create()
                .map_err(invalid)?;
        Ok(KafkaBus {
            brokers: brokers.to_owned(),
            settings: settings.clone(),
            producer,
            admin,
        })
    }

    /// Waits until every topic is in the cluster metadata with its partitions.
    async fn wait_visible(&self, topics: &[TopicSpec]) -> Result<(), BusError> {
        let deadline = Instant::now() + TOPIC_VISIBLE_TIMEOUT;
        for spec in topics {
            loop {
                let producer = self.producer.clone();
                let name = spec.name.clone();
                let partitions = tokio::task::spawn_blocking(move || {
                    producer
                        .client()
                        .fetch_metadata(Some(&name), Timeout::After(Duration::from_secs(5)))
                        .ok()
                        .and_then(|m| {
                            m.topics()
                                .iter()
                                .find(|t| t.name() == name && t.error().is_none())
                                .map(|t| t.partitions().len())
                        })
                })
                .await
                .ok()
                .flatten();
                if partitions.is_some_and(|n| n > 0) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(BusError::CreateTopic {
                        topic: spec.name.clone(),
                        detail: format!(
                            "not visible in the metadata of {} after {TOPIC_VISIBLE_TIMEOUT:?}",
                            self.brokers
                        ),
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }
}

fn base_config(brokers: &str, settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", &settings.client_id)
        // Keep reconnect attempts frequent so a restarted broker is found quickly.
        .set("reconnect.backoff.max.ms", "2000");
    config
}

fn producer_config(brokers: &str, settings: &KafkaSettings) -> ClientConfig {
    let mut config = base_config(brokers, settings);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", &settings.compression)
        .set(
            "message.timeout.ms",
            settings.message_timeout_ms.to_string(),
        )
        .set("linger.ms", "5");
    with_overrides(config, settings)
}

/// Applies `kafka.properties` last, so an operator's setting wins.
fn with_overrides(mut config: ClientConfig, settings: &KafkaSettings) -> ClientConfig {
    for (key, value) in &settings.properties {
        config.set(key, value);
    }
    config
}

#[async_trait]
impl Bus for KafkaBus {
    async fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), BusError> {
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|spec| {
                NewTopic::new(
                    &spec.name,
                    spec.partitions,
                    TopicReplication::Fixed(self.settings.replication_factor),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = self
            .admin
            .create_topics(&new_topics, &options)
            .await
            .map_err(|e| BusError::CreateTopic {
                topic: topics
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                detail: e.to_string(),
            })?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(BusError::CreateTopic {
                        topic,
                        detail: code.to_string(),
                    })
                }
            }
        }
        self.wait_visible(topics).await
    }

    async fn publish(&self, record: OutboundRecord) -> Result<(), BusError> {
        // librdkafka retries what it knows to be transient for up to
        // message.timeout.ms; some brokers answer a restart with errors it
        // treats as final (tansu: UNKNOWN), so retry those here, bounded.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self.send_once(&record).await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            let permanent = matches!(
                error,
                KafkaError::MessageProduction(
                    RDKafkaErrorCode::UnknownTopicOrPartition
                        | RDKafkaErrorCode::UnknownTopic
                        | RDKafkaErrorCode::MessageSizeTooLarge
                        | RDKafkaErrorCode::InvalidMessageSize
                        | RDKafkaErrorCode::InvalidMessage
                        | RDKafkaErrorCode::TopicAuthorizationFailed
                        // librdkafka already retried for message.timeout.ms.
                        | RDKafkaErrorCode::MessageTimedOut
                )
            );
            if permanent || attempt >= self.settings.publish_max_attempts {
                return Err(match error {
                    KafkaError::MessageProduction(
                        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
                    ) => BusError::UnknownTopic {
                        topic: record.topic.clone(),
                    },
                    KafkaError::MessageProduction(
                        code @ (RDKafkaErrorCode::MessageSizeTooLarge
                        | RDKafkaErrorCode::InvalidMessageSize
                        | RDKafkaErrorCode::InvalidMessage
                        | RDKafkaErrorCode::TopicAuthorizationFailed),
                    ) => BusError::Rejected {
                        topic: record.topic.clone(),
                        detail: format!("{code} ({} bytes)", record.payload.len()),
                    },
                    other => BusError::Publish {
                        topic: record.topic.clone(),
                        detail: format!("{other} (after {attempt} attempts)"),
                    },
                });
            }
            let pause = Duration::from_millis(
                self.settings
                    .retry_backoff_initial_ms
                    .saturating_mul(1 << (attempt - 1).min(16))
                    .min(self.settings.retry_backoff_max_ms),
            );
            tracing::warn!(topic = %record.topic, attempt, error = %error, ?pause, "publish failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[String],
    ) -> Result<Box<dyn Subscription>, BusError> {
        let consume_error = |e: KafkaError| BusError::Consume {
            group: group.to_owned(),
            detail: e.to_string(),
        };
        let mut consumer_config = base_config(&self.brokers, &self.settings);
        consumer_config
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                self.settings.session_timeout_ms.to_string(),
            )
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
        consumer_config.set(
            "max.poll.interval.ms",
            self.settings.max_poll_interval_ms.to_string(),
        );
        let lag = LagTable::default();
        let consumer: StreamConsumer<LagContext> = with_overrides(consumer_config, &self.settings)
            // Set after the overrides: acknowledgement depends on these.
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            // Offsets are stored only on ack; auto-commit then commits those.
            .set("enable.auto.offset.store", "false")
            .create_with_context(LagContext { lag: lag.clone() })
            .map_err(consume_error)?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(consume_error)?;
        Ok(Box::new(KafkaSubscription {
            consumer,
            group: group.to_owned(),
            lag,
        }))
    }

    async fn probe(&self) -> Result<(), BusError> {
        let producer = self.producer.clone();
        let brokers = self.brokers.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Timeout::After(PROBE_TIMEOUT))
                .map(|_| ())
                .map_err(|e| BusError::Consume {
                    group: "probe".into(),
                    detail: format!("no metadata from {brokers} within {PROBE_TIMEOUT:?}: {e}"),
                })
        })
        .await
        .map_err(|_| BusError::Closed)?
    }

    async fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout)))
            .await
            .map_err(|_| BusError::Closed)?
            .map_err(|e| BusError::Publish {
                topic: "(flush)".into(),
                detail: e.to_string(),
            })
    }
}

/// How long a readiness probe waits for the brokers' metadata.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl KafkaBus {
    async fn send_once(&self, record: &OutboundRecord) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        let mut future_record = FutureRecord::to(&record.topic)
            .payload(&record.payload)
            .headers(headers);
        if !record.key.is_empty() {
            future_record = future_record.key(&record.key);
        }
        self.producer
            .send(future_record, Timeout::Never)
            .await
            .map(|_| ())
            .map_err(|(err, _)| err)
    }
}

impl Drop for KafkaBus {
    fn drop(&mut self) {
        // Deliver what is still queued before the producer goes away. The
        // services flush at shutdown (`Bus::flush`, off the async threads),
        // so this usually has nothing to wait for; when it has, it must not
        // stall an async worker thread that other tasks run on.
        if self.producer.in_flight_count() == 0 {
            return;
        }
        let flush = || {
            let _ = self.producer.flush(Timeout::After(Duration::from_secs(10)));
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(flush)
            }
            _ => flush(),
        }
    }
}

struct KafkaSubscription {
    consumer: StreamConsumer<LagContext>,
    group: String,
    lag: LagTable,
}

impl KafkaSubscription {
    fn error(&self, operation: &str, e: KafkaError) -> BusError {
        BusError::Consume {
            group: self.group.clone(),
            detail: format!("{operation}: {e}"),
        }
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        let message = self.consumer.recv().await.map_err(|e| BusError::Consume {
            group: self.group.clone(),
            detail: e.to_string(),
        })?;
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Delivery {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec).unwrap_or_default(),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
        })
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<(), BusError> {
        match self
            .consumer
            // librdkafka stores offset + 1 itself: the next record to read.
            .store_offset(&delivery.topic, delivery.partition, delivery.offset)
        {
            Ok(()) => Ok(()),
            // The partition moved to another member in a rebalance: that member
            // sees the record again (at-least-once), nothing to do here.
            Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {
                tracing::debug!(%delivery, "ack after losing the partition; it will be redelivered");
                Ok(())
            }
            Err(e) => Err(BusError::Consume {
                group: self.group.clone(),
                detail: format!("storing offset of {delivery}: {e}"),
            }),
        }
    }

    fn lag(&self) -> Vec<PartitionLag> {
        self.lag
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((topic, partition), records)| PartitionLag {
                topic: topic.clone(),
                partition: *partition,
                records: *records,
            })
            .collect()
    }

    fn pause(&mut self) -> Result<(), BusError> {
        let assignment = self
            .consumer
            .assignment()
            .map_err(|e| self.error("assignment", e))?;
        if assignment.count() > 0 {
            self.consumer
                .pause(&assignment)
                .map_err(|e| self.error("pause", e))?;
        }
        Ok(())
    }

    fn resume(&mut self) -> Result<(), BusError> {
        let assignment = self
            .consumer
            .assignment()
            .map_err(|e| self.error("assignment", e))?;
        if assignment.count() > 0 {
            self.consumer
                .resume(&assignment)
                .map_err(|e| self.error("resume", e))?;
        }
        Ok(())
    }

    async fn close(self: Box<Self>) -> Result<(), BusError> {
        let consumer = self.consumer;
        let group = self.group;
        tokio::task::spawn_blocking(move || {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
                Err(e) => Err(BusError::Consume {
                    group,
                    detail: format!("final commit: {e}"),
                }),
            }
            // Dropping the consumer leaves the group.
        })
        .await
        .map_err(|_| BusError::Closed)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_properties_override_producer_defaults() {
        let mut settings = KafkaSettings::default();
        assert_eq!(
            producer_config("b:9092", &settings).get("enable.idempotence"),
            Some("true")
        );
        settings
            .properties
            .insert("enable.idempotence".into(), "false".into());
        settings.properties.insert("linger.ms".into(), "50".into());
        let config = producer_config("b:9092", &settings);
        assert_eq!(config.get("enable.idempotence"), Some("false"));
        assert_eq!(config.get("linger.ms"), Some("50"));
        assert_eq!(config.get("acks"), Some("all"));
    }

    #[test]
    fn tls_and_scram_are_built_in() {
        // librdkafka built without OpenSSL refuses these settings when the
        // client is made ("OpenSSL not available at build time").
        let mut settings = KafkaSettings::default();
        for (key, value) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "chexvision"),
            ("sasl.password", "secret"),
        ] {
            settings.properties.insert(key.into(), value.into());
        }
        KafkaBus::connect("127.0.0.1:1", &settings).expect("a SASL_SSL client");
    }
}
