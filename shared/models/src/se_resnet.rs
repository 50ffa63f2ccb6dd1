//! SE-ResNet for training from scratch: a ResNet of basic residual blocks
//! (He et al., 2016) with squeeze-excitation in each block (Hu et al.,
//! 2018). Names follow torchvision's ResNet (`conv1`, `bn1`,
//! `layer{i}.{j}.conv1`, `downsample.0/1`) plus `se.fc1/fc2`.
//!
//! ```text
//! conv1 7×7/2 → bn1 → relu → max pool 3×3/2
//! layer{i}.{j}: conv1 3×3 (stride 2 at the start of stages 2..) → bn1 → relu
//!               → conv2 3×3 → bn2 → se → + shortcut → relu
//! se: mean over H,W → fc1 (C/r) → relu → fc2 (C) → sigmoid → scale channels
//! ```

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::layers::{
    conv2d, global_avg_pool, linear_default, BatchNorm2d, Conv, Linear, KAIMING_FAN_OUT,
};
use crate::pool::MaxPool2d;
use crate::{ModelError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeResNetConfig {
    /// Residual blocks per stage.
    pub blocks: Vec<usize>,
    /// Channels per stage.
    pub widths: Vec<usize>,
    pub stem_width: usize,
    /// Squeeze-excitation bottleneck ratio.
    pub se_reduction: usize,
    /// Dropout before the heads (train mode only).
    pub dropout: f32,
}

impl SeResNetConfig {
    /// The from-scratch model of the architecture: stages [3, 4, 6, 3],
    /// widths [64, 128, 256, 512], SE ratio 16, dropout 0.3.
    pub fn standard() -> Self {
        Self {
            blocks: vec![3, 4, 6, 3],
            widths: vec![64, 128, 256, 512],
            stem_width: 64,
            se_reduction: 16,
            dropout: 0.3,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.blocks.is_empty() || self.blocks.len() != self.widths.len() {
            return Err(ModelError::InvalidConfig(format!(
                "SE-ResNet needs as many widths as stages, got blocks {:?} and widths {:?}",
                self.blocks, self.widths
            )));
        }
        if self.blocks.contains(&0)
            || self.widths.contains(&0)
            || self.stem_width == 0
            || self.se_reduction == 0
        {
            return Err(ModelError::InvalidConfig(
                "SE-ResNet blocks, widths, stem_width and se_reduction must be positive".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::InvalidConfig(format!(
                "SE-ResNet dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        Ok(())
    }

    pub fn num_features(&self) -> usize {
        self.widths.last().copied().unwrap_or(self.stem_width)
    }
}

#[derive(Debug, Clone)]
struct SqueezeExcitation {
    fc1: Linear,
    fc2: Linear,
}

impl SqueezeExcitation {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, _, _) = x.dims4()?;
        let s = global_avg_pool(x)?;
        let s = self.fc1.forward(&s)?.relu()?;
        let s = candle_nn::ops::sigmoid(&self.fc2.forward(&s)?)?;
        Ok(x.broadcast_mul(&s.reshape((n, c, 1, 1))?)?)
    }
}

#[derive(Debug, Clone)]
struct BasicBlock {
    conv1: Conv,
    bn1: BatchNorm2d,
    conv2: Conv,
    bn2: BatchNorm2d,
    se: SqueezeExcitation,
    downsample: Option<(Conv, BatchNorm2d)>,
}

impl BasicBlock {
    fn new(
        cin: usize,
        cout: usize,
        stride: usize,
        reduction: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let hidden = (cout / reduction).max(1);
        let downsample = if stride != 1 || cin != cout {
            Some((
                conv2d(
                    cin,
                    cout,
                    1,
                    stride,
                    0,
                    KAIMING_FAN_OUT,
                    vb.pp("downsample.0"),
                )?,
                BatchNorm2d::new(cout, vb.pp("downsample.1"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: conv2d(cin, cout, 3, stride, 1, KAIMING_FAN_OUT, vb.pp("conv1"))?,
            bn1: BatchNorm2d::new(cout, vb.pp("bn1"))?,
            conv2: conv2d(cout, cout, 3, 1, 1, KAIMING_FAN_OUT, vb.pp("conv2"))?,
            bn2: BatchNorm2d::new(cout, vb.pp("bn2"))?,
            se: SqueezeExcitation {
                fc1: linear_default(cout, hidden, vb.pp("se.fc1"))?,
                fc2: linear_default(hidden, cout, vb.pp("se.fc2"))?,
            },
            downsample,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.bn1.forward_t(&self.conv1.forward(x)?, train)?.relu()?;
        let y = self.bn2.forward_t(&self.conv2.forward(&y)?, train)?;
        let y = self.se.forward(&y)?;
        let shortcut = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x)?, train)?,
            None => x.clone(),
        };
        Ok((y + shortcut)?.relu()?)
    }
}

/// The SE-ResNet trunk up to the last feature map.
#[derive(Debug, Clone)]
pub struct SeResNet {
    conv1: Conv,
    bn1: BatchNorm2d,
    pool: MaxPool2d,
    stages: Vec<Vec<BasicBlock>>,
    num_features: usize,
}

impl SeResNet {
    pub fn new(config: &SeResNetConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let conv1 = conv2d(
            3,
            config.stem_width,
            7,
            2,
            3,
            KAIMING_FAN_OUT,
            vb.pp("conv1"),
        )?;
        let bn1 = BatchNorm2d::new(config.stem_width, vb.pp("bn1"))?;
        let mut cin = config.stem_width;
        let mut stages = Vec::new();
        for (i, (&n, &width)) in config.blocks.iter().zip(&config.widths).enumerate() {
            let svb = vb.pp(format!("layer{}", i + 1));
            let mut blocks = Vec::with_capacity(n);
            for j in 0..n {
                let stride = if j == 0 && i > 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(
                    cin,
                    width,
                    stride,
                    config.se_reduction,
                    svb.pp(j.to_string()),
                )?);
                cin = width;
            }
            stages.push(blocks);
        }
        Ok(Self {
            conv1,
            bn1,
            pool: MaxPool2d::new(3, 2, 1),
            stages,
            num_features: cin,
        })
    }

    pub fn num_features(&self) -> usize {
        self.num_features
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.bn1.forward_t(&self.conv1.forward(x)?, train)?.relu()?;
        let mut y = self.pool.forward(&y)?;
        for stage in &self.stages {
            for block in stage {
                y = block.forward_t(&y, train)?;
            }
        }
        Ok(y)
    }
}
