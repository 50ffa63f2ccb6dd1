//! Settings every service shares: where the store and the bus are, how to talk
//! to S3 and Kafka, topic names, logging and the operations HTTP endpoint.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::Validate;

/// Default store: a folder in the working directory (the embedded mode).
pub const DEFAULT_STORE: &str = "file://./chexvision-data";
/// Default bus: in-process (the embedded mode).
pub const DEFAULT_BUS: &str = "memory://";

/// A service's whole configuration: the shared settings plus its own `service` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config<S> {
    /// `file:///path` (or `file://relative/path`) or `s3://bucket/prefix`.
    pub store: String,
    /// `memory://` or `kafka://host:port[,host:port...]`.
    pub bus: String,
    pub s3: S3Settings,
    pub kafka: KafkaSettings,
    pub topics: Topics,
    pub log: LogSettings,
    pub http: HttpSettings,
    /// Settings of one service.
    pub service: S,
}

impl<S: Default> Default for Config<S> {
    fn default() -> Self {
        Config {
            store: DEFAULT_STORE.to_owned(),
            bus: DEFAULT_BUS.to_owned(),
            s3: S3Settings::default(),
            kafka: KafkaSettings::default(),
            topics: Topics::default(),
            log: LogSettings::default(),
            http: HttpSettings::default(),
            service: S::default(),
        }
    }
}

/// For tools with no settings of their own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoServiceSettings {}

impl Validate for NoServiceSettings {
    fn validate(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Shared settings only.
pub type PlatformConfig = Config<NoServiceSettings>;

impl<S: Validate> Validate for Config<S> {
    fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !(self.store.starts_with("file://") || self.store.starts_with("s3://")) {
            problems.push((
                "store".into(),
                format!(
                    "`{}` is not a store URI: use file:///path or s3://bucket/prefix",
                    self.store
                ),
            ));
        }
        if !(self.bus == "memory://" || self.bus.starts_with("kafka://")) {
            problems.push((
                "bus".into(),
                format!(
                    "`{}` is not a bus URI: use memory:// or kafka://host:port",
                    self.bus
                ),
            ));
        } else if let Some(hosts) = self.bus.strip_prefix("kafka://") {
            if hosts.is_empty() || hosts.split(',').any(|h| !h.contains(':')) {
                problems.push((
                    "bus".into(),
                    format!("`{}` needs host:port after kafka://", self.bus),
                ));
            }
        }
        problems.extend(self.s3.validate());
        problems.extend(self.kafka.validate());
        problems.extend(self.topics.validate());
        problems.extend(self.log.validate());
        problems.extend(self.http.validate());
        problems.extend(
            self.service
                .validate()
                .into_iter()
                .map(|(k, m)| (format!("service.{k}"), m)),
        );
        problems
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    /// Custom endpoint (Garage, MinIO, ...); none means AWS.
    pub endpoint: Option<String>,
    pub region: String,
    /// Path-style addressing; defaults to true when a custom endpoint is set.
    pub path_style: Option<bool>,
    /// Static credentials; when absent, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    /// (and AWS_SESSION_TOKEN) are read from the environment.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Attempts per request, including the first (bounded retries with backoff).
    pub max_attempts: u32,
    pub connect_timeout_ms: u64,
    /// Limit for one attempt of one request.
    pub attempt_timeout_ms: u64,
    /// Part size of multipart uploads; S3 requires at least 5 MiB.
    pub multipart_part_bytes: usize,
    /// Parts uploaded at once.
    pub multipart_concurrency: usize,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            endpoint: None,
            region: "us-east-1".into(),
            path_style: None,
            access_key_id: None,
            secret_access_key: None,
            max_attempts: 3,
            connect_timeout_ms: 3_000,
            attempt_timeout_ms: 120_000,
            multipart_part_bytes: 8 * 1024 * 1024,
            multipart_concurrency: 4,
        }
    }
}

pub const S3_MIN_PART_BYTES: usize = 5 * 1024 * 1024;

impl Validate for S3Settings {
    fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if let Some(endpoint) = &self.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                problems.push((
                    "s3.endpoint".into(),
                    format!("`{endpoint}` must start with http:// or https://"),
                ));
            }
        }
        if self.max_attempts == 0 {
            problems.push(("s3.max_attempts".into(), "must be at least 1".into()));
        }
        if self.multipart_part_bytes < S3_MIN_PART_BYTES {
            problems.push((
                "s3.multipart_part_bytes".into(),
                format!(
                    "{} is below the S3 minimum part size of {S3_MIN_PART_BYTES} bytes",
                    self.multipart_part_bytes
                ),
            ));
        }
        if self.multipart_concurrency == 0 {
            problems.push((
                "s3.multipart_concurrency".into(),
                "must be at least 1".into(),
            ));
        }
        problems
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    pub client_id: String,
    /// Partitions of topics the services create at start.
    pub partitions: i32,
    pub replication_factor: i32,
    /// Producer compression: none, gzip, lz4 or zstd.
    pub compression: String,
    /// Attempts of a handler on one record before it goes to the dead-letter topic.
    pub handler_max_attempts: u32,
    pub retry_backoff_initial_ms: u64,
    pub retry_backoff_max_ms: u64,
    pub session_timeout_ms: u64,
    /// Longest gap between two polls before the client leaves its group. The
    /// consume loop keeps polling while a handler runs, so this bounds a
    /// stalled process, not a long handler.
    pub max_poll_interval_ms: u64,
    /// A dead letter carries at most this many bytes of the original value
    /// (with its sha256 and size), so it stays under the broker's record limit.
    pub dead_letter_max_payload_bytes: usize,
    /// How long the producer keeps retrying one record (covers broker restarts).
    pub message_timeout_ms: u64,
    /// Attempts to publish one record when the broker answers with an error
    /// the client does not retry by itself.
    pub publish_max_attempts: u32,
    /// Extra librdkafka properties, passed through unchanged. They override
    /// the bus's own choices (e.g. `enable.idempotence`, `linger.ms`), except
    /// the consumer's offset handling (`group.id`, `enable.auto.offset.store`,
    /// `enable.auto.commit`), which acknowledgement depends on.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            client_id: "chexvision".into(),
            partitions: 4,
            replication_factor: 1,
            compression: "zstd".into(),
            handler_max_attempts: 5,
            retry_backoff_initial_ms: 200,
            retry_backoff_max_ms: 10_000,
            session_timeout_ms: 10_000,
            max_poll_interval_ms: 300_000,
            dead_letter_max_payload_bytes: 256 * 1024,
            message_timeout_ms: 300_000,
            publish_max_attempts: 8,
            properties: BTreeMap::new(),
        }
    }
}

impl Validate for KafkaSettings {
    fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.partitions < 1 {
            problems.push(("kafka.partitions".into(), "must be at least 1".into()));
        }
        if self.replication_factor < 1 {
            problems.push((
                "kafka.replication_factor".into(),
                "must be at least 1".into(),
            ));
        }
        if !["none", "gzip", "lz4", "zstd"].contains(&self.compression.as_str()) {
            problems.push((
                "kafka.compression".into(),
                format!(
                    "`{}` is not one of none, gzip, lz4, zstd (snappy is not readable back from some brokers)",
                    self.compression
                ),
            ));
        }
        if self.handler_max_attempts == 0 {
            problems.push((
                "kafka.handler_max_attempts".into(),
                "must be at least 1".into(),
            ));
        }
        if self.publish_max_attempts == 0 {
            problems.push((
                "kafka.publish_max_attempts".into(),
                "must be at least 1".into(),
            ));
        }
        if self.retry_backoff_initial_ms > self.retry_backoff_max_ms {
            problems.push((
                "kafka.retry_backoff_initial_ms".into(),
                "must not exceed kafka.retry_backoff_max_ms".into(),
            ));
        }
        if self.max_poll_interval_ms < self.session_timeout_ms {
            problems.push((
                "kafka.max_poll_interval_ms".into(),
                "must be at least kafka.session_timeout_ms (librdkafka refuses less)".into(),
            ));
        }
        if !(1024..=512 * 1024).contains(&self.dead_letter_max_payload_bytes) {
            problems.push((
                "kafka.dead_letter_max_payload_bytes".into(),
                "must be 1024..=524288: a dead letter must fit the broker's 1 MB record limit"
                    .into(),
            ));
        }
        problems
    }
}

/// Topic names (config, with the product's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Topics {
    pub ingest_requests: String,
    pub shards_raw: String,
    pub shards_ready: String,
    pub datasets: String,
    pub training_requests: String,
    pub checkpoints: String,
    pub evaluations: String,
    pub models_promoted: String,
    /// Every answer of the inference service (no pixels, no identifiers).
    pub predictions: String,
    /// Findings radiologists confirmed for earlier predictions.
    pub feedback: String,
    pub dead_letter: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            ingest_requests: "chexvision.ingest.requests".into(),
            shards_raw: "chexvision.shards.raw".into(),
            shards_ready: "chexvision.shards.ready".into(),
            datasets: "chexvision.datasets".into(),
            training_requests: "chexvision.training.requests".into(),
            checkpoints: "chexvision.checkpoints".into(),
            evaluations: "chexvision.evaluations".into(),
            models_promoted: "chexvision.models.promoted".into(),
            predictions: "chexvision.predictions".into(),
            feedback: "chexvision.feedback".into(),
            dead_letter: "chexvision.dlq".into(),
        }
    }
}

impl Topics {
    /// (config key, topic name) for every topic.
    pub fn all(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("ingest_requests", &self.ingest_requests),
            ("shards_raw", &self.shards_raw),
            ("shards_ready", &self.shards_ready),
            ("datasets", &self.datasets),
            ("training_requests", &self.training_requests),
            ("checkpoints", &self.checkpoints),
            ("evaluations", &self.evaluations),
            ("models_promoted", &self.models_promoted),
            ("predictions", &self.predictions),
            ("feedback", &self.feedback),
            ("dead_letter", &self.dead_letter),
        ]
    }
}

/// Kafka's rule for topic names.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Validate for Topics {
    fn validate(&self) -> Vec<(String, String)> {
        self.all()
            .into_iter()
            .filter(|(_, name)| !is_valid_topic_name(name))
            .map(|(key, name)| {
                (
                    format!("topics.{key}"),
                    format!("`{name}` is not a valid topic name (letters, digits, '.', '_', '-')"),
                )
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable, for terminals.
    Pretty,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,chexvision_bus=debug`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

impl Validate for LogSettings {
    fn validate(&self) -> Vec<(String, String)> {
        if self.level.trim().is_empty() {
            vec![("log.level".into(), "must not be empty".into())]
        } else {
            Vec::new()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address of /healthz, /readyz and /metrics (and of the API, for the inference service).
    pub bind: String,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            bind: "0.0.0.0:9090".into(),
        }
    }
}

impl Validate for HttpSettings {
    fn validate(&self) -> Vec<(String, String)> {
        match self.bind.parse::<SocketAddr>() {
            Ok(_) => Vec::new(),
            Err(_) => vec![(
                "http.bind".into(),
                format!("`{}` is not an address like 0.0.0.0:9090", self.bind),
            )],
        }
    }
}
