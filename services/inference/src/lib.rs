//! CheXVision inference: the service hospital systems call.
//!
//! Shaped like Hugging Face's text-embeddings-inference:
//!
//! * [`core`]: no HTTP. Admission (a bounded number of images in flight),
//!   decoding and preprocessing on their own pool, the micro-batching
//!   queue and its compute thread, the loaded models and their lifecycle
//!   (load, verify, warm up, swap).
//! * [`router`]: actix-web routes over the core: `/v1` JSON predictions
//!   (and FHIR R4), the Open Inference Protocol (`/v2`), OpenAPI, the web
//!   page, auth and limits.
//! * [`events`]: every answer to `chexvision.predictions`, confirmed
//!   findings to `chexvision.feedback` (the production AUC's inputs).
//! * [`service`]: the `chexvision-inference` process: the API server, the
//!   `ModelPromoted` consumer and the registry poll.

pub mod core;
pub mod events;
mod metrics;
pub mod router;
pub mod service;
pub mod settings;

pub use metrics::InferenceMetrics;
pub use settings::InferenceSettings;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("model: {0}")]
    Model(String),
    #[error("registry: {0}")]
    Registry(String),
    #[error("{0}")]
    NoModel(String),
}

impl InferenceError {
    /// A short label for the failed-swap metric.
    pub fn reason(&self) -> &'static str {
        match self {
            InferenceError::Checkpoint(_) => "checkpoint",
            InferenceError::Model(_) => "model",
            InferenceError::Registry(_) => "registry",
            InferenceError::NoModel(_) => "no_model",
        }
    }
}
