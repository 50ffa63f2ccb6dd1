//! DenseNet as torchvision defines it (Huang et al., 2017), with
//! torchvision's state-dict names, so `densenet121` ImageNet weights load
//! unchanged.
//!
//! ```text
//! features.conv0 7×7/2 → norm0 → relu0 → pool0 3×3/2
//! features.denseblock{i}.denselayer{j}: norm1 → relu → conv1 1×1 (bn_size·k)
//!                                       → norm2 → relu → conv2 3×3 (k)
//! features.transition{i}: norm → relu → conv 1×1 (×compression) → avg 2×2/2
//! features.norm5
//! ```

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::layers::{conv2d, BatchNorm2d, Conv, KAIMING_FAN_IN};
use crate::pool::MaxPool2d;
use crate::{ModelError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseNetConfig {
    pub growth_rate: usize,
    pub block_config: Vec<usize>,
    pub num_init_features: usize,
    pub bn_size: usize,
    /// Share of channels a transition keeps (torchvision: 0.5).
    #[serde(default = "half")]
    pub compression: f64,
}

fn half() -> f64 {
    0.5
}

impl DenseNetConfig {
    /// torchvision `densenet121`.
    pub fn densenet121() -> Self {
        Self {
            growth_rate: 32,
            block_config: vec![6, 12, 24, 16],
            num_init_features: 64,
            bn_size: 4,
            compression: 0.5,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.growth_rate == 0 || self.num_init_features == 0 || self.bn_size == 0 {
            return Err(ModelError::InvalidConfig(
                "DenseNet growth_rate, num_init_features and bn_size must be positive".into(),
            ));
        }
        if self.block_config.is_empty() || self.block_config.contains(&0) {
            return Err(ModelError::InvalidConfig(
                "DenseNet block_config needs at least one block, each with at least one layer"
                    .into(),
            ));
        }
        if !(self.compression > 0.0 && self.compression <= 1.0) {
            return Err(ModelError::InvalidConfig(format!(
                "DenseNet compression must be in (0, 1], got {}",
                self.compression
            )));
        }
        Ok(())
    }

    /// Channels of the pooled feature.
    pub fn num_features(&self) -> usize {
        let mut features = self.num_init_features;
        for (i, &layers) in self.block_config.iter().enumerate() {
            features += layers * self.growth_rate;
            if i + 1 < self.block_config.len() {
                features = (features as f64 * self.compression).floor() as usize;
            }
        }
        features
    }
}

#[derive(Debug, Clone)]
struct DenseLayer {
    norm1: BatchNorm2d,
    conv1: Conv,
    norm2: BatchNorm2d,
    conv2: Conv,
}

impl DenseLayer {
    fn new(cin: usize, growth: usize, bn_size: usize, vb: VarBuilder) -> Result<Self> {
        let mid = bn_size * growth;
        Ok(Self {
            norm1: BatchNorm2d::new(cin, vb.pp("norm1"))?,
            conv1: conv2d(cin, mid, 1, 1, 0, KAIMING_FAN_IN, vb.pp("conv1"))?,
            norm2: BatchNorm2d::new(mid, vb.pp("norm2"))?,
            conv2: conv2d(mid, growth, 3, 1, 1, KAIMING_FAN_IN, vb.pp("conv2"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.norm1.forward_t(x, train)?.relu()?;
        let y = self.conv1.forward(&y)?;
        let y = self.norm2.forward_t(&y, train)?.relu()?;
        Ok(self.conv2.forward(&y)?)
    }
}

#[derive(Debug, Clone)]
struct Transition {
    norm: BatchNorm2d,
    conv: Conv,
}

impl Transition {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.norm.forward_t(x, train)?.relu()?;
        let y = self.conv.forward(&y)?;
        Ok(y.avg_pool2d(2)?)
    }
}

#[derive(Debug, Clone)]
struct DenseBlock {
    layers: Vec<DenseLayer>,
}

impl DenseBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut features = vec![x.clone()];
        for layer in &self.layers {
            let input = Tensor::cat(&features, 1)?;
            features.push(layer.forward_t(&input, train)?);
        }
        Ok(Tensor::cat(&features, 1)?)
    }
}

/// The `features` part of a torchvision DenseNet.
#[derive(Debug, Clone)]
pub struct DenseNet {
    conv0: Conv,
    norm0: BatchNorm2d,
    pool0: MaxPool2d,
    blocks: Vec<DenseBlock>,
    transitions: Vec<Transition>,
    norm5: BatchNorm2d,
    num_features: usize,
}

impl DenseNet {
    /// `vb` is the model root; parameters live under `features.`.
    pub fn new(config: &DenseNetConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let vb = vb.pp("features");
        let k = config.growth_rate;
        let mut channels = config.num_init_features;
        let conv0 = conv2d(3, channels, 7, 2, 3, KAIMING_FAN_IN, vb.pp("conv0"))?;
        let norm0 = BatchNorm2d::new(channels, vb.pp("norm0"))?;
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (i, &num_layers) in config.block_config.iter().enumerate() {
            let block_vb = vb.pp(format!("denseblock{}", i + 1));
            let mut layers = Vec::with_capacity(num_layers);
            for j in 0..num_layers {
                let layer_vb = block_vb.pp(format!("denselayer{}", j + 1));
                layers.push(DenseLayer::new(
                    channels + j * k,
                    k,
                    config.bn_size,
                    layer_vb,
                )?);
            }
            channels += num_layers * k;
            blocks.push(DenseBlock { layers });
            if i + 1 < config.block_config.len() {
                let out = (channels as f64 * config.compression).floor() as usize;
                let tvb = vb.pp(format!("transition{}", i + 1));
                transitions.push(Transition {
                    norm: BatchNorm2d::new(channels, tvb.pp("norm"))?,
                    conv: conv2d(channels, out, 1, 1, 0, KAIMING_FAN_IN, tvb.pp("conv"))?,
                });
                channels = out;
            }
        }
        let norm5 = BatchNorm2d::new(channels, vb.pp("norm5"))?;
        Ok(Self {
            conv0,
            norm0,
            pool0: MaxPool2d::new(3, 2, 1),
            blocks,
            transitions,
            norm5,
            num_features: channels,
        })
    }

    pub fn num_features(&self) -> usize {
        self.num_features
    }

    /// The final feature map after `norm5` and the ReLU torchvision applies
    /// before pooling.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.conv0.forward(x)?;
        let y = self.norm0.forward_t(&y, train)?.relu()?;
        let mut y = self.pool0.forward(&y)?;
        for (i, block) in self.blocks.iter().enumerate() {
            y = block.forward_t(&y, train)?;
            if let Some(transition) = self.transitions.get(i) {
                y = transition.forward_t(&y, train)?;
            }
        }
        Ok(self.norm5.forward_t(&y, train)?.relu()?)
    }
}
