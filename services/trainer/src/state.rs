//! A training run's record in the store and its I/O.
//!
//! ```text
//! runs/{run_id}/state.json                 what is done (the commit point, written last)
//! runs/{run_id}/config.yaml                the resolved settings
//! runs/{run_id}/history.json               one entry per finished epoch
//! runs/{run_id}/lease.json                 which replica trains it, until when
//! runs/{run_id}/checkpoints/epoch-{e:03}.safetensors     model (with running statistics)
//! runs/{run_id}/checkpoints/epoch-{e:03}.optimizer.safetensors
//! runs/{run_id}/checkpoints/best.safetensors             best validation macro AUC
//! runs/{run_id}/MODEL_CARD.md
//! ```

use std::collections::BTreeMap;

use bytes::Bytes;
use chexvision_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::recipe::EarlyStopping;
use crate::run::{store_error, RunError};
use crate::settings::TrainSettings;

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

pub fn run_prefix(run_id: &str) -> String {
    format!("runs/{run_id}")
}

pub(crate) fn run_key(run_id: &str, rest: &str) -> String {
    format!("{}/{rest}", run_prefix(run_id))
}

/// `runs/{run_id}/state.json`.
pub fn state_key(run_id: &str) -> String {
    run_key(run_id, "state.json")
}

/// `runs/{run_id}/lease.json`: the replica training the run.
pub fn lease_key(run_id: &str) -> String {
    run_key(run_id, "lease.json")
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, RunError> {
    serde_json::to_vec_pretty(value).map_err(|e| RunError::Data(e.to_string()))
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
        Err(e) => return Err(store_error(&format!("reading {state_key}"), &e)),
    }
    let config =
        serde_yaml::to_string(&state.settings).map_err(|e| RunError::Data(e.to_string()))?;
    store
        .put(&run_key(&state.run_id, "config.yaml"), Bytes::from(config))
        .await
        .map_err(|e| store_error("writing config.yaml", &e))?;
    // Two replicas accepting one request (a rebalance) create one run.
    match store
        .put_if_absent(&state_key, Bytes::from(to_json(state)?))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_exists() => Err(RunError::Conflict(format!(
            "run {} exists already",
            state.run_id
        ))),
        Err(e) => Err(store_error(&format!("writing {state_key}"), &e)),
    }
}

/// Reads `runs/{run_id}/state.json`; `None` if there is no such run.
pub async fn read_run_state(
    store: &dyn ObjectStore,
    run_id: &str,
) -> Result<Option<RunState>, RunError> {
    chexvision_store::get_json(store, &state_key(run_id))
        .await
        .map_err(|e| match e {
            chexvision_store::StoreError::Decode { .. } => RunError::Data(e.to_string()),
            other => store_error(&format!("reading {}", state_key(run_id)), &other),
        })
}

/// Writes `state.json`.
pub async fn write_run_state(store: &dyn ObjectStore, state: &RunState) -> Result<(), RunError> {
    let key = state_key(&state.run_id);
    store
        .put(&key, Bytes::from(to_json(state)?))
        .await
        .map(|_| ())
        .map_err(|e| store_error(&format!("writing {key}"), &e))
}

/// Marks a run failed (kept for the record; never picked up again). Works
/// on a state this build cannot read as a [`RunState`] too (written by an
/// older build, or damaged): its other fields are kept as they are.
pub async fn mark_failed(
    store: &dyn ObjectStore,
    run_id: &str,
    error: &str,
) -> Result<(), RunError> {
    let key = state_key(run_id);
    let bytes = match store.get(&key).await {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(store_error(&format!("reading {key}"), &e)),
    };
    let mut record = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(map)) => map,
        // Not even a JSON object: keep what it said as text.
        _ => serde_json::Map::from_iter([
            ("run_id".to_owned(), run_id.into()),
            (
                "damaged_state".to_owned(),
                String::from_utf8_lossy(&bytes[..bytes.len().min(4096)])
                    .into_owned()
                    .into(),
            ),
        ]),
    };
    record.insert("status".into(), "failed".into());
    record.insert("error".into(), error.into());
    store
        .put(&key, Bytes::from(to_json(&record)?))
        .await
        .map(|_| ())
        .map_err(|e| store_error(&format!("writing {key}"), &e))
}

/// What the listing of runs needs from a state, readable even where the
/// whole state is not.
#[derive(Debug, Deserialize)]
pub(crate) struct StatusOnly {
    pub status: Option<RunStatus>,
}
