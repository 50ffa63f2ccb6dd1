use thiserror::Error;

/// What can go wrong building, running, saving or loading a model.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    #[error("checkpoint is not readable: {0}")]
    CheckpointFormat(String),
    #[error("checkpoint does not match the model: {0}")]
    CheckpointMismatch(String),
    #[error("weights do not fit the model: {0}")]
    Weights(String),
    #[error("input has shape {got:?}, expected {expected}")]
    InputShape { got: Vec<usize>, expected: String },
    #[error("output index {index} out of range (the model has {outputs} outputs)")]
    OutputIndex { index: usize, outputs: usize },
    #[error("{0}")]
    Mode(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;
