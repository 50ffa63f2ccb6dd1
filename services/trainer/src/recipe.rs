//! The recipe's numbers: schedule, targets, class weights, early stopping.

use chexvision_models::candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

/// Settings of one training run's recipe (the `recipe:` section of a
/// training config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecipeConfig {
    pub epochs: u32,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Micro-batches summed into one optimiser step (24 × 4 = 96).
    pub accumulation_steps: usize,
    pub learning_rate: f64,
    /// Learning rate of the backbone after a frozen phase, as a factor of
    /// `learning_rate` (two-phase fine-tuning).
    pub backbone_lr_factor: f64,
    /// Epochs with the backbone frozen (0: none).
    pub frozen_epochs: u32,
    pub weight_decay: f64,
    /// Optimiser steps of linear warm-up.
    pub warmup_steps: u64,
    /// Cosine floor, as a factor of the peak rate.
    pub min_lr_factor: f64,
    pub grad_clip_norm: f64,
    /// ε: positives → 1 − ε, negatives → ε / 2.
    pub label_smoothing: f64,
    pub binary_loss_weight: f64,
    /// Epochs without a better validation macro AUC before stopping.
    pub patience: u32,
    pub seed: u64,
    /// Compute precision of convolutions and linear layers (mixed
    /// precision; the variables, BatchNorm and the loss stay f32).
    pub precision: Precision,
}

/// `auto`: bf16 on a GPU, f32 on the CPU (candle's CPU matmul has no bf16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Auto,
    F32,
    Bf16,
}

impl Precision {
    /// The dtype to autocast to on `device`; `None`: full precision.
    pub fn compute_dtype(self, device: &Device) -> Result<Option<DType>> {
        match (self, device) {
            (Precision::F32, _) | (Precision::Auto, Device::Cpu) => Ok(None),
            (Precision::Auto | Precision::Bf16, Device::Cuda(_) | Device::Metal(_)) => {
                Ok(Some(DType::BF16))
            }
            (Precision::Bf16, Device::Cpu) => Err(TrainError::Config(
                "precision bf16 needs a GPU: candle's CPU matmul has no bf16; use auto or f32"
                    .into(),
            )),
        }
    }
}

impl Default for RecipeConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            batch_size: 24,
            accumulation_steps: 4,
            learning_rate: 3e-4,
            backbone_lr_factor: 0.1,
            frozen_epochs: 0,
            weight_decay: 1e-4,
            warmup_steps: 500,
            min_lr_factor: 0.01,
            grad_clip_norm: 1.0,
            label_smoothing: 0.1,
            binary_loss_weight: 0.5,
            patience: 15,
            seed: 42,
            precision: Precision::Auto,
        }
    }
}

impl RecipeConfig {
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(TrainError::Config(m));
        if self.epochs == 0 || self.batch_size == 0 || self.accumulation_steps == 0 {
            return fail("epochs, batch_size and accumulation_steps must be at least 1".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return fail(format!(
                "learning_rate must be positive, got {}",
                self.learning_rate
            ));
        }
        if !(0.0..=1.0).contains(&self.backbone_lr_factor)
            || !(0.0..=1.0).contains(&self.min_lr_factor)
        {
            return fail("backbone_lr_factor and min_lr_factor must be in [0, 1]".into());
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return fail(format!(
                "label_smoothing must be in [0, 0.5), got {}",
                self.label_smoothing
            ));
        }
        // `x >= 0.0` is false for NaN, which `x < 0.0` would let through.
        for (name, value) in [
            ("weight_decay", self.weight_decay),
            ("grad_clip_norm", self.grad_clip_norm),
            ("binary_loss_weight", self.binary_loss_weight),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return fail(format!("{name} must be a finite number >= 0, got {value}"));
            }
        }
        Ok(())
    }
}

/// Linear warm-up from 0 to the peak over `warmup_steps`, then a cosine
/// from the peak down to `peak · min_factor` at `total_steps`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub peak: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub min_factor: f64,
}

impl LrSchedule {
    /// Learning rate of optimiser step `step` (0-based).
    pub fn at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let floor = self.peak * self.min_factor;
        floor + (self.peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// Label smoothing as the architecture defines it: positives → 1 − ε,
/// negatives → ε / 2 (ε = 0.1: 0.9 and 0.05).
pub fn smooth_targets(targets: &[f32], epsilon: f64) -> Vec<f32> {
    let (pos, neg) = ((1.0 - epsilon) as f32, (epsilon / 2.0) as f32);
    targets
        .iter()
        .map(|&t| if t >= 0.5 { pos } else { neg })
        .collect()
}

/// Per-class `pos_weight` = negatives / positives in the training split;
/// a class without positives gets 1 (it contributes no positive term).
pub fn pos_weight_from_counts(positives: &[u64], total: u64) -> Vec<f32> {
    positives
        .iter()
        .map(|&p| {
            if p == 0 || p >= total {
                1.0
            } else {
                (total - p) as f32 / p as f32
            }
        })
        .collect()
}

/// Keeps the best validation macro AUC and counts epochs without a better
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    pub patience: u32,
    pub best: Option<f64>,
    pub best_epoch: Option<u32>,
    pub epochs_without_improvement: u32,
}

impl EarlyStopping {
    pub fn new(patience: u32) -> Self {
        Self {
            patience,
            best: None,
            best_epoch: None,
            epochs_without_improvement: 0,
        }
    }

    /// Records an epoch's validation AUC; true when it is a new best (save
    /// `best.safetensors`). An undefined AUC (NaN) never improves.
    pub fn observe(&mut self, epoch: u32, auc: f64) -> bool {
        let better = auc.is_finite() && self.best.is_none_or(|b| auc > b);
        if better {
            self.best = Some(auc);
            self.best_epoch = Some(epoch);
            self.epochs_without_improvement = 0;
        } else {
            self.epochs_without_improvement += 1;
        }
        better
    }

    pub fn should_stop(&self) -> bool {
        self.epochs_without_improvement >= self.patience
    }
}
