//! One optimisation step at a time, and validation.

use std::collections::BTreeMap;

use chexvision_models::candle_core::{DType, Device, Tensor};
use chexvision_models::candle_nn::VarMap;
use chexvision_models::{
    autocast, dual_head_loss, trainable_vars, varmap_tensors, ChestModel, CpuInference,
};

use crate::optim::{AdamW, GradAccumulator};
use crate::recipe::{smooth_targets, LrSchedule, RecipeConfig};
use crate::{Result, TrainError};

/// A micro-batch: normalised images and their 0/1 labels.
#[derive(Debug, Clone)]
pub struct Batch {
    /// (B, 3, S, S) f32.
    pub images: Tensor,
    /// (B, findings) 0/1.
    pub findings: Tensor,
    /// (B, 1) 0/1: any finding.
    pub abnormal: Tensor,
}

/// Validation metrics of one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    pub macro_auc: Option<f64>,
    pub per_class_auc: Vec<Option<f64>>,
    pub binary_auc: Option<f64>,
    pub images: usize,
}

/// What [`Trainer::train_micro_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MicroStep {
    pub loss: f32,
    /// An optimiser step happened after this micro-batch.
    pub stepped: bool,
    /// Learning rate of that step (heads).
    pub lr: f64,
    /// Gradient norm before clipping, when a step happened.
    pub grad_norm: Option<f64>,
}

/// Drives a [`ChestModel`] built on `varmap` through the recipe.
pub struct Trainer {
    model: ChestModel,
    varmap: VarMap,
    recipe: RecipeConfig,
    schedule: LrSchedule,
    optimiser: AdamW,
    /// The trainable variables (BatchNorm buffers excluded), listed once.
    vars: Vec<(String, chexvision_models::candle_core::Var)>,
    accumulator: GradAccumulator,
    pos_weight: Tensor,
    step: u64,
    finetuning: bool,
    epoch: u32,
    micro_batches_this_epoch: u64,
    /// Mixed precision: what convolutions and linear layers compute in.
    compute_dtype: Option<DType>,
}

impl Trainer {
    /// `pos_weight` has one entry per finding; `total_steps` is the number
    /// of optimiser steps of the whole run (for the cosine).
    pub fn new(
        model: ChestModel,
        varmap: VarMap,
        recipe: RecipeConfig,
        pos_weight: &[f32],
        total_steps: u64,
    ) -> Result<Self> {
        recipe.validate()?;
        crate::alloc::keep_freed_memory();
        if pos_weight.len() != model.num_findings() {
            return Err(TrainError::Config(format!(
                "pos_weight has {} entries, the model {} findings",
                pos_weight.len(),
                model.num_findings()
            )));
        }
        let device = varmap
            .all_vars()
            .first()
            .map(|v| v.device().clone())
            .unwrap_or(Device::Cpu);
        let compute_dtype = recipe.precision.compute_dtype(&device)?;
        let vars = trainable_vars(&varmap, model.config(), false);
        Ok(Self {
            schedule: LrSchedule {
                peak: recipe.learning_rate,
                warmup_steps: recipe.warmup_steps,
                total_steps,
                min_factor: recipe.min_lr_factor,
            },
            optimiser: AdamW::new(vars.clone(), recipe.weight_decay),
            vars,
            accumulator: GradAccumulator::new(),
            pos_weight: Tensor::new(pos_weight, &device)?,
            model,
            varmap,
            recipe,
            step: 0,
            epoch: 0,
            micro_batches_this_epoch: 0,
            compute_dtype,
            finetuning: false,
        })
    }

    pub fn model(&self) -> &ChestModel {
        &self.model
    }

    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    pub fn optimiser(&mut self) -> &mut AdamW {
        &mut self.optimiser
    }

    /// Optimiser steps taken.
    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn set_step(&mut self, step: u64) {
        self.step = step;
    }

    /// Phase of two-phase fine-tuning for `epoch` (0-based): the backbone
    /// is frozen for the first `frozen_epochs`, then trains at
    /// `backbone_lr_factor` × the rate.
    pub fn begin_epoch(&mut self, epoch: u32) {
        self.epoch = epoch;
        self.micro_batches_this_epoch = 0;
        let frozen = epoch < self.recipe.frozen_epochs;
        self.model.set_backbone_frozen(frozen);
        self.finetuning = self.recipe.frozen_epochs > 0 && !frozen;
    }

    /// Forward, loss, backward on one micro-batch; an optimiser step every
    /// `accumulation_steps` micro-batches.
    pub fn train_micro_batch(&mut self, batch: &Batch) -> Result<MicroStep> {
        let eps = self.recipe.label_smoothing;
        let smooth = |t: &Tensor| -> Result<Tensor> {
            let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Ok(Tensor::from_vec(
                smooth_targets(&values, eps),
                t.dims(),
                t.device(),
            )?)
        };
        // Dropout masks from (seed, epoch, micro-batch): a resumed epoch
        // draws what the uninterrupted one did.
        self.model.set_dropout_seed(
            self.recipe.seed
                ^ (u64::from(self.epoch) << 40)
                ^ self
                    .micro_batches_this_epoch
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        self.micro_batches_this_epoch += 1;
        let out = autocast(self.compute_dtype, || {
            self.model.forward_t(&batch.images, true)
        })?;
        let loss = dual_head_loss(
            &out,
            &smooth(&batch.findings)?,
            &smooth(&batch.abnormal)?,
            Some(&self.pos_weight),
            self.recipe.binary_loss_weight,
        )?;
        let loss_value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if !loss_value.is_finite() {
            return Err(TrainError::NonFiniteLoss(loss_value, self.step));
        }
        let grads = loss.backward()?;
        self.accumulator.add(&grads, &self.vars)?;
        let lr = self.schedule.at(self.step);
        if self.accumulator.micro_batches() >= self.recipe.accumulation_steps {
            let grad_norm = self.apply(lr)?;
            return Ok(MicroStep {
                loss: loss_value,
                stepped: true,
                lr,
                grad_norm: Some(grad_norm),
            });
        }
        Ok(MicroStep {
            loss: loss_value,
            stepped: false,
            lr,
            grad_norm: None,
        })
    }

    /// Steps on what is accumulated (end of an epoch); None if nothing is.
    pub fn flush(&mut self) -> Result<Option<f64>> {
        if self.accumulator.micro_batches() == 0 {
            return Ok(None);
        }
        let lr = self.schedule.at(self.step);
        self.apply(lr).map(Some)
    }

    fn apply(&mut self, lr: f64) -> Result<f64> {
        let (grads, norm) = self.accumulator.finish(self.recipe.grad_clip_norm)?;
        let config = self.model.config().clone();
        let backbone_lr = if self.finetuning {
            lr * self.recipe.backbone_lr_factor
        } else {
            lr
        };
        self.optimiser.step(&grads, &|name: &str| {
            if config.is_backbone_param(name) {
                backbone_lr
            } else {
                lr
            }
        })?;
        self.step += 1;
        Ok(norm)
    }

    /// Validation AUC over `batches`, eval mode. On CPU through the fused
    /// inference path (no autograd graph); elsewhere the model itself.
    pub fn validate<'a>(&self, batches: impl IntoIterator<Item = &'a Batch>) -> Result<Validation> {
        let mut pass = self.validation()?;
        for batch in batches {
            pass.add(batch)?;
        }
        Ok(pass.finish())
    }

    /// A validation pass fed one batch at a time: only the scores are kept,
    /// so memory does not grow with the validation split.
    pub fn validation(&self) -> Result<ValidationPass<'_>> {
        let findings = self.model.num_findings();
        let fused = match self.pos_weight.device() {
            Device::Cpu => Some(CpuInference::new(
                self.model.config(),
                findings,
                &varmap_tensors(&self.varmap),
            )?),
            _ => None,
        };
        Ok(ValidationPass {
            trainer: self,
            fused,
            findings,
            scores: Vec::new(),
            labels: Vec::new(),
            bin_scores: Vec::new(),
            bin_labels: Vec::new(),
        })
    }

    /// Model tensors (running statistics included) and optimiser state,
    /// for a checkpoint.
    pub fn state(&self) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, Tensor>)> {
        Ok((
            varmap_tensors(&self.varmap),
            self.optimiser.state_tensors()?,
        ))
    }
}

/// Scores of a validation pass so far (see [`Trainer::validation`]).
pub struct ValidationPass<'t> {
    trainer: &'t Trainer,
    fused: Option<CpuInference>,
    findings: usize,
    scores: Vec<f64>,
    labels: Vec<bool>,
    bin_scores: Vec<f64>,
    bin_labels: Vec<bool>,
}

impl ValidationPass<'_> {
    /// Scores one batch; the batch may be dropped afterwards.
    pub fn add(&mut self, batch: &Batch) -> Result<()> {
        let out = match &self.fused {
            Some(f) => f.forward(&batch.images)?,
            None => autocast(self.trainer.compute_dtype, || {
                self.trainer.model.forward_t(&batch.images, false)
            })?,
        };
        let probs = out
            .probabilities()?
            .to_dtype(DType::F64)?
            .to_vec2::<f64>()?;
        let truth = batch.findings.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let findings = self.findings;
        for (p, t) in probs.iter().zip(&truth) {
            self.scores.extend_from_slice(&p[..findings]);
            self.labels.extend(t.iter().map(|&v| v >= 0.5));
            self.bin_scores.push(p[findings]);
            self.bin_labels.push(t.iter().any(|&v| v >= 0.5));
        }
        Ok(())
    }

    /// Images scored so far.
    pub fn images(&self) -> usize {
        self.bin_scores.len()
    }

    pub fn finish(self) -> Validation {
        let auc = chexvision_metrics::multilabel_auc(&self.scores, &self.labels, self.findings);
        Validation {
            macro_auc: auc.macro_auc,
            per_class_auc: auc.per_class,
            binary_auc: chexvision_metrics::roc_auc(&self.bin_scores, &self.bin_labels),
            images: self.bin_scores.len(),
        }
    }
}
