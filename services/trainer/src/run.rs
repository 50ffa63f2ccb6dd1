//! A training run, resumable at any moment: the epoch loop over the plan
//! (see [`crate::plan`]), writing what [`crate::state`] describes.
//!
//! Each epoch writes its checkpoint, optimiser state, history and model
//! card, then `state.json`. A run killed at any moment restarts from the
//! last `state.json`: the model, optimiser moments and step counts,
//! schedule position, early-stopping state and history are restored and the
//! next epoch starts; an epoch cut short is done again from its start, so
//! each epoch appears once in the history. Shuffling and augmentation are
//! seeded by (seed, epoch), so the resumed run sees the data the
//! uninterrupted one would have.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chexvision_dataset::LABELS;
use chexvision_models::candle_core::{Device, Tensor};
use chexvision_models::{
    checkpoint_bytes, load_torchvision_backbone, Checkpoint, CheckpointMeta, ChestModel,
    Normalization,
};
use chexvision_store::ObjectStore;

use crate::card::model_card;
use crate::plan::plan_run;
use crate::settings::TrainSettings;
use crate::state::{run_key as key, state_key, to_json, EpochRecord, RunState, RunStatus};
use crate::{LoaderConfig, LoaderError, ShardLoader, TrainError, Trainer};

/// A checkpoint the run wrote, for the caller to announce.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenCheckpoint {
    pub key: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub epoch: u32,
    pub best: bool,
    pub last: bool,
    pub val_macro_auc: Option<f64>,
    pub val_binary_auc: Option<f64>,
}

/// What a run is doing, for a progress bar or metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunProgress {
    EpochStarted {
        epoch: u32,
        epochs: u32,
        images: u64,
    },
    Batch {
        images: usize,
        loss: f32,
        lr: f64,
        /// Optimiser steps so far.
        step: u64,
    },
    EpochFinished {
        epoch: u32,
        val_macro_auc: Option<f64>,
        val_binary_auc: Option<f64>,
        images_per_second: f64,
    },
}

/// How a run reports and is stopped.
pub struct RunHooks<'a> {
    /// Epoch and batch progress (a progress bar, metrics).
    pub progress: &'a mut dyn FnMut(RunProgress),
    /// Each checkpoint once durable (to announce `CheckpointCreated`);
    /// returns whether it was announced. Checkpoints not announced are
    /// offered again after the next epoch and when the run resumes.
    pub written: &'a mut dyn FnMut(WrittenCheckpoint) -> bool,
    /// Polled before each batch; true stops the run (SIGTERM).
    pub interrupted: &'a dyn Fn() -> bool,
    /// Observes each wait of the training step for data.
    pub loader_wait: Option<prometheus::Histogram>,
}

/// Runs (or resumes) `run_id` on `dataset_id`'s ready shards. Synchronous
/// (training is CPU/GPU work); store calls go through `runtime`, which must
/// be a multi-thread runtime not driven by this thread. `interrupted` is
/// polled before each batch (SIGTERM): the run stops, keeping what the last
/// finished epoch recorded.
pub fn run_training(
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Handle,
    run_id: &str,
    dataset_id: &str,
    settings: &TrainSettings,
    device: &Device,
    hooks: RunHooks<'_>,
) -> Result<RunState, RunError> {
    let RunHooks {
        progress,
        written,
        interrupted,
        loader_wait,
    } = hooks;
    let get = |k: &str| runtime.block_on(store.get(k));
    let put = |k: &str, bytes: Vec<u8>| {
        runtime
            .block_on(store.put(k, Bytes::from(bytes)))
            .map(|_| ())
            .map_err(|e| store_error(&format!("writing {k}"), &e))
    };

    let plan = plan_run(dataset_id, settings.image_size, |k| match get(k) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(store_error(&format!("reading {k}"), &e)),
    })?;
    let labels: Vec<&str> = LABELS.to_vec();
    let train_rows = plan.train_rows;

    let recipe = &settings.recipe;
    let micro_batches_per_epoch = train_rows.div_ceil(recipe.batch_size as u64);
    let steps_per_epoch = micro_batches_per_epoch.div_ceil(recipe.accumulation_steps as u64);
    let total_steps = steps_per_epoch * u64::from(recipe.epochs);

    // Resume or start.
    let state_key = state_key(run_id);
    let previous: Option<RunState> = match get(&state_key) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes)
                .map_err(|e| RunError::Data(format!("{state_key}: {e}")))?,
        ),
        Err(chexvision_store::StoreError::NotFound { .. }) => None,
        Err(e) => return Err(store_error(&format!("reading {state_key}"), &e)),
    };
    if let Some(prev) = &previous {
        if prev.dataset_id != dataset_id || &prev.settings != settings {
            return Err(RunError::Conflict(format!(
                "run {run_id} exists with other settings or dataset ({}); use another run id",
                prev.dataset_id
            )));
        }
    }
    let mut state = previous
        .unwrap_or_else(|| RunState::accepted(run_id, dataset_id, plan.synthetic, settings, None));
    state.total_steps = total_steps;
    let history_key = key(run_id, "history.json");
    let mut history: Vec<EpochRecord> = if state.epochs_done > 0 {
        serde_json::from_slice(
            &get(&history_key).map_err(|e| store_error(&format!("reading {history_key}"), &e))?,
        )
        .map_err(|e| RunError::Data(format!("{history_key}: {e}")))?
    } else {
        Vec::new()
    };
    history.truncate(state.epochs_done as usize);
    // Checkpoints a killed run wrote but did not get announced.
    announce_pending(&mut state, &history, run_id, written, &put)?;
    if state.status != RunStatus::Running {
        return Ok(state);
    }

    let (model, varmap) =
        ChestModel::init_seeded(&settings.model, LABELS.len(), device, recipe.seed)?;
    let mut trainer = Trainer::new(model, varmap, recipe.clone(), &plan.pos_weight, total_steps)?;
    if state.epochs_done > 0 {
        let epoch_key = key(
            run_id,
            &format!("checkpoints/epoch-{:03}.safetensors", state.epochs_done - 1),
        );
        let bytes =
            get(&epoch_key).map_err(|e| store_error(&format!("reading {epoch_key}"), &e))?;
        let checkpoint = Checkpoint::from_bytes(&bytes, device)?;
        checkpoint.expect(&settings.model, &labels)?;
        checkpoint.restore_into(trainer.varmap())?;
        let opt_key = epoch_key.replace(".safetensors", ".optimizer.safetensors");
        let bytes = get(&opt_key).map_err(|e| store_error(&format!("reading {opt_key}"), &e))?;
        let opt_state: BTreeMap<String, Tensor> =
            chexvision_models::candle_core::safetensors::load_buffer(&bytes, device)
                .map_err(|e| RunError::Data(format!("{opt_key}: {e}")))?
                .into_iter()
                .collect();
        trainer.optimiser().load_state(&opt_state)?;
        trainer.set_step(state.step);
    } else {
        put(
            &key(run_id, "config.yaml"),
            serde_yaml::to_string(settings)
                .map_err(|e| RunError::Data(e.to_string()))?
                .into_bytes(),
        )?;
        if !settings.pretrained.is_empty() {
            let bytes = std::fs::read(&settings.pretrained).map_err(|e| {
                RunError::Data(format!("pretrained weights {}: {e}", settings.pretrained))
            })?;
            load_torchvision_backbone(trainer.varmap(), &settings.model, &bytes)?;
        }
    }

    let loader_config = |augment: bool| LoaderConfig {
        batch_size: recipe.batch_size,
        image_size: settings.image_size,
        prefetch_shards: settings.prefetch_shards,
        prefetch_batches: 4,
        shuffle_buffer: settings.shuffle_buffer,
        workers: settings.loader_workers,
        augment: augment.then(|| settings.augment.clone()),
        seed: recipe.seed,
    };
    let io = |e: std::io::Error| RunError::Data(format!("loader threads: {e}"));
    let mut train_loader = ShardLoader::new(
        store.clone(),
        runtime.clone(),
        plan.train_keys.clone(),
        loader_config(true),
    )
    .map_err(io)?;
    if let Some(histogram) = loader_wait {
        train_loader = train_loader.with_wait_histogram(histogram);
    }
    let val_loader = ShardLoader::new(
        store.clone(),
        runtime.clone(),
        plan.val_keys.clone(),
        loader_config(false),
    )
    .map_err(io)?;

    while state.epochs_done < recipe.epochs && !state.early_stopping.should_stop() {
        let epoch = state.epochs_done;
        progress(RunProgress::EpochStarted {
            epoch,
            epochs: recipe.epochs,
            images: train_rows,
        });
        trainer.begin_epoch(epoch);
        let started = Instant::now();
        let (mut loss_sum, mut images, mut lr) = (0f64, 0usize, 0f64);
        let mut batches = train_loader.epoch(epoch);
        for batch in &mut batches {
            if interrupted() {
                // Nothing of this epoch is recorded: a restart redoes it.
                return Err(RunError::Interrupted { epoch });
            }
            let batch = batch?;
            let n = batch.images.dims()[0];
            let batch = move_batch(batch, device)?;
            let step = trainer.train_micro_batch(&batch)?;
            loss_sum += f64::from(step.loss) * n as f64;
            images += n;
            lr = step.lr;
            progress(RunProgress::Batch {
                images: n,
                loss: step.loss,
                lr,
                step: trainer.step(),
            });
        }
        let wait = batches.wait().as_secs_f64();
        drop(batches);
        trainer.flush()?;
        let train_seconds = started.elapsed().as_secs_f64();

        let val_started = Instant::now();
        let validation =
            validate(&trainer, &val_loader, device, interrupted).map_err(|e| match e {
                RunError::Interrupted { .. } => RunError::Interrupted { epoch },
                other => other,
            })?;
        let validation_seconds = val_started.elapsed().as_secs_f64();
        let auc = validation.macro_auc.unwrap_or(f64::NAN);
        let best = state.early_stopping.observe(epoch, auc);

        // Checkpoint and optimiser state first, the state last.
        let (tensors, optimiser) = trainer.state()?;
        let meta = CheckpointMeta {
            config: settings.model.clone(),
            labels: LABELS.iter().map(|s| s.to_string()).collect(),
            input_size: settings.image_size as usize,
            normalization: Normalization::imagenet(),
            parameter_count: 0,
            tensors_sha256: String::new(),
            extra: BTreeMap::from([
                ("run_id".to_string(), run_id.to_string()),
                ("dataset_id".to_string(), dataset_id.to_string()),
                ("epoch".to_string(), epoch.to_string()),
                ("synthetic".to_string(), plan.synthetic.to_string()),
                ("val_macro_auc".to_string(), format!("{auc}")),
            ]),
        };
        let model_bytes = checkpoint_bytes(&tensors, &meta)?;
        let checkpoint_sha256 = chexvision_store::sha256_hex(&model_bytes);
        let checkpoint_size = model_bytes.len() as u64;
        let epoch_key = key(run_id, &format!("checkpoints/epoch-{epoch:03}.safetensors"));
        put(&epoch_key, model_bytes.clone())?;
        let opt_bytes = chexvision_models::safetensors_bytes(&optimiser)?;
        put(
            &epoch_key.replace(".safetensors", ".optimizer.safetensors"),
            opt_bytes,
        )?;
        if best {
            put(&key(run_id, "checkpoints/best.safetensors"), model_bytes)?;
        }
        history.push(EpochRecord {
            epoch,
            train_loss: if images > 0 {
                loss_sum / images as f64
            } else {
                f64::NAN
            },
            learning_rate: lr,
            steps: trainer.step(),
            val_macro_auc: validation.macro_auc,
            val_per_class_auc: LABELS
                .iter()
                .zip(&validation.per_class_auc)
                .map(|(l, a)| (l.to_string(), *a))
                .collect(),
            val_binary_auc: validation.binary_auc,
            train_images: images,
            train_seconds,
            images_per_second: images as f64 / train_seconds.max(1e-9),
            loader_wait_seconds: wait,
            validation_seconds,
            best,
            backbone_frozen: trainer.model().backbone_frozen(),
            checkpoint_sha256: checkpoint_sha256.clone(),
            checkpoint_bytes: checkpoint_size,
        });
        put(&history_key, to_json(&history)?)?;
        state.epochs_done = epoch + 1;
        state.step = trainer.step();
        let last = state.epochs_done >= recipe.epochs || state.early_stopping.should_stop();
        if last {
            state.status = if state.epochs_done >= recipe.epochs {
                RunStatus::Completed
            } else {
                RunStatus::StoppedEarly
            };
        }
        put(
            &key(run_id, "MODEL_CARD.md"),
            model_card(&state, &history).into_bytes(),
        )?;
        put(&state_key, to_json(&state)?)?;
        announce_pending(&mut state, &history, run_id, written, &put)?;
        progress(RunProgress::EpochFinished {
            epoch,
            val_macro_auc: validation.macro_auc,
            val_binary_auc: validation.binary_auc,
            images_per_second: images as f64 / train_seconds.max(1e-9),
        });
    }
    Ok(state)
}

/// Writes one object of the run.
type PutObject<'a> = dyn Fn(&str, Vec<u8>) -> Result<(), RunError> + 'a;

/// Offers every checkpoint not yet announced to `written`, in order, and
/// records in `state.json` how far that got.
fn announce_pending(
    state: &mut RunState,
    history: &[EpochRecord],
    run_id: &str,
    written: &mut dyn FnMut(WrittenCheckpoint) -> bool,
    put: &PutObject<'_>,
) -> Result<(), RunError> {
    let before = state.announced_epochs;
    while state.announced_epochs < state.epochs_done {
        let epoch = state.announced_epochs;
        let Some(record) = history.get(epoch as usize) else {
            break;
        };
        let announced = written(WrittenCheckpoint {
            key: key(run_id, &format!("checkpoints/epoch-{epoch:03}.safetensors")),
            epoch,
            sha256: record.checkpoint_sha256.clone(),
            size_bytes: record.checkpoint_bytes,
            best: record.best,
            last: epoch + 1 == state.epochs_done && state.status != RunStatus::Running,
            val_macro_auc: record.val_macro_auc,
            val_binary_auc: record.val_binary_auc,
        });
        if !announced {
            break;
        }
        state.announced_epochs += 1;
    }
    if state.announced_epochs != before {
        put(&state_key(run_id), to_json(state)?)?;
    }
    Ok(())
}

/// Validation over the whole split, one batch at a time: each batch is
/// scored and dropped, so memory does not grow with the split. Stops at the
/// next batch when `interrupted` says so (SIGTERM, a lost lease).
pub fn validate(
    trainer: &Trainer,
    loader: &ShardLoader,
    device: &Device,
    interrupted: &dyn Fn() -> bool,
) -> Result<crate::Validation, RunError> {
    let mut pass = trainer.validation()?;
    for batch in loader.epoch(0) {
        if interrupted() {
            return Err(RunError::Interrupted { epoch: 0 });
        }
        let batch = move_batch(batch?, device)?;
        pass.add(&batch)?;
    }
    Ok(pass.finish())
}

fn move_batch(batch: crate::Batch, device: &Device) -> Result<crate::Batch, RunError> {
    if matches!(device, Device::Cpu) {
        return Ok(batch);
    }
    Ok(crate::Batch {
        images: batch.images.to_device(device).map_err(TrainError::from)?,
        findings: batch.findings.to_device(device).map_err(TrainError::from)?,
        abnormal: batch.abnormal.to_device(device).map_err(TrainError::from)?,
    })
}

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Model(#[from] chexvision_models::ModelError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error("store: {0}")]
    Store(String),
    /// The store did not answer (after its own retries): may pass by
    /// itself, so the worker waits it out instead of counting an attempt.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("data: {0}")]
    Data(String),
    #[error("conflict: {0}")]
    Conflict(String),
    /// The dataset has no ready manifest at the run's image size.
    #[error("{0}")]
    NotPrepared(String),
    #[error("interrupted during epoch {epoch}; run again to resume from its start")]
    Interrupted { epoch: u32 },
}

impl RunError {
    /// Whether the store was out of reach: the run's own reads, writes
    /// and the loader's shard fetches.
    pub fn is_unavailable(&self) -> bool {
        match self {
            RunError::Unavailable(_) => true,
            RunError::Loader(LoaderError::Fetch { source, .. }) => source.is_unavailable(),
            _ => false,
        }
    }
}

/// A store error of the run, `context` saying which object: an outage
/// becomes [`RunError::Unavailable`], anything else [`RunError::Store`].
pub fn store_error(context: &str, error: &chexvision_store::StoreError) -> RunError {
    let message = format!("{context}: {error}");
    if error.is_unavailable() {
        RunError::Unavailable(message)
    } else {
        RunError::Store(message)
    }
}
