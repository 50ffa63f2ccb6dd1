//! What a run will read, planned from the dataset's ready manifest alone
//! (`datasets/{id}/ready/{size}px/manifest.json`, written by preprocess):
//! its ready shards, their rows and the label counts of the class weights.
//! A raw shard whose every image was rejected has no ready shard and is
//! not in it, so the loader never asks for a missing object.

use chexvision_dataset::{ready_manifest_key, ReadyManifest, Split, LABELS};

use crate::recipe::pos_weight_from_counts;
use crate::run::RunError;

/// The shards and counts of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    pub synthetic: bool,
    pub train_keys: Vec<String>,
    pub val_keys: Vec<String>,
    pub train_rows: u64,
    pub val_rows: u64,
    /// Negatives over positives per finding in the training split.
    pub pos_weight: Vec<f32>,
}

/// The message when a dataset has no ready manifest at `size_px`.
pub fn not_prepared(dataset_id: &str, size_px: u32) -> String {
    format!(
        "dataset `{dataset_id}` is not prepared at {size_px} px (no {}); prepare it with \
         `chexvision preprocess --dataset-id {dataset_id} --size {size_px}` or a preprocess \
         service with service.size_px: {size_px}",
        ready_manifest_key(dataset_id, size_px)
    )
}

/// Plans a run on `dataset_id` at `size_px` from its ready manifest,
/// fetched by `get` (`Ok(None)`: no such object).
pub fn plan_run(
    dataset_id: &str,
    size_px: u32,
    get: impl Fn(&str) -> Result<Option<bytes::Bytes>, RunError>,
) -> Result<RunPlan, RunError> {
    let key = ready_manifest_key(dataset_id, size_px);
    let bytes =
        get(&key)?.ok_or_else(|| RunError::NotPrepared(not_prepared(dataset_id, size_px)))?;
    let ready: ReadyManifest =
        serde_json::from_slice(&bytes).map_err(|e| RunError::Data(format!("{key}: {e}")))?;
    let manifest = &ready.manifest;
    if manifest.label_order != LABELS {
        return Err(RunError::Data(format!(
            "{key}: label order differs from this build's"
        )));
    }
    if ready.image_size_px != size_px {
        return Err(RunError::Data(format!(
            "{key} describes {} px images, not {size_px}",
            ready.image_size_px
        )));
    }
    let keys = |split: Split| -> Vec<String> {
        manifest
            .shards
            .iter()
            .filter(|s| s.split == split.name() && s.rows > 0)
            .map(|s| s.key.clone())
            .collect()
    };
    let rows = |split: Split| {
        manifest
            .rows_per_split
            .get(split.name())
            .copied()
            .unwrap_or(0)
    };
    let (train_keys, val_keys) = (keys(Split::Train), keys(Split::Validation));
    let (train_rows, val_rows) = (rows(Split::Train), rows(Split::Validation));
    if train_keys.is_empty() || val_keys.is_empty() || train_rows == 0 || val_rows == 0 {
        return Err(RunError::Data(format!(
            "dataset {dataset_id} at {size_px} px needs ready train and validation images \
             (has {train_rows} in {} shards and {val_rows} in {} shards)",
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
    Ok(RunPlan {
        synthetic: manifest.synthetic,
        pos_weight: pos_weight_from_counts(&positives, train_rows),
        train_keys,
        val_keys,
        train_rows,
        val_rows,
    })
}
