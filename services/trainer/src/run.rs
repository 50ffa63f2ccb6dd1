//! A training run in the store, resumable at any moment.
//!
//! ```text
//! runs/{run_id}/state.json                 what is done (the commit point, written last)
//! runs/{run_id}/config.yaml                the resolved settings
//! runs/{run_id}/history.json               one entry per finished epoch
//! runs/{run_id}/checkpoints/epoch-{e:03}.safetensors     model (with running statistics)
//! runs/{run_id}/checkpoints/epoch-{e:03}.optimizer.safetensors
//! runs/{run_id}/checkpoints/best.safetensors             best validation macro AUC
//! runs/{run_id}/MODEL_CARD.md
//! ```
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
use chexvision_dataset::{Manifest, Split, LABELS};
use chexvision_models::candle_core::{Device, Tensor};
use chexvision_models::{
    checkpoint_bytes, load_torchvision_backbone, Checkpoint, CheckpointMeta, ChestModel,
    ModelConfig, Normalization,
};
use chexvision_store::ObjectStore;
use chexvision_vision::AugmentConfig;
use serde::{Deserialize, Serialize};

use crate::recipe::{pos_weight_from_counts, EarlyStopping, RecipeConfig};
use crate::{LoaderConfig, LoaderError, ShardLoader, TrainError, Trainer};

/// Everything a run is made from (the `service:` section of a training
/// config, plus the request's dataset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    pub model: ModelConfig,
    pub recipe: RecipeConfig,
    /// Side of the ready images the run reads (`ready/{size}px/`).
    pub image_size: u32,
    pub augment: AugmentConfig,
    pub loader_workers: usize,
    pub prefetch_shards: usize,
    pub shuffle_buffer: usize,
    /// Converted torchvision weights (safetensors) for the DenseNet
    /// backbone; empty: train from scratch.
    pub pretrained: String,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            model: ModelConfig::densenet121(),
            recipe: RecipeConfig::default(),
            image_size: 320,
            augment: AugmentConfig::default(),
            loader_workers: 2,
            prefetch_shards: 2,
            shuffle_buffer: 2048,
            pretrained: String::new(),
        }
    }
}

impl chexvision_config::Validate for TrainSettings {
    fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if let Err(e) = self.recipe.validate() {
            problems.push(("recipe".to_string(), e.to_string()));
        }
        let model_check = match &self.model {
            ModelConfig::Densenet(c) => c.validate(),
            ModelConfig::SeResnet(c) => c.validate(),
        };
        if let Err(e) = model_check {
            problems.push(("model".to_string(), e.to_string()));
        }
        if !(32..=2048).contains(&self.image_size) {
            problems.push((
                "image_size".to_string(),
                format!("must be 32..=2048, got {}", self.image_size),
            ));
        }
        if let Err(e) = self.augment.validate() {
            problems.push(("augment".to_string(), e.to_string()));
        }
        if self.loader_workers == 0 || self.prefetch_shards == 0 {
            problems.push((
                "loader_workers".to_string(),
                "loader_workers and prefetch_shards must be at least 1".into(),
            ));
        }
        problems
    }
}

/// One finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: u32,
    pub train_loss: f64,
    pub learning_rate: f64,
    pub steps: u64,
    pub val_macro_auc: Option<f64>,
    pub val_per_class_auc: BTreeMap<String, Option<f64>>,
    pub val_binary_auc: Option<f64>,
    pub train_images: usize,
    pub train_seconds: f64,
    pub images_per_second: f64,
    pub loader_wait_seconds: f64,
    pub validation_seconds: f64,
    pub best: bool,
    pub backbone_frozen: bool,
    /// The epoch's checkpoint file: sha256 and size, for its announcement.
    #[serde(default)]
    pub checkpoint_sha256: String,
    #[serde(default)]
    pub checkpoint_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Accepted or in progress: a (re)started trainer runs it to its end.
    Running,
    Completed,
    StoppedEarly,
    /// Gave up (bad data, a model that does not fit its checkpoint, ...):
    /// `error` says why.
    Failed,
}

/// The request a run was started for (the service's runs; the CLI's have none).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RunRequest {
    pub request_id: String,
    /// Named config under `configs/` the settings were resolved from.
    pub config: String,
    pub overrides: BTreeMap<String, String>,
    pub reason: String,
    pub requested_by: String,
    /// Correlation id of the request event, carried by the run's events.
    pub correlation_id: String,
    /// Event id of the request, the cause of the run's events.
    pub event_id: String,
}

/// `runs/{run_id}/state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub run_id: String,
    pub dataset_id: String,
    pub synthetic: bool,
    pub status: RunStatus,
    pub settings: TrainSettings,
    pub epochs_done: u32,
    pub step: u64,
    pub early_stopping: EarlyStopping,
    pub total_steps: u64,
    /// Epochs whose `CheckpointCreated` was handed to the bus; the rest are
    /// announced (again) when the run resumes: at least once.
    #[serde(default)]
    pub announced_epochs: u32,
    #[serde(default)]
    pub request: Option<RunRequest>,
    /// Seconds since the Unix epoch when the run was created (orders the
    /// unfinished runs a restarted trainer picks up).
    #[serde(default)]
    pub created_at_unix: u64,
    /// Why a `failed` run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RunState {
    /// A run accepted but not started: what `state.json` holds from the
    /// moment a request is acknowledged.
    pub fn accepted(
        run_id: &str,
        dataset_id: &str,
        synthetic: bool,
        settings: &TrainSettings,
        request: Option<RunRequest>,
    ) -> Self {
        RunState {
            run_id: run_id.to_string(),
            dataset_id: dataset_id.to_string(),
            synthetic,
            status: RunStatus::Running,
            settings: settings.clone(),
            epochs_done: 0,
            step: 0,
            early_stopping: EarlyStopping::new(settings.recipe.patience),
            total_steps: 0,
            announced_epochs: 0,
            request,
            created_at_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            error: None,
        }
    }

    /// Unfinished, or finished with checkpoints not yet announced.
    pub fn needs_work(&self) -> bool {
        self.status == RunStatus::Running
            || (self.status != RunStatus::Failed && self.announced_epochs < self.epochs_done)
    }
}

/// `runs/{run_id}/state.json`.
pub fn state_key(run_id: &str) -> String {
    key(run_id, "state.json")
}

/// Records a new run (`config.yaml`, then `state.json`) without training:
/// once this returns the run survives any crash. Fails with
/// [`RunError::Conflict`] if the run exists.
pub async fn create_run(store: &dyn ObjectStore, state: &RunState) -> Result<(), RunError> {
    let state_key = state_key(&state.run_id);
    match store.head(&state_key).await {
        Ok(_) => {
            return Err(RunError::Conflict(format!(
                "run {} exists already",
                state.run_id
            )))
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(RunError::Store(format!("reading {state_key}: {e}"))),
    }
    let config =
        serde_yaml::to_string(&state.settings).map_err(|e| RunError::Data(e.to_string()))?;
    store
        .put(&key(&state.run_id, "config.yaml"), Bytes::from(config))
        .await
        .map_err(|e| RunError::Store(format!("writing config.yaml: {e}")))?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| RunError::Data(e.to_string()))?;
    store
        .put(&state_key, Bytes::from(json))
        .await
        .map_err(|e| RunError::Store(format!("writing {state_key}: {e}")))?;
    Ok(())
}

/// Reads `runs/{run_id}/state.json`; `None` if there is no such run.
pub async fn read_run_state(
    store: &dyn ObjectStore,
    run_id: &str,
) -> Result<Option<RunState>, RunError> {
    let state_key = state_key(run_id);
    match store.get(&state_key).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RunError::Data(format!("{state_key}: {e}"))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(RunError::Store(format!("reading {state_key}: {e}"))),
    }
}

/// Marks a run failed (kept for the record; not picked up again).
pub async fn mark_failed(
    store: &dyn ObjectStore,
    run_id: &str,
    error: &str,
) -> Result<(), RunError> {
    let Some(mut state) = read_run_state(store, run_id).await? else {
        return Ok(());
    };
    state.status = RunStatus::Failed;
    state.error = Some(error.to_string());
    let json = serde_json::to_vec_pretty(&state).map_err(|e| RunError::Data(e.to_string()))?;
    store
        .put(&state_key(run_id), Bytes::from(json))
        .await
        .map_err(|e| RunError::Store(format!("writing state.json of {run_id}: {e}")))?;
    Ok(())
}

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

pub fn run_prefix(run_id: &str) -> String {
    format!("runs/{run_id}")
}

fn key(run_id: &str, rest: &str) -> String {
    format!("{}/{rest}", run_prefix(run_id))
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
            .map_err(|e| RunError::Store(format!("writing {k}: {e}")))
    };

    let manifest_key = chexvision_dataset::manifest_key(dataset_id);
    let manifest: Manifest = serde_json::from_slice(&get(&manifest_key).map_err(|e| {
        RunError::Store(format!("reading the dataset manifest {manifest_key}: {e}"))
    })?)
    .map_err(|e| RunError::Data(format!("{manifest_key}: {e}")))?;
    let labels: Vec<&str> = LABELS.to_vec();
    if manifest.label_order != labels {
        return Err(RunError::Data(format!(
            "{manifest_key}: label order differs from this build's"
        )));
    }
    let shard_keys = |split: Split| -> Vec<String> {
        manifest
            .shards
            .iter()
            .filter(|s| s.split == split.name())
            .map(|s| {
                chexvision_dataset::ready_shard_key(dataset_id, settings.image_size, split, s.index)
            })
            .collect()
    };
    let (train_keys, val_keys) = (shard_keys(Split::Train), shard_keys(Split::Validation));
    let train_rows = manifest
        .rows_per_split
        .get(Split::Train.name())
        .copied()
        .unwrap_or(0);
    if train_keys.is_empty() || val_keys.is_empty() || train_rows == 0 {
        return Err(RunError::Data(format!(
            "dataset {dataset_id} needs train and validation shards (has {} and {})",
            train_keys.len(),
            val_keys.len()
        )));
    }
    let counts = manifest
        .label_counts
        .get(Split::Train.name())
        .cloned()
        .unwrap_or_default();
    let positives: Vec<u64> = LABELS
        .iter()
        .map(|l| counts.get(*l).copied().unwrap_or(0))
        .collect();
    let pos_weight = pos_weight_from_counts(&positives, train_rows);

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
        Err(e) => return Err(RunError::Store(format!("reading {state_key}: {e}"))),
    };
    if let Some(prev) = &previous {
        if prev.dataset_id != dataset_id || &prev.settings != settings {
            return Err(RunError::Conflict(format!(
                "run {run_id} exists with other settings or dataset ({}); use another run id",
                prev.dataset_id
            )));
        }
    }
    let mut state = previous.unwrap_or_else(|| {
        RunState::accepted(run_id, dataset_id, manifest.synthetic, settings, None)
    });
    state.total_steps = total_steps;
    let history_key = key(run_id, "history.json");
    let mut history: Vec<EpochRecord> = if state.epochs_done > 0 {
        serde_json::from_slice(
            &get(&history_key)
                .map_err(|e| RunError::Store(format!("reading {history_key}: {e}")))?,
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
    let mut trainer = Trainer::new(model, varmap, recipe.clone(), &pos_weight, total_steps)?;
    if state.epochs_done > 0 {
        let epoch_key = key(
            run_id,
            &format!("checkpoints/epoch-{:03}.safetensors", state.epochs_done - 1),
        );
        let bytes =
            get(&epoch_key).map_err(|e| RunError::Store(format!("reading {epoch_key}: {e}")))?;
        let checkpoint = Checkpoint::from_bytes(&bytes, device)?;
        checkpoint.expect(&settings.model, &labels)?;
        checkpoint.restore_into(trainer.varmap())?;
        let opt_key = epoch_key.replace(".safetensors", ".optimizer.safetensors");
        let bytes =
            get(&opt_key).map_err(|e| RunError::Store(format!("reading {opt_key}: {e}")))?;
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
        train_keys,
        loader_config(true),
    )
    .map_err(io)?;
    if let Some(histogram) = loader_wait {
        train_loader = train_loader.with_wait_histogram(histogram);
    }
    let val_loader = ShardLoader::new(
        store.clone(),
        runtime.clone(),
        val_keys,
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
        let val_batches: Vec<_> = val_loader
            .epoch(0)
            .map(|b| {
                b.map_err(RunError::from)
                    .and_then(|b| move_batch(b, device))
            })
            .collect::<Result<_, _>>()?;
        let validation = trainer.validate(&val_batches)?;
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
                ("synthetic".to_string(), manifest.synthetic.to_string()),
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
        put(
            &history_key,
            serde_json::to_vec_pretty(&history).map_err(|e| RunError::Data(e.to_string()))?,
        )?;
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
        put(
            &state_key,
            serde_json::to_vec_pretty(&state).map_err(|e| RunError::Data(e.to_string()))?,
        )?;
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
        put(
            &state_key(run_id),
            serde_json::to_vec_pretty(state).map_err(|e| RunError::Data(e.to_string()))?,
        )?;
    }
    Ok(())
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

/// `MODEL_CARD.md`: what the model is, what it was trained on, how it did.
pub fn model_card(state: &RunState, history: &[EpochRecord]) -> String {
    let best = history.iter().rev().find(|h| h.best);
    let mut card = format!(
        "# Model card: run {}\n\n\
         - Architecture: {} ({})\n\
         - Outputs: 14 findings ({}) and abnormal, sigmoid probabilities\n\
         - Input: {} px chest X-ray, gray, CLAHE, ImageNet normalisation (3 channels)\n\
         - Dataset: {}{}\n\
         - Status: {:?} after {} epochs, {} optimiser steps\n\n",
        state.run_id,
        state.settings.model.architecture(),
        serde_json::to_string(&state.settings.model).unwrap_or_default(),
        LABELS.join(", "),
        state.settings.image_size,
        state.dataset_id,
        if state.synthetic {
            " — SYNTHETIC images from the CheXVision generator"
        } else {
            ""
        },
        state.status,
        state.epochs_done,
        state.step,
    );
    card.push_str("## Validation\n\n");
    match best {
        Some(b) => {
            card.push_str(&format!(
                "Best epoch {}: macro AUC {:.4}, abnormal AUC {}.\n\n| finding | AUC |\n|---|---|\n",
                b.epoch,
                b.val_macro_auc.unwrap_or(f64::NAN),
                b.val_binary_auc.map_or("undefined".into(), |a| format!("{a:.4}"))
            ));
            for (label, auc) in &b.val_per_class_auc {
                card.push_str(&format!(
                    "| {label} | {} |\n",
                    auc.map_or("undefined (one outcome only)".into(), |a| format!("{a:.4}"))
                ));
            }
        }
        None => card.push_str("No epoch has a defined validation AUC yet.\n"),
    }
    card.push_str("\n## Intended use and limitations\n\n");
    if state.synthetic {
        card.push_str(
            "Trained on synthetic phantoms: its figures show that the pipeline learns visible signals and say \
             nothing about clinical performance. Not for use on patients.\n",
        );
    } else {
        card.push_str(
            "A research model for triage support on frontal chest X-rays (NIH ChestX-ray14 labels, which are \
             text-mined and noisy). Not a diagnostic device; validate on local data before any clinical use; \
             performance on other populations, scanners and lateral views is unknown.\n",
        );
    }
    card
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
    #[error("data: {0}")]
    Data(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("interrupted during epoch {epoch}; run again to resume from its start")]
    Interrupted { epoch: u32 },
}
