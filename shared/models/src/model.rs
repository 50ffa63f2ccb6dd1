//! One network with two heads: 14 finding logits and one abnormal logit
//! from the same pooled feature, in one forward pass.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::densenet::{DenseNet, DenseNetConfig};
use crate::layers::{check_input, global_avg_pool, linear, Linear};
use crate::se_resnet::{SeResNet, SeResNetConfig};
use crate::{ModelError, Result};

/// State-dict names of the two heads (the candle model's and the fused CPU
/// plan's).
pub(crate) const MULTILABEL_HEAD: &str = "heads.multilabel";
pub(crate) const BINARY_HEAD: &str = "heads.binary";

/// Which network, and its shape. Serialised as
/// `{"architecture": "densenet", ...}` / `{"architecture": "se_resnet", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "architecture", rename_all = "snake_case")]
pub enum ModelConfig {
    Densenet(DenseNetConfig),
    SeResnet(SeResNetConfig),
}

impl ModelConfig {
    pub fn densenet121() -> Self {
        Self::Densenet(DenseNetConfig::densenet121())
    }

    pub fn se_resnet() -> Self {
        Self::SeResnet(SeResNetConfig::standard())
    }

    pub fn architecture(&self) -> &'static str {
        match self {
            Self::Densenet(_) => "densenet",
            Self::SeResnet(_) => "se_resnet",
        }
    }

    pub fn num_features(&self) -> usize {
        match self {
            Self::Densenet(c) => c.num_features(),
            Self::SeResnet(c) => c.num_features(),
        }
    }

    /// Prefix of the backbone's parameters (what two-phase fine-tuning
    /// freezes): `features.` for DenseNet; everything but the heads for
    /// SE-ResNet.
    pub fn is_backbone_param(&self, name: &str) -> bool {
        match self {
            Self::Densenet(_) => name.starts_with("features."),
            Self::SeResnet(_) => !name.starts_with("heads."),
        }
    }
}

/// Logits of one forward pass.
#[derive(Debug, Clone)]
pub struct DualLogits {
    /// (batch, findings): one logit per finding, multi-label.
    pub findings: Tensor,
    /// (batch, 1): normal (0) / abnormal (1).
    pub abnormal: Tensor,
}

impl DualLogits {
    /// (batch, findings + 1) probabilities: the findings, then abnormal.
    pub fn probabilities(&self) -> Result<Tensor> {
        let logits = Tensor::cat(&[&self.findings, &self.abnormal], 1)?;
        Ok(candle_nn::ops::sigmoid(&logits)?)
    }
}

#[derive(Debug, Clone)]
enum Backbone {
    DenseNet(DenseNet),
    SeResNet(SeResNet),
}

#[derive(Debug, Clone)]
struct DualHeads {
    multilabel: Linear,
    binary: Linear,
}

/// A chest X-ray model: a backbone, global average pooling, optional
/// dropout and the two heads (`heads.multilabel`, `heads.binary`).
#[derive(Debug)]
pub struct ChestModel {
    config: ModelConfig,
    num_findings: usize,
    backbone: Backbone,
    heads: DualHeads,
    dropout: f32,
    backbone_frozen: AtomicBool,
    /// Dropout masks come from ChaCha streams of (seed, draw), not from
    /// candle's generator, which cannot be seeded on the CPU.
    dropout_seed: AtomicU64,
    dropout_draws: AtomicU64,
}

impl ChestModel {
    /// Builds the model from `vb`: a `VarMap`-backed builder creates and
    /// initialises variables (training), a tensor-backed one loads weights
    /// as plain tensors (inference: no autograd graph is recorded).
    pub fn new(config: &ModelConfig, num_findings: usize, vb: VarBuilder) -> Result<Self> {
        if num_findings == 0 {
            return Err(ModelError::InvalidConfig(
                "a model needs at least one finding".into(),
            ));
        }
        let (backbone, dropout) = match config {
            ModelConfig::Densenet(c) => (Backbone::DenseNet(DenseNet::new(c, vb.clone())?), 0.0),
            ModelConfig::SeResnet(c) => {
                (Backbone::SeResNet(SeResNet::new(c, vb.clone())?), c.dropout)
            }
        };
        let features = config.num_features();
        let heads = DualHeads {
            multilabel: linear(features, num_findings, vb.pp(MULTILABEL_HEAD))?,
            binary: linear(features, 1, vb.pp(BINARY_HEAD))?,
        };
        Ok(Self {
            config: config.clone(),
            num_findings,
            backbone,
            heads,
            dropout,
            backbone_frozen: AtomicBool::new(false),
            dropout_seed: AtomicU64::new(0),
            dropout_draws: AtomicU64::new(0),
        })
    }

    /// A fresh model with initialised variables in a new `VarMap`.
    pub fn init(
        config: &ModelConfig,
        num_findings: usize,
        device: &Device,
    ) -> Result<(Self, VarMap)> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let model = Self::new(config, num_findings, vb)?;
        Ok((model, varmap))
    }

    /// Like [`Self::init`], but every variable drawn from `seed`
    /// ([`crate::reinit_seeded`]): the same seed gives the same model.
    pub fn init_seeded(
        config: &ModelConfig,
        num_findings: usize,
        device: &Device,
        seed: u64,
    ) -> Result<(Self, VarMap)> {
        let (model, varmap) = Self::init(config, num_findings, device)?;
        crate::reinit_seeded(&varmap, config, seed)?;
        Ok((model, varmap))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn num_findings(&self) -> usize {
        self.num_findings
    }

    /// Outputs a Grad-CAM can explain: the findings, then abnormal.
    pub fn num_outputs(&self) -> usize {
        self.num_findings + 1
    }

    /// While frozen the backbone's output is detached: no gradient reaches
    /// its parameters and the backward pass stops at the heads.
    pub fn set_backbone_frozen(&self, frozen: bool) {
        self.backbone_frozen.store(frozen, Ordering::Relaxed);
    }

    pub fn backbone_frozen(&self) -> bool {
        self.backbone_frozen.load(Ordering::Relaxed)
    }

    /// The last feature map (batch, C, h, w), after the final activation.
    pub fn feature_map(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        check_input(x)?;
        let f = match &self.backbone {
            Backbone::DenseNet(net) => net.forward_t(x, train)?,
            Backbone::SeResNet(net) => net.forward_t(x, train)?,
        };
        Ok(if self.backbone_frozen() {
            f.detach()
        } else {
            f
        })
    }

    /// Restarts the dropout masks from `seed`: the train-mode passes that
    /// follow draw the same masks whenever the same seed is set (a trainer
    /// sets one per micro-batch, so a resumed run sees the masks an
    /// uninterrupted one did).
    pub fn set_dropout_seed(&self, seed: u64) {
        self.dropout_seed.store(seed, Ordering::Relaxed);
        self.dropout_draws.store(0, Ordering::Relaxed);
    }

    /// Inverted dropout: zero with probability p, scale the rest by 1/(1-p).
    fn dropout_mask(&self, like: &Tensor) -> Result<Tensor> {
        use rand::{Rng, SeedableRng};
        let draw = self.dropout_draws.fetch_add(1, Ordering::Relaxed);
        let seed = self.dropout_seed.load(Ordering::Relaxed);
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&draw.to_le_bytes());
        key[16..24].copy_from_slice(b"dropout\0");
        let mut rng = rand_chacha::ChaCha8Rng::from_seed(key);
        let keep = 1.0 - self.dropout;
        let scale = 1.0 / keep;
        let mask: Vec<f32> = (0..like.elem_count())
            .map(|_| {
                if rng.random::<f32>() < keep {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Tensor::from_vec(mask, like.dims(), like.device())?.to_dtype(like.dtype())?)
    }

    /// Pooling, dropout (train mode) and the heads on a feature map.
    pub fn heads_from_feature_map(&self, fmap: &Tensor, train: bool) -> Result<DualLogits> {
        let mut pooled = global_avg_pool(fmap)?;
        if train && self.dropout > 0.0 {
            pooled = pooled.mul(&self.dropout_mask(&pooled)?)?;
        }
        Ok(DualLogits {
            findings: self.heads.multilabel.forward(&pooled)?,
            abnormal: self.heads.binary.forward(&pooled)?,
        })
    }

    /// One forward pass; `train` selects batch statistics (and updates the
    /// running ones) and dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<DualLogits> {
        let fmap = self.feature_map(x, train)?;
        self.heads_from_feature_map(&fmap, train)
    }
}

/// BatchNorm running statistics and counters: saved with the weights, never
/// optimised.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean")
        || name.ends_with(".running_var")
        || name.ends_with(".num_batches_tracked")
}

/// The variables an optimiser should update: every parameter except the
/// BatchNorm buffers, and except the backbone when it is frozen. Sorted by
/// name so an optimiser's state has a stable order.
pub fn trainable_vars(
    varmap: &VarMap,
    config: &ModelConfig,
    freeze_backbone: bool,
) -> Vec<(String, Var)> {
    let data = varmap
        .data()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(name, _)| !is_buffer(name))
        .filter(|(name, _)| !(freeze_backbone && config.is_backbone_param(name)))
        .map(|(name, var)| (name.clone(), var.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Number of trainable parameters (BatchNorm buffers excluded).
pub fn parameter_count(varmap: &VarMap) -> usize {
    let data = varmap
        .data()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    data.iter()
        .filter(|(name, _)| !is_buffer(name))
        .map(|(_, var)| var.elem_count())
        .sum()
}
