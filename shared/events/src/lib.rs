//! CheXVision event contracts.
//!
//! The types are generated at build time from `proto/chexvision/v1/events.proto`.
//! Every record on every topic is an [`Envelope`]: shared metadata plus one
//! event body. Protobuf is the wire format; JSON (the canonical proto3 mapping)
//! is for people and shells (`chexvision events send|decode`).

use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

/// Generated protobuf types and their JSON (serde) mapping.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/chexvision.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/chexvision.v1.serde.rs"));
}

pub use v1::envelope::Body;
pub use v1::*;

/// The contract version this build writes and the newest it accepts.
pub const SCHEMA_VERSION: u32 = 1;

/// Encoded `FileDescriptorSet` of the contracts, for tools that need reflection.
pub static FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// Why bytes or JSON could not become a valid event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("not a CheXVision event: protobuf decoding failed: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("invalid event JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("event has no metadata (`meta`)")]
    MissingMeta,
    #[error("event {event_id} has no body (expected one of: {})", EventKind::names().join(", "))]
    MissingBody { event_id: String },
    #[error("event metadata field `{field}` is empty")]
    EmptyField { field: &'static str },
    #[error(
        "event {event_id} has schema version {found}; this build understands up to {supported}"
    )]
    UnsupportedVersion {
        event_id: String,
        found: u32,
        supported: u32,
    },
}

/// The kinds of event body, in the order of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    IngestRequested,
    ShardWritten,
    DatasetReady,
    TrainingRequested,
    CheckpointCreated,
    EvaluationCompleted,
    ModelPromoted,
    DeadLetter,
    DatasetIngested,
    PredictionMade,
    FeedbackReceived,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::IngestRequested,
        EventKind::ShardWritten,
        EventKind::DatasetReady,
        EventKind::TrainingRequested,
        EventKind::CheckpointCreated,
        EventKind::EvaluationCompleted,
        EventKind::ModelPromoted,
        EventKind::DeadLetter,
        EventKind::DatasetIngested,
        EventKind::PredictionMade,
        EventKind::FeedbackReceived,
    ];

    /// The body's field name in JSON (canonical proto3 mapping).
    pub fn json_name(self) -> &'static str {
        match self {
            EventKind::IngestRequested => "ingestRequested",
            EventKind::ShardWritten => "shardWritten",
            EventKind::DatasetReady => "datasetReady",
            EventKind::TrainingRequested => "trainingRequested",
            EventKind::CheckpointCreated => "checkpointCreated",
            EventKind::EvaluationCompleted => "evaluationCompleted",
            EventKind::ModelPromoted => "modelPromoted",
            EventKind::DeadLetter => "deadLetter",
            EventKind::DatasetIngested => "datasetIngested",
            EventKind::PredictionMade => "predictionMade",
            EventKind::FeedbackReceived => "feedbackReceived",
        }
    }

    fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|k| k.json_name()).collect()
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.json_name())
    }
}

impl Body {
    pub fn kind(&self) -> EventKind {
        match self {
            Body::IngestRequested(_) => EventKind::IngestRequested,
            Body::ShardWritten(_) => EventKind::ShardWritten,
            Body::DatasetReady(_) => EventKind::DatasetReady,
            Body::TrainingRequested(_) => EventKind::TrainingRequested,
            Body::CheckpointCreated(_) => EventKind::CheckpointCreated,
            Body::EvaluationCompleted(_) => EventKind::EvaluationCompleted,
            Body::ModelPromoted(_) => EventKind::ModelPromoted,
            Body::DeadLetter(_) => EventKind::DeadLetter,
            Body::DatasetIngested(_) => EventKind::DatasetIngested,
            Body::PredictionMade(_) => EventKind::PredictionMade,
            Body::FeedbackReceived(_) => EventKind::FeedbackReceived,
        }
    }
}

macro_rules! body_from {
    ($($ty:ident),* $(,)?) => {
        $(impl From<$ty> for Body {
            fn from(event: $ty) -> Self {
                Body::$ty(event)
            }
        })*
    };
}
body_from!(
    IngestRequested,
    ShardWritten,
    DatasetReady,
    TrainingRequested,
    CheckpointCreated,
    EvaluationCompleted,
    ModelPromoted,
    DeadLetter,
    DatasetIngested,
    PredictionMade,
    FeedbackReceived,
);

/// Current time as a protobuf timestamp.
pub fn now() -> pbjson_types::Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    pbjson_types::Timestamp {
        seconds: since_epoch.as_secs() as i64,
        nanos: since_epoch.subsec_nanos() as i32,
    }
}

fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Envelope {
    /// A new event that starts a correlation chain (its correlation id is its own id).
    pub fn new(body: impl Into<Body>, producer: &str) -> Self {
        let event_id = new_event_id();
        Envelope {
            meta: Some(EventMeta {
                correlation_id: event_id.clone(),
                event_id,
                occurred_at: Some(now()),
                schema_version: SCHEMA_VERSION,
                causation_id: String::new(),
                producer: producer.to_owned(),
            }),
            body: Some(body.into()),
        }
    }

    /// A new event caused by `cause`: it keeps the correlation id.
    pub fn caused_by(cause: &Envelope, body: impl Into<Body>, producer: &str) -> Self {
        let (correlation_id, causation_id) = cause.meta.as_ref().map_or(("", ""), |m| {
            (m.correlation_id.as_str(), m.event_id.as_str())
        });
        Envelope::continuing(correlation_id, causation_id, body, producer)
    }

    /// A new event that follows `cause` when there is one (see
    /// [`Envelope::caused_by`]), else starts its own correlation chain.
    pub fn follow(cause: Option<&Envelope>, body: impl Into<Body>, producer: &str) -> Self {
        match cause {
            Some(cause) => Envelope::caused_by(cause, body, producer),
            None => Envelope::new(body, producer),
        }
    }

    /// A new event in the chain of an event known only by its ids (a
    /// request recorded earlier): empty ids start a new chain.
    pub fn continuing(
        correlation_id: &str,
        causation_id: &str,
        body: impl Into<Body>,
        producer: &str,
    ) -> Self {
        let mut event = Envelope::new(body, producer);
        if let Some(meta) = event.meta.as_mut() {
            if !correlation_id.is_empty() {
                meta.correlation_id = correlation_id.to_owned();
            }
            meta.causation_id = causation_id.to_owned();
        }
        event
    }

    /// Decodes a record value and checks it is a complete event this build understands.
    pub fn decode_checked(bytes: &[u8]) -> Result<Self, EventError> {
        let envelope = Envelope::decode(bytes)?;
        envelope.validate()?;
        Ok(envelope)
    }

    /// Checks metadata and body are present and the version is supported.
    pub fn validate(&self) -> Result<(), EventError> {
        let meta = self.meta.as_ref().ok_or(EventError::MissingMeta)?;
        if meta.event_id.is_empty() {
            return Err(EventError::EmptyField { field: "event_id" });
        }
        if meta.correlation_id.is_empty() {
            return Err(EventError::EmptyField {
                field: "correlation_id",
            });
        }
        if meta.occurred_at.is_none() {
            return Err(EventError::EmptyField {
                field: "occurred_at",
            });
        }
        if meta.schema_version == 0 || meta.schema_version > SCHEMA_VERSION {
            return Err(EventError::UnsupportedVersion {
                event_id: meta.event_id.clone(),
                found: meta.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        if self.body.is_none() {
            return Err(EventError::MissingBody {
                event_id: meta.event_id.clone(),
            });
        }
        Ok(())
    }

    /// Parses the JSON form a person writes. Metadata may be left out, in part or
    /// whole: missing id, time, version and correlation id are filled in.
    pub fn from_json(json: &str, producer: &str) -> Result<Self, EventError> {
        let mut envelope: Envelope = serde_json::from_str(json)?;
        let meta = envelope.meta.get_or_insert_with(EventMeta::default);
        if meta.event_id.is_empty() {
            meta.event_id = new_event_id();
        }
        if meta.correlation_id.is_empty() {
            meta.correlation_id = meta.event_id.clone();
        }
        if meta.occurred_at.is_none() {
            meta.occurred_at = Some(now());
        }
        if meta.schema_version == 0 {
            meta.schema_version = SCHEMA_VERSION;
        }
        if meta.producer.is_empty() {
            meta.producer = producer.to_owned();
        }
        envelope.validate()?;
        Ok(envelope)
    }

    /// Canonical proto3 JSON of the whole envelope.
    pub fn to_json(&self) -> String {
        // Serialising generated types to a string cannot fail: no maps with
        // non-string keys, no non-finite floats are rejected by serde_json here.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    pub fn kind(&self) -> Option<EventKind> {
        self.body.as_ref().map(Body::kind)
    }

    pub fn event_id(&self) -> &str {
        self.meta.as_ref().map_or("", |m| m.event_id.as_str())
    }

    pub fn correlation_id(&self) -> &str {
        self.meta.as_ref().map_or("", |m| m.correlation_id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn training_request() -> TrainingRequested {
        TrainingRequested {
            request_id: "req-1".into(),
            dataset_id: "latest".into(),
            model_kind: ModelKind::Densenet121 as i32,
            config: "tiny".into(),
            overrides: [("trainer.epochs".to_string(), "3".to_string())].into(),
            reason: "new data".into(),
            requested_by: "data-team".into(),
        }
    }

    #[test]
    fn protobuf_round_trip_keeps_every_field() {
        let event = Envelope::new(training_request(), "test");
        let decoded = Envelope::decode_checked(&event.to_bytes()).unwrap();
        assert_eq!(decoded, event);
        assert_eq!(decoded.kind(), Some(EventKind::TrainingRequested));
        assert_eq!(decoded.correlation_id(), decoded.event_id());
    }

    #[test]
    fn caused_event_keeps_the_correlation_id() {
        let first = Envelope::new(training_request(), "cli");
        let next = Envelope::caused_by(
            &first,
            CheckpointCreated {
                run_id: "run-1".into(),
                ..Default::default()
            },
            "trainer",
        );
        assert_eq!(next.correlation_id(), first.correlation_id());
        assert_ne!(next.event_id(), first.event_id());
        assert_eq!(next.meta.as_ref().unwrap().causation_id, first.event_id());
    }

    #[test]
    fn json_written_by_a_person_fills_in_metadata() {
        let json = r#"{"trainingRequested": {"requestId": "r-7", "datasetId": "nih",
            "modelKind": "MODEL_KIND_SE_RESNET", "overrides": {"trainer.lr": "0.001"}}}"#;
        let event = Envelope::from_json(json, "chexvision-cli").unwrap();
        let meta = event.meta.as_ref().unwrap();
        assert_eq!(meta.schema_version, SCHEMA_VERSION);
        assert_eq!(meta.producer, "chexvision-cli");
        assert_eq!(meta.correlation_id, meta.event_id);
        let Some(Body::TrainingRequested(req)) = &event.body else {
            panic!("wrong body: {:?}", event.body);
        };
        assert_eq!(req.model_kind(), ModelKind::SeResnet);
        assert_eq!(req.overrides["trainer.lr"], "0.001");

        // JSON -> protobuf -> JSON is stable.
        let again = Envelope::from_json(&event.to_json(), "other").unwrap();
        assert_eq!(again, event);
    }

    #[test]
    fn json_with_snake_case_field_names_is_accepted() {
        let json = r#"{"training_requested": {"request_id": "r-8", "dataset_id": "nih"}}"#;
        let event = Envelope::from_json(json, "cli").unwrap();
        let Some(Body::TrainingRequested(req)) = event.body else {
            panic!("wrong body")
        };
        assert_eq!(req.request_id, "r-8");
    }

    #[test]
    fn bad_inputs_name_the_problem() {
        let err = Envelope::from_json(r#"{"meta": {}}"#, "cli").unwrap_err();
        assert!(err.to_string().contains("has no body"), "{err}");
        assert!(err.to_string().contains("trainingRequested"), "{err}");

        let err = Envelope::from_json(
            r#"{"trainingRequested": {"modelKind": "RESNET9000"}}"#,
            "cli",
        )
        .unwrap_err();
        assert!(err.to_string().contains("RESNET9000"), "{err}");

        let err = Envelope::decode_checked(b"\xff\xff\xff garbage").unwrap_err();
        assert!(matches!(err, EventError::Decode(_)), "{err}");

        let mut future = Envelope::new(training_request(), "test");
        future.meta.as_mut().unwrap().schema_version = SCHEMA_VERSION + 1;
        let err = Envelope::decode_checked(&future.to_bytes()).unwrap_err();
        assert!(
            matches!(err, EventError::UnsupportedVersion { .. }),
            "{err}"
        );

        let err = Envelope::decode_checked(&[]).unwrap_err();
        assert!(matches!(err, EventError::MissingMeta), "{err}");
    }

    #[test]
    fn descriptor_set_describes_every_event() {
        let set = pbjson_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let file = set
            .file
            .iter()
            .find(|f| f.name() == "chexvision/v1/events.proto")
            .expect("events.proto in descriptor set");
        let names: Vec<&str> = file.message_type.iter().map(|m| m.name()).collect();
        for kind in EventKind::ALL {
            let type_name = format!("{kind:?}");
            assert!(names.contains(&type_name.as_str()), "{type_name} missing");
        }
    }
}
