//! One loaded model: the fused CPU plan for predictions, the candle
//! network for Grad-CAM, and what the registry says about it (version,
//! thresholds, synthetic or not).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use chexvision_dataset::LABELS;
use chexvision_models::candle_core::{Device, Tensor};
use chexvision_models::{grad_cam, Checkpoint, ChestModel, CpuInference, GradCam};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::InferenceError;

/// Outputs per image: the 14 findings, then abnormal.
pub const OUTPUTS: usize = 15;
/// Threshold of a model without a registry record.
pub const DEFAULT_THRESHOLD: f64 = 0.5;

/// What the registry (or the checkpoint alone) says about a model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelOrigin {
    /// The registry version; derived from the checkpoint when absent.
    pub version: Option<String>,
    pub synthetic: Option<bool>,
    /// By finding name, and `abnormal`.
    pub thresholds: BTreeMap<String, f64>,
    /// The sha256 the checkpoint's bytes must have.
    pub expected_sha256: Option<String>,
}

/// A model's identity, as answers and `/v1/models` report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    pub version: String,
    /// `densenet` or `se_resnet`.
    pub architecture: String,
    /// Trained on synthetic images: its output says nothing clinical.
    pub synthetic: bool,
    pub input_size: u32,
    pub checkpoint_sha256: String,
    /// The 14 findings' thresholds, then abnormal's.
    pub thresholds: Vec<f64>,
    /// Thresholds from a registry record (chosen on validation), or 0.5.
    pub thresholds_from_registry: bool,
    pub loaded_at_unix_ms: u64,
}

/// A model ready to serve.
pub struct LoadedModel {
    pub info: ModelInfo,
    plan: CpuInference,
    /// For Grad-CAM (needs gradients, which the fused plan has not).
    net: ChestModel,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn checkpoint_error(e: impl std::fmt::Display) -> InferenceError {
    InferenceError::Checkpoint(e.to_string())
}

impl LoadedModel {
    /// Verifies and loads a checkpoint, then runs one warm-up inference:
    /// a model that cannot compute never reaches a request. CPU-heavy:
    /// call it off the async threads.
    pub fn load(bytes: &[u8], origin: &ModelOrigin) -> Result<Self, InferenceError> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        if let Some(expected) = &origin.expected_sha256 {
            if !expected.eq_ignore_ascii_case(&sha256) {
                return Err(InferenceError::Checkpoint(format!(
                    "sha256 {sha256} is not the expected {expected}: the checkpoint was changed or damaged"
                )));
            }
        }
        let checkpoint = Checkpoint::from_bytes(bytes, &Device::Cpu).map_err(checkpoint_error)?;
        let labels: Vec<&str> = checkpoint.meta.labels.iter().map(String::as_str).collect();
        if labels != LABELS {
            return Err(InferenceError::Checkpoint(format!(
                "its findings {labels:?} are not this build's {LABELS:?}"
            )));
        }
        let input_size = u32::try_from(checkpoint.meta.input_size)
            .ok()
            .filter(|s| (16..=2048).contains(s))
            .ok_or_else(|| {
                InferenceError::Checkpoint(format!(
                    "input size {} is outside 16..=2048",
                    checkpoint.meta.input_size
                ))
            })?;
        let config = checkpoint.meta.config.clone();
        let plan = CpuInference::new(&config, LABELS.len(), &checkpoint.tensors)
            .map_err(checkpoint_error)?;
        let net = checkpoint
            .inference_model(&Device::Cpu)
            .map_err(checkpoint_error)?;
        let extra = &checkpoint.meta.extra;
        let version = origin.version.clone().unwrap_or_else(|| {
            let run = extra
                .get("run_id")
                .filter(|r| chexvision_registry::validate_version(r).is_ok())
                .map(String::as_str)
                .unwrap_or("checkpoint");
            chexvision_registry::version_of(run, &sha256)
        });
        let synthetic = origin
            .synthetic
            .unwrap_or_else(|| extra.get("synthetic").is_some_and(|s| s == "true"));
        let from_registry = !origin.thresholds.is_empty();
        let thresholds = LABELS
            .iter()
            .copied()
            .chain(["abnormal"])
            .map(|name| {
                origin
                    .thresholds
                    .get(name)
                    .copied()
                    .filter(|t| t.is_finite() && (0.0..=1.0).contains(t))
                    .unwrap_or(DEFAULT_THRESHOLD)
            })
            .collect();
        let model = LoadedModel {
            info: ModelInfo {
                version,
                architecture: config.architecture().to_string(),
                synthetic,
                input_size,
                checkpoint_sha256: sha256,
                thresholds,
                thresholds_from_registry: from_registry,
                loaded_at_unix_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
            },
            plan,
            net,
        };
        let s = input_size as usize;
        let probabilities = model.probabilities(vec![0.0; 3 * s * s], 1)?;
        if probabilities.iter().any(|p| !p.is_finite()) {
            return Err(InferenceError::Checkpoint(
                "the warm-up inference gave non-finite probabilities".into(),
            ));
        }
        Ok(model)
    }

    /// `n × OUTPUTS` probabilities of `n` normalised images (3 × s × s each).
    pub fn probabilities(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<f32>, InferenceError> {
        let s = self.info.input_size as usize;
        let model = |e: chexvision_models::ModelError| InferenceError::Model(e.to_string());
        let candle =
            |e: chexvision_models::candle_core::Error| InferenceError::Model(e.to_string());
        let x = Tensor::from_vec(pixels, (n, 3, s, s), &Device::Cpu).map_err(candle)?;
        self.plan
            .forward(&x)
            .map_err(model)?
            .probabilities()
            .map_err(model)?
            .flatten_all()
            .map_err(candle)?
            .to_vec1::<f32>()
            .map_err(candle)
    }

    /// Grad-CAM of output `output` (0..14 a finding, 14 abnormal) for one
    /// normalised image.
    pub fn grad_cam(&self, pixels: &[f32], output: usize) -> Result<GradCam, InferenceError> {
        let s = self.info.input_size as usize;
        let x = Tensor::from_slice(pixels, (1, 3, s, s), &Device::Cpu)
            .map_err(|e| InferenceError::Model(e.to_string()))?;
        grad_cam(&self.net, &x, output).map_err(|e| InferenceError::Model(e.to_string()))
    }
}
