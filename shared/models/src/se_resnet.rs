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

use crate::cpu as fused;
use crate::layers::{
    conv2d, global_avg_pool, linear_default, BatchNorm2d, Conv, Linear, KAIMING_FAN_OUT,
};
use crate::pool::MaxPool2d;
use crate::{ModelError, Result};

/// State-dict names: the one place both the candle network and the fused
/// CPU plan take them from.
pub(crate) mod names {
    pub const STEM_CONV: &str = "conv1";
    pub const STEM_BN: &str = "bn1";
    pub const CONV1: &str = "conv1";
    pub const BN1: &str = "bn1";
    pub const CONV2: &str = "conv2";
    pub const BN2: &str = "bn2";
    pub const SE_FC1: &str = "se.fc1";
    pub const SE_FC2: &str = "se.fc2";
    pub const DOWNSAMPLE_CONV: &str = "downsample.0";
    pub const DOWNSAMPLE_BN: &str = "downsample.1";

    /// Block `block` of stage `stage` (both from 0).
    pub fn block(stage: usize, block: usize) -> String {
        format!("layer{}.{block}", stage + 1)
    }
}

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
    /// The per-(image, channel) gate in (0, 1), (N, C).
    fn gate(&self, x: &Tensor) -> Result<Tensor> {
        let s = global_avg_pool(x)?;
        let s = self.fc1.forward(&s)?.relu()?;
        Ok(candle_nn::ops::sigmoid(&self.fc2.forward(&s)?)?)
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
                    vb.pp(names::DOWNSAMPLE_CONV),
                )?,
                BatchNorm2d::new(cout, vb.pp(names::DOWNSAMPLE_BN))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: conv2d(
                cin,
                cout,
                3,
                stride,
                1,
                KAIMING_FAN_OUT,
                vb.pp(names::CONV1),
            )?,
            bn1: BatchNorm2d::new(cout, vb.pp(names::BN1))?,
            conv2: conv2d(cout, cout, 3, 1, 1, KAIMING_FAN_OUT, vb.pp(names::CONV2))?,
            bn2: BatchNorm2d::new(cout, vb.pp(names::BN2))?,
            se: SqueezeExcitation {
                fc1: linear_default(cout, hidden, vb.pp(names::SE_FC1))?,
                fc2: linear_default(hidden, cout, vb.pp(names::SE_FC2))?,
            },
            downsample,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.bn1.forward_relu_t(&self.conv1.forward(x)?, train)?;
        let y = self.bn2.forward_t(&self.conv2.forward(&y)?, train)?;
        let gate = self.se.gate(&y)?;
        let shortcut = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x)?, train)?,
            None => x.clone(),
        };
        if crate::residual::fast_path_applies(&y) && shortcut.dtype() == y.dtype() {
            return Ok(crate::residual::gated_residual_relu(&y, &gate, &shortcut)?);
        }
        let (n, c, _, _) = y.dims4()?;
        let y = y.broadcast_mul(&gate.reshape((n, c, 1, 1))?)?;
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
            vb.pp(names::STEM_CONV),
        )?;
        let bn1 = BatchNorm2d::new(config.stem_width, vb.pp(names::STEM_BN))?;
        let mut cin = config.stem_width;
        let mut stages = Vec::new();
        for (i, (&n, &width)) in config.blocks.iter().zip(&config.widths).enumerate() {
            let mut blocks = Vec::with_capacity(n);
            for j in 0..n {
                let stride = if j == 0 && i > 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(
                    cin,
                    width,
                    stride,
                    config.se_reduction,
                    vb.pp(names::block(i, j)),
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
        let y = self.bn1.forward_relu_t(&self.conv1.forward(x)?, train)?;
        let mut y = self.pool.forward(&y)?;
        for stage in &self.stages {
            for block in stage {
                y = block.forward_t(&y, train)?;
            }
        }
        Ok(y)
    }
}

// ---------------------------------------------------------------- fused CPU plan

/// The eval-mode network for [`crate::CpuInference`]: BatchNorms folded
/// into their convolutions.
#[derive(Debug, Clone)]
struct SeBlockPlan {
    conv1: fused::Conv,
    conv2: fused::Conv,
    fc1: fused::Linear,
    fc2: fused::Linear,
    downsample: Option<fused::Conv>,
}

#[derive(Debug, Clone)]
pub(crate) struct SeResNetPlan {
    stem: fused::Conv,
    blocks: Vec<SeBlockPlan>,
}

impl SeResNetPlan {
    /// The fused plan of an SE-ResNet from its tensors, by the names the
    /// candle network uses.
    pub(crate) fn new(c: &SeResNetConfig, wts: &fused::Weights) -> Result<Self> {
        c.validate()?;
        let stem = wts.conv_bn(names::STEM_CONV, names::STEM_BN, 3, c.stem_width, 7, 2, 3)?;
        let mut cin = c.stem_width;
        let mut blocks = Vec::new();
        for (i, (&n, &width)) in c.blocks.iter().zip(&c.widths).enumerate() {
            for j in 0..n {
                let p = names::block(i, j);
                let stride = if j == 0 && i > 0 { 2 } else { 1 };
                let hidden = (width / c.se_reduction).max(1);
                let downsample = if stride != 1 || cin != width {
                    Some(wts.conv_bn(
                        &format!("{p}.{}", names::DOWNSAMPLE_CONV),
                        &format!("{p}.{}", names::DOWNSAMPLE_BN),
                        cin,
                        width,
                        1,
                        stride,
                        0,
                    )?)
                } else {
                    None
                };
                blocks.push(SeBlockPlan {
                    conv1: wts.conv_bn(
                        &format!("{p}.{}", names::CONV1),
                        &format!("{p}.{}", names::BN1),
                        cin,
                        width,
                        3,
                        stride,
                        1,
                    )?,
                    conv2: wts.conv_bn(
                        &format!("{p}.{}", names::CONV2),
                        &format!("{p}.{}", names::BN2),
                        width,
                        width,
                        3,
                        1,
                        1,
                    )?,
                    fc1: wts.linear(&format!("{p}.{}", names::SE_FC1), width, hidden)?,
                    fc2: wts.linear(&format!("{p}.{}", names::SE_FC2), hidden, width)?,
                    downsample,
                });
                cin = width;
            }
        }
        Ok(SeResNetPlan { stem, blocks })
    }

    pub(crate) fn features(
        &self,
        img: &[f32],
        h: usize,
        w: usize,
        threads: usize,
        s: &mut fused::Scratch,
    ) -> Vec<f32> {
        let (sh, sw) = self.stem.out_dims(h, w);
        let stem_out = fused::resize(&mut s.a, self.stem.cout * sh * sw);
        self.stem.run(img, h, w, stem_out, true, threads);
        let (mut h, mut w) = (fused::out_len(sh, 3, 2, 1), fused::out_len(sw, 3, 2, 1));
        let mut x = vec![0f32; self.stem.cout * h * w];
        fused::max_pool_3x3_s2_p1(
            &s.a[..self.stem.cout * sh * sw],
            self.stem.cout,
            sh,
            sw,
            &mut x,
        );
        let mut channels = self.stem.cout;
        for block in &self.blocks {
            let (ho, wo) = block.conv1.out_dims(h, w);
            let c = block.conv1.cout;
            let t1 = fused::resize(&mut s.a, c * ho * wo);
            block.conv1.run(&x, h, w, t1, true, threads);
            let mut out = vec![0f32; c * ho * wo];
            block
                .conv2
                .run(&s.a[..c * ho * wo], ho, wo, &mut out, false, threads);
            // Squeeze-excitation.
            let squeezed: Vec<f32> = out
                .chunks(ho * wo)
                .map(|p| p.iter().sum::<f32>() / (ho * wo) as f32)
                .collect();
            let hidden: Vec<f32> = block
                .fc1
                .apply(&squeezed)
                .into_iter()
                .map(|v| v.max(0.0))
                .collect();
            let gates: Vec<f32> = block
                .fc2
                .apply(&hidden)
                .into_iter()
                .map(|v| 1.0 / (1.0 + (-v).exp()))
                .collect();
            // Shortcut, then out = relu(out·gate + shortcut).
            let shortcut: &[f32] = match &block.downsample {
                Some(conv) => {
                    let sc = fused::resize(&mut s.c, c * ho * wo);
                    conv.run(&x, h, w, sc, false, threads);
                    &s.c[..c * ho * wo]
                }
                None => &x[..channels * h * w],
            };
            for ((plane, sc), g) in out
                .chunks_mut(ho * wo)
                .zip(shortcut.chunks(ho * wo))
                .zip(&gates)
            {
                for (o, &v) in plane.iter_mut().zip(sc) {
                    *o = (*o * g + v).max(0.0);
                }
            }
            x = out;
            channels = c;
            (h, w) = (ho, wo);
        }
        x.chunks(h * w)
            .map(|p| p.iter().sum::<f32>() / (h * w) as f32)
            .collect()
    }
}
