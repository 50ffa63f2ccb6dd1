//! CheXVision trainer, the recipe part: what one optimisation step does and
//! how the run is scheduled, independent of where batches come from.
//!
//! * [`RecipeConfig`]: the training recipe's settings with the defaults of
//!   the architecture (label smoothing 0.1, binary head weight 0.5, AdamW
//!   with weight decay 1e-4, warm-up then cosine, accumulation 4, clipping
//!   1.0, early stopping patience 15).
//! * [`LrSchedule`]: linear warm-up, then cosine to a floor.
//! * [`smooth_targets`], [`pos_weight_from_counts`]: the targets and class
//!   weights of the loss.
//! * [`AdamW`]: PyTorch's AdamW (decoupled weight decay, bias correction)
//!   whose state can be saved and restored, for resuming a killed run.
//! * [`GradAccumulator`]: sums micro-batch gradients, averages them and
//!   clips their global norm before a step.
//! * [`EarlyStopping`]: best validation macro AUC and patience.
//! * [`Trainer`]: one step over a micro-batch and validation AUC for a
//!   [`chexvision_models::ChestModel`].
//!
//! * [`ShardLoader`]: ready shards streamed from the store into batches,
//!   bounded prefetch, seeded shuffling across and within shards, decoding
//!   and augmentation on worker threads, the step's wait for data measured.
//!
//! * [`plan`]: what a run reads, from the dataset's ready manifest alone.
//! * [`run_training`]: a whole run in the store (`runs/{run_id}/`, see
//!   [`state`]), resumable at any moment; `chexvision train` and the
//!   service both call it.
//! * [`limits`]: what a request may ask for, checked before a run is
//!   accepted and before a stored run resumes.
//! * [`service`]: the trainer service: training requests from the bus
//!   become durable runs, trained one at a time by the replica holding
//!   their lease, announced as `CheckpointCreated`; [`TrainerMetrics`] for
//!   Prometheus.
//! * [`TrainingAllocator`] and [`park_idle_candle_workers`]: what every
//!   training program sets up first in `main` (the allocator, candle's
//!   thread pool beside rayon's).

mod alloc;
mod card;
pub mod limits;
mod loader;
mod metrics;
mod optim;
pub mod plan;
mod recipe;
mod run;
pub mod service;
mod settings;
pub mod state;
mod threads;
mod train;

pub use alloc::TrainingAllocator;
pub use card::model_card;
pub use limits::RunLimits;
pub use loader::{ready_image, EpochBatches, LoaderConfig, LoaderError, ShardLoader};
pub use metrics::TrainerMetrics;
pub use optim::{AdamW, GradAccumulator};
pub use recipe::{
    pos_weight_from_counts, smooth_targets, EarlyStopping, LrSchedule, Precision, RecipeConfig,
};
pub use run::{
    run_training, store_error, validate, RunError, RunHooks, RunProgress, WrittenCheckpoint,
};
pub use settings::{
    is_valid_config_name, parse_device, DeviceChoice, TrainSettings, TrainerServiceSettings,
};
pub use state::{
    create_run, lease_key, mark_failed, read_run_state, run_prefix, state_key, write_run_state,
    EpochRecord, RunRequest, RunState, RunStatus,
};
pub use threads::{park_idle_candle_workers, CANDLE_SPIN_LIMIT_VAR};
pub use train::{Batch, MicroStep, Trainer, Validation, ValidationPass};

/// What can go wrong in the recipe.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] chexvision_models::ModelError),
    #[error(transparent)]
    Candle(#[from] chexvision_models::candle_core::Error),
    #[error("invalid recipe: {0}")]
    Config(String),
    #[error("optimiser state does not fit the model: {0}")]
    OptimiserState(String),
    #[error("loss is not finite ({0}) at step {1}")]
    NonFiniteLoss(f32, u64),
}

pub type Result<T> = std::result::Result<T, TrainError>;
