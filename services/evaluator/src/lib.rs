//! CheXVision evaluator: an independent evaluation of a checkpoint on the
//! test split with honest uncertainty, and the decision whether it should
//! serve patients.
//!
//! * [`score`]: ready shards streamed and scored by one model or an
//!   ensemble (the fused CPU path on a CPU, candle on a GPU), optionally
//!   over the four test-time views.
//! * [`report`]: `report.json` (versioned schema) from the scores: per
//!   finding and macro AUC with patient-bootstrap intervals, average
//!   precision, thresholds chosen on validation and the metrics at them and
//!   at 0.5, the binary head, calibration.
//! * [`predictions`]: `predictions.parquet` (ids, labels, probabilities).
//! * [`plots`]: ROC and PR grids, reliability diagram, confusion matrix,
//!   training history, AUC intervals beside CheXNet's published AUCs.
//! * [`summary`]: `report.md` and the model card's section.
//! * [`evaluate()`]: one evaluation end to end; `chexvision evaluate` and
//!   the service both call it.
//! * [`promote`]: the registry record and the promotion decision.
//! * [`monitor`]: production AUC per model version and window from the
//!   predictions the inference service made and the findings
//!   radiologists confirmed.
//! * [`service`]: the `chexvision-evaluator` service; [`EvaluatorMetrics`].

pub mod evaluate;
mod metrics;
pub mod monitor;
pub mod plots;
pub mod predictions;
pub mod promote;
pub mod report;
pub mod score;
pub mod service;
pub mod settings;
pub mod summary;

pub use evaluate::{
    evaluate, evaluation_prefix, CheckpointChoice, EvalHooks, EvalProgress, EvaluationOutcome,
    EvaluationRequest, ModelChoice,
};
pub use metrics::EvaluatorMetrics;
pub use report::Report;
pub use settings::{
    CheckpointSelection, EvaluationSettings, EvaluatorServiceSettings, MonitorSettings,
};

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("unknown run `{0}`")]
    UnknownRun(String),
    #[error("missing checkpoint: {0}")]
    MissingCheckpoint(String),
    #[error("corrupt checkpoint: {0}")]
    Corrupt(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("{0}")]
    NotPrepared(String),
    #[error("model: {0}")]
    Model(String),
    #[error("store: {0}")]
    Store(String),
    #[error("data: {0}")]
    Data(String),
    #[error("registry: {0}")]
    Registry(String),
    /// Another writer holds the registry's claim: one that died holds it
    /// until the claim expires (a minute), longer than a job's retries.
    #[error("registry: {0}")]
    RegistryBusy(String),
    #[error("plot: {0}")]
    Plot(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("interrupted (shutdown or a lost lease); the evaluation resumes on the next start")]
    Interrupted,
}

impl EvalError {
    /// Failures that may pass on a retry (the store, the registry's writer claim).
    pub fn may_pass(&self) -> bool {
        matches!(
            self,
            EvalError::Store(_) | EvalError::Registry(_) | EvalError::RegistryBusy(_)
        )
    }
}

impl From<chexvision_registry::RegistryError> for EvalError {
    fn from(e: chexvision_registry::RegistryError) -> Self {
        match e {
            chexvision_registry::RegistryError::Busy { .. } => {
                EvalError::RegistryBusy(e.to_string())
            }
            e => EvalError::Registry(e.to_string()),
        }
    }
}
