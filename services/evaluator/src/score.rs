//! Scoring a split: ready shards streamed from the store, one shard ahead,
//! decoded on rayon's threads, run through every model of the evaluation
//! (the fused CPU path on a CPU, candle on a GPU), optionally over the four
//! test-time views, probabilities averaged over views and models.
//!
//! Memory holds the shard being scored, the next one and one batch: never
//! the split. What is kept per image is its ids, 14 labels and 15
//! probabilities.

use std::sync::mpsc::sync_channel;
use std::sync::Arc;

use bytes::Bytes;
use chexvision_dataset::{read_shard, ShardRow, LABELS};
use chexvision_models::candle_core::{Device, Tensor};
use chexvision_models::{Checkpoint, ChestModel, CpuInference, ModelConfig};
use chexvision_store::ObjectStore;
use chexvision_vision::{to_tensor_imagenet, tta_views};
use rayon::prelude::*;

use crate::EvalError;

/// Outputs per image: the 14 findings, then abnormal.
pub const OUTPUTS: usize = 15;

enum Backend {
    Cpu(Box<CpuInference>),
    Candle(Box<ChestModel>, Device),
}

/// One checkpoint, ready to score images.
pub struct ModelRunner {
    backend: Backend,
    pub config: ModelConfig,
    pub input_size: u32,
}

impl ModelRunner {
    /// From a checkpoint's bytes (digest already checked by the caller or
    /// here through [`Checkpoint::from_bytes`]): the fused CPU plan on a
    /// CPU, the candle model on any other device.
    pub fn new(bytes: &[u8], device: &Device) -> Result<Self, EvalError> {
        let checkpoint = Checkpoint::from_bytes(bytes, &Device::Cpu)
            .map_err(|e| EvalError::Checkpoint(e.to_string()))?;
        let labels: Vec<&str> = checkpoint.meta.labels.iter().map(String::as_str).collect();
        if labels != LABELS {
            return Err(EvalError::Checkpoint(format!(
                "its findings {labels:?} are not this build's {LABELS:?}"
            )));
        }
        let config = checkpoint.meta.config.clone();
        let input_size = u32::try_from(checkpoint.meta.input_size)
            .map_err(|_| EvalError::Checkpoint("input size out of range".into()))?;
        let backend = if matches!(device, Device::Cpu) {
            Backend::Cpu(Box::new(
                CpuInference::new(&config, LABELS.len(), &checkpoint.tensors)
                    .map_err(|e| EvalError::Checkpoint(e.to_string()))?,
            ))
        } else {
            let on_device = Checkpoint::from_bytes(bytes, device)
                .map_err(|e| EvalError::Checkpoint(e.to_string()))?;
            let model = on_device
                .inference_model(device)
                .map_err(|e| EvalError::Checkpoint(e.to_string()))?;
            Backend::Candle(Box::new(model), device.clone())
        };
        Ok(ModelRunner {
            backend,
            config,
            input_size,
        })
    }

    /// `n × OUTPUTS` probabilities of `n` normalised images (3 × s × s each).
    pub fn probabilities(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>, EvalError> {
        let s = self.input_size as usize;
        let model = |e: chexvision_models::ModelError| EvalError::Model(e.to_string());
        let candle = |e: chexvision_models::candle_core::Error| EvalError::Model(e.to_string());
        let x = Tensor::from_vec(pixels, (n, 3, s, s), &Device::Cpu).map_err(candle)?;
        let logits = match &self.backend {
            Backend::Cpu(plan) => plan.forward(&x).map_err(model)?,
            Backend::Candle(net, device) => net
                .forward_t(&x.to_device(device).map_err(candle)?, false)
                .map_err(model)?,
        };
        logits
            .probabilities()
            .map_err(model)?
            .to_device(&Device::Cpu)
            .map_err(candle)?
            .flatten_all()
            .map_err(candle)?
            .to_vec1::<f32>()
            .map_err(candle)
    }
}

/// Per-image results of a split, in the order scored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitScores {
    pub image_ids: Vec<String>,
    pub patient_ids: Vec<String>,
    /// `rows × 14`.
    pub labels: Vec<bool>,
    /// `rows × 15`: the findings, then abnormal.
    pub probabilities: Vec<f64>,
    /// Images that could not be scored, with the reason.
    pub skipped: Vec<(String, String)>,
}

impl SplitScores {
    pub fn rows(&self) -> usize {
        self.image_ids.len()
    }

    /// Column `c` (0..15) of the probabilities.
    pub fn probability(&self, c: usize) -> Vec<f64> {
        (0..self.rows())
            .map(|r| self.probabilities[r * OUTPUTS + c])
            .collect()
    }

    /// Finding `c` (0..14) of the labels; `c == 14` is abnormal (any finding).
    pub fn label(&self, c: usize) -> Vec<bool> {
        let k = LABELS.len();
        (0..self.rows())
            .map(|r| {
                let row = &self.labels[r * k..(r + 1) * k];
                if c < k {
                    row[c]
                } else {
                    row.iter().any(|&y| y)
                }
            })
            .collect()
    }

    /// The 14 findings' probabilities, `rows × 14`.
    pub fn finding_probabilities(&self) -> Vec<f64> {
        let k = LABELS.len();
        (0..self.rows())
            .flat_map(|r| {
                self.probabilities[r * OUTPUTS..r * OUTPUTS + k]
                    .iter()
                    .copied()
            })
            .collect()
    }
}

/// What scoring needs besides the models.
pub struct ScoreOptions {
    pub tta: bool,
    pub batch_size: usize,
}

/// Scores the images of the shards `keys`, in order, with every model of
/// `models` (which share one input size); `progress` is told how many
/// images each batch scored, `interrupted` is polled between batches.
pub fn score_split(
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Handle,
    keys: &[String],
    models: &[ModelRunner],
    options: &ScoreOptions,
    progress: &mut dyn FnMut(usize),
    interrupted: &dyn Fn() -> bool,
) -> Result<SplitScores, EvalError> {
    let Some(size) = models.first().map(|m| m.input_size) else {
        return Err(EvalError::Invalid("no model to score with".into()));
    };
    if let Some(other) = models.iter().find(|m| m.input_size != size) {
        return Err(EvalError::Invalid(format!(
            "ensemble members need one input size: {size} px and {} px",
            other.input_size
        )));
    }
    let (tx, rx) = sync_channel::<(String, Result<Bytes, chexvision_store::StoreError>)>(1);
    let fetch_keys = keys.to_vec();
    let fetch = std::thread::Builder::new()
        .name("evaluate-fetch".into())
        .spawn(move || {
            for key in fetch_keys {
                let got = runtime.block_on(store.get(&key));
                let failed = got.is_err();
                if tx.send((key, got)).is_err() || failed {
                    return;
                }
            }
        })
        .map_err(|e| EvalError::Invalid(format!("fetch thread: {e}")))?;

    let mut scores = SplitScores::default();
    let views = if options.tta { 4 } else { 1 };
    let images_per_batch = (options.batch_size / views).max(1);
    for (key, got) in rx {
        let bytes = got.map_err(|e| EvalError::Store(format!("reading shard {key}: {e}")))?;
        let reader = read_shard(bytes).map_err(|e| EvalError::Data(format!("{key}: {e}")))?;
        let mut batch: Vec<ShardRow> = Vec::with_capacity(images_per_batch);
        for row in reader {
            let row = row.map_err(|e| EvalError::Data(format!("{key}: {e}")))?;
            batch.push(row);
            if batch.len() == images_per_batch {
                if interrupted() {
                    return Err(EvalError::Interrupted);
                }
                let n = score_batch(&mut batch, size, models, options.tta, &mut scores)?;
                progress(n);
            }
        }
        if !batch.is_empty() {
            let n = score_batch(&mut batch, size, models, options.tta, &mut scores)?;
            progress(n);
        }
    }
    let _ = fetch.join();
    Ok(scores)
}

/// Decodes, scores and drains `batch` into `out`; returns the images scored.
fn score_batch(
    batch: &mut Vec<ShardRow>,
    size: u32,
    models: &[ModelRunner],
    tta: bool,
    out: &mut SplitScores,
) -> Result<usize, EvalError> {
    let rows = std::mem::take(batch);
    let prepared: Vec<Result<Vec<Vec<f32>>, String>> = rows
        .par_iter()
        .map(|row| {
            let image = chexvision_trainer::ready_image(row, size)
                .map_err(|reason| format!("{reason} (the model's input size)"))?;
            if tta {
                let views = tta_views(&image).map_err(|e| e.to_string())?;
                Ok(views.iter().map(to_tensor_imagenet).collect())
            } else {
                Ok(vec![to_tensor_imagenet(&image)])
            }
        })
        .collect();
    let mut pixels = Vec::new();
    let mut kept = Vec::new();
    let mut views = 1;
    for (row, item) in rows.into_iter().zip(prepared) {
        match item {
            Ok(tensors) => {
                views = tensors.len();
                for t in tensors {
                    pixels.extend_from_slice(&t);
                }
                kept.push(row);
            }
            Err(reason) => {
                tracing::warn!(image = %row.filename, %reason, "image not scored");
                out.skipped.push((row.filename.clone(), reason));
            }
        }
    }
    if kept.is_empty() {
        return Ok(0);
    }
    let n_inputs = kept.len() * views;
    let mut summed = vec![0f64; kept.len() * OUTPUTS];
    for model in models {
        let probs = model.probabilities(pixels.clone(), n_inputs)?;
        for (i, p) in probs.iter().enumerate() {
            // Input i is view (i % views) of image (i / views).
            let image = (i / OUTPUTS) / views;
            summed[image * OUTPUTS + i % OUTPUTS] += f64::from(*p);
        }
    }
    let denominator = (views * models.len()) as f64;
    for (r, row) in kept.iter().enumerate() {
        out.image_ids.push(row.filename.clone());
        out.patient_ids.push(row.patient_id.clone());
        out.labels
            .extend(row.labels.to_vector().iter().map(|&v| v > 0.5));
        out.probabilities.extend(
            summed[r * OUTPUTS..(r + 1) * OUTPUTS]
                .iter()
                .map(|p| p / denominator),
        );
    }
    Ok(kept.len())
}
