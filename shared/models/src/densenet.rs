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

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::cpu as fused;
use crate::dense_block::{dense_block_train, BlockShape};
use crate::layers::{
    avg_pool_2x2, conv2d, values_per_channel, BatchNorm2d, Conv, BN_EPS, KAIMING_FAN_IN,
};
use crate::pool::MaxPool2d;
use crate::{ModelError, Result};

/// torchvision's state-dict names: the one place both the candle network
/// and the fused CPU plan take them from.
pub(crate) mod names {
    pub const CONV0: &str = "features.conv0";
    pub const NORM0: &str = "features.norm0";
    pub const NORM5: &str = "features.norm5";
    pub const NORM1: &str = "norm1";
    pub const CONV1: &str = "conv1";
    pub const NORM2: &str = "norm2";
    pub const CONV2: &str = "conv2";
    pub const TRANSITION_NORM: &str = "norm";
    pub const TRANSITION_CONV: &str = "conv";

    /// Layer `layer` of block `block` (both from 0).
    pub fn layer(block: usize, layer: usize) -> String {
        format!("features.denseblock{}.denselayer{}", block + 1, layer + 1)
    }

    /// The transition after block `block` (from 0).
    pub fn transition(block: usize) -> String {
        format!("features.transition{}", block + 1)
    }
}

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
            norm1: BatchNorm2d::new(cin, vb.pp(names::NORM1))?,
            conv1: conv2d(cin, mid, 1, 1, 0, KAIMING_FAN_IN, vb.pp(names::CONV1))?,
            norm2: BatchNorm2d::new(mid, vb.pp(names::NORM2))?,
            conv2: conv2d(mid, growth, 3, 1, 1, KAIMING_FAN_IN, vb.pp(names::CONV2))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.norm1.forward_relu_t(x, train)?;
        let y = self.conv1.forward(&y)?;
        let y = self.norm2.forward_relu_t(&y, train)?;
        Ok(self.conv2.forward(&y)?)
    }
}

#[derive(Debug, Clone)]
struct Transition {
    norm: BatchNorm2d,
    conv: Conv,
}

impl Transition {
    /// torchvision convolves, then pools; both are linear and the
    /// convolution is 1×1, so pooling first gives the same result with a
    /// quarter of the convolution's work (forward and backward).
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = avg_pool_2x2(&self.norm.forward_relu_t(x, train)?)?;
        Ok(self.conv.forward(&y)?)
    }
}

#[derive(Debug, Clone)]
struct DenseBlock {
    layers: Vec<DenseLayer>,
}

impl DenseBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train
            && x.device().is_cpu()
            && x.dtype() == DType::F32
            && crate::layers::autocast_dtype().is_none()
        {
            return self.forward_train_fused(x);
        }
        self.forward_composed(x, train)
    }

    /// Train mode as one op with its own backward (`dense_block.rs`).
    fn forward_train_fused(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c0, _, _) = x.dims4()?;
        let count = values_per_channel(x)?;
        let Some(first) = self.layers.first() else {
            return Ok(x.clone());
        };
        let shape = BlockShape {
            c0,
            layers: self.layers.len(),
            growth: first.conv2.weight().dim(0)?,
            mid: first.conv1.weight().dim(0)?,
        };
        let mut packed = Vec::with_capacity(6 * self.layers.len());
        for layer in &self.layers {
            let (g1, b1) = layer.norm1.affine_params();
            let (g2, b2) = layer.norm2.affine_params();
            packed.extend([
                g1.clone(),
                b1.clone(),
                layer.conv1.weight().flatten_all()?,
                g2.clone(),
                b2.clone(),
                layer.conv2.weight().flatten_all()?,
            ]);
        }
        let params = Tensor::cat(&packed, 0)?;
        let (y, stats) = dense_block_train(x, &params, shape, BN_EPS)?;
        let (mean, var) = &stats.buffer;
        for (j, (layer, (z_mean, z_var))) in self.layers.iter().zip(&stats.bottleneck).enumerate() {
            let cin = c0 + j * shape.growth;
            layer
                .norm1
                .record_batch_stats(&mean[..cin], &var[..cin], count)?;
            layer.norm2.record_batch_stats(z_mean, z_var, count)?;
        }
        Ok(y)
    }

    /// Concatenation and the layers' own forward passes: every device,
    /// dtype and mode (and the reference the fused op is tested against).
    pub(crate) fn forward_composed(&self, x: &Tensor, train: bool) -> Result<Tensor> {
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
        let k = config.growth_rate;
        let mut channels = config.num_init_features;
        let conv0 = conv2d(3, channels, 7, 2, 3, KAIMING_FAN_IN, vb.pp(names::CONV0))?;
        let norm0 = BatchNorm2d::new(channels, vb.pp(names::NORM0))?;
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (i, &num_layers) in config.block_config.iter().enumerate() {
            let mut layers = Vec::with_capacity(num_layers);
            for j in 0..num_layers {
                let layer_vb = vb.pp(names::layer(i, j));
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
                let tvb = vb.pp(names::transition(i));
                transitions.push(Transition {
                    norm: BatchNorm2d::new(channels, tvb.pp(names::TRANSITION_NORM))?,
                    conv: conv2d(
                        channels,
                        out,
                        1,
                        1,
                        0,
                        KAIMING_FAN_IN,
                        tvb.pp(names::TRANSITION_CONV),
                    )?,
                });
                channels = out;
            }
        }
        let norm5 = BatchNorm2d::new(channels, vb.pp(names::NORM5))?;
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
        let y = self.norm0.forward_relu_t(&y, train)?;
        let mut y = self.pool0.forward(&y)?;
        for (i, block) in self.blocks.iter().enumerate() {
            y = block.forward_t(&y, train)?;
            if let Some(transition) = self.transitions.get(i) {
                y = transition.forward_t(&y, train)?;
            }
        }
        self.norm5.forward_relu_t(&y, train)
    }
}

// ---------------------------------------------------------------- fused CPU plan

/// The eval-mode network for [`crate::CpuInference`]: BatchNorms folded,
/// one buffer per block instead of concatenation, transitions pooled first.
#[derive(Debug, Clone)]
struct DenseLayerPlan {
    norm1: fused::Affine,
    /// conv1 with norm2 folded; ReLU after.
    conv1: fused::Conv,
    conv2: fused::Conv,
}

#[derive(Debug, Clone)]
pub(crate) struct DenseNetPlan {
    stem: fused::Conv,
    blocks: Vec<Vec<DenseLayerPlan>>,
    /// (norm, 1×1 conv) per transition.
    transitions: Vec<(fused::Affine, fused::Conv)>,
    norm5: fused::Affine,
    growth: usize,
    init_features: usize,
}

impl DenseNetPlan {
    /// The fused plan of a DenseNet from its tensors, by the names the
    /// candle network uses.
    pub(crate) fn new(c: &DenseNetConfig, wts: &fused::Weights) -> Result<Self> {
        c.validate()?;
        let k = c.growth_rate;
        let mid = c.bn_size * k;
        let stem = wts.conv_bn(names::CONV0, names::NORM0, 3, c.num_init_features, 7, 2, 3)?;
        let mut channels = c.num_init_features;
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        for (i, &layers) in c.block_config.iter().enumerate() {
            let mut block = Vec::with_capacity(layers);
            for j in 0..layers {
                let p = names::layer(i, j);
                let cin = channels + j * k;
                block.push(DenseLayerPlan {
                    norm1: wts.affine(&format!("{p}.{}", names::NORM1), cin)?,
                    conv1: wts.conv_bn(
                        &format!("{p}.{}", names::CONV1),
                        &format!("{p}.{}", names::NORM2),
                        cin,
                        mid,
                        1,
                        1,
                        0,
                    )?,
                    conv2: wts.conv(&format!("{p}.{}", names::CONV2), mid, k, 3, 1, 1)?,
                });
            }
            channels += layers * k;
            blocks.push(block);
            if i + 1 < c.block_config.len() {
                let out = (channels as f64 * c.compression).floor() as usize;
                let p = names::transition(i);
                transitions.push((
                    wts.affine(&format!("{p}.{}", names::TRANSITION_NORM), channels)?,
                    wts.conv(
                        &format!("{p}.{}", names::TRANSITION_CONV),
                        channels,
                        out,
                        1,
                        1,
                        0,
                    )?,
                ));
                channels = out;
            }
        }
        Ok(DenseNetPlan {
            stem,
            blocks,
            transitions,
            norm5: wts.affine(names::NORM5, channels)?,
            growth: k,
            init_features: c.num_init_features,
        })
    }

    pub(crate) fn features(
        &self,
        img: &[f32],
        h: usize,
        w: usize,
        threads: usize,
        s: &mut fused::Scratch,
    ) -> Vec<f32> {
        // Stem: conv0 + norm0 + ReLU, then max pool into the first block.
        let (sh, sw) = self.stem.out_dims(h, w);
        let stem_out = fused::resize(&mut s.a, self.stem.cout * sh * sw);
        self.stem.run(img, h, w, stem_out, true, threads);
        let (mut h, mut w) = (fused::out_len(sh, 3, 2, 1), fused::out_len(sw, 3, 2, 1));
        let first_total = self.init_features + self.blocks[0].len() * self.growth;
        let mut block_buf = vec![0f32; first_total * h * w];
        fused::max_pool_3x3_s2_p1(
            &s.a[..self.stem.cout * sh * sw],
            self.stem.cout,
            sh,
            sw,
            &mut block_buf,
        );
        let mut channels = self.init_features;

        for (i, block) in self.blocks.iter().enumerate() {
            let hw = h * w;
            for layer in block {
                let (head, tail) = block_buf.split_at_mut(channels * hw);
                let normed = fused::resize(&mut s.a, channels * hw);
                layer.norm1.relu_into(head, hw, normed, threads);
                let mid = fused::resize(&mut s.b, layer.conv1.cout * hw);
                layer.conv1.run(normed, h, w, mid, true, threads);
                let new = &mut tail[..self.growth * hw];
                layer
                    .conv2
                    .run(&s.b[..layer.conv1.cout * hw], h, w, new, false, threads);
                channels += self.growth;
            }
            if let Some((norm, conv)) = self.transitions.get(i) {
                let (ph, pw) = (h / 2, w / 2);
                let pooled = fused::resize(&mut s.a, channels * ph * pw);
                norm.relu_avg_pool2_into(&block_buf, h, w, pooled);
                let next_total = conv.cout + self.blocks[i + 1].len() * self.growth;
                let mut next = vec![0f32; next_total * ph * pw];
                conv.run(
                    &s.a[..channels * ph * pw],
                    ph,
                    pw,
                    &mut next[..conv.cout * ph * pw],
                    false,
                    threads,
                );
                block_buf = next;
                channels = conv.cout;
                (h, w) = (ph, pw);
            }
        }
        self.norm5.relu_mean(&block_buf[..channels * h * w], h * w)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::test_util::{dot, flat, max_rel_diff, random};

    /// A dense block of `layers` layers on `c0` input channels with every
    /// parameter and running statistic random (seeded), and its VarMap.
    fn block(c0: usize, layers: usize, growth: usize, bn_size: usize) -> (DenseBlock, VarMap) {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let layers = (0..layers)
            .map(|j| DenseLayer::new(c0 + j * growth, growth, bn_size, vb.pp(format!("l{j}"))))
            .collect::<Result<Vec<_>>>()
            .unwrap();
        // The map is a HashMap: sorted names give every map the same values.
        let mut names: Vec<String> = map.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        for (i, name) in names.iter().enumerate() {
            let var = map.data().lock().unwrap()[name].clone();
            let (lo, hi) = match name.rsplit('.').next() {
                Some("running_var") => (0.5, 2.0),
                Some("weight") if name.contains("norm") => (0.5, 1.5),
                Some("weight") => (-0.3, 0.3),
                _ => (-0.5, 0.5),
            };
            var.set(&random(var.dims(), 100 + i as u64, lo, hi))
                .unwrap();
        }
        (DenseBlock { layers }, map)
    }

    fn vars(map: &VarMap) -> Vec<(String, Var)> {
        let data = map.data().lock().unwrap();
        let mut vars: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// The fused train-mode block equals the composed one (concatenation,
    /// BatchNorm, convolutions): output, every running statistic, and the
    /// gradients of the input and of every parameter, for batches larger
    /// and smaller than the thread count and odd image sizes.
    #[test]
    fn fused_block_matches_the_composed_block() {
        for (i, &(n, c0, layers, growth, bn_size, h, w)) in [
            (4, 5, 3, 3, 2, 6, 7),
            (1, 4, 2, 4, 3, 9, 5),
            (3, 8, 4, 2, 4, 4, 4),
        ]
        .iter()
        .enumerate()
        {
            let (fused, fused_map) = block(c0, layers, growth, bn_size);
            let (composed, composed_map) = block(c0, layers, growth, bn_size);
            let x = Var::from_tensor(&random(&[n, c0, h, w], i as u64, -1.0, 2.0)).unwrap();
            let upstream = random(&[n, c0 + layers * growth, h, w], 50 + i as u64, -1.0, 1.0);

            let ours = fused.forward_train_fused(&x).unwrap();
            let theirs = composed.forward_composed(&x, true).unwrap();
            let d = max_rel_diff(&ours, &theirs);
            assert!(d < 1e-5, "case {i}: forward differs by {d}");

            let g_ours = crate::test_util::grads_of(&ours, &upstream);
            let g_theirs = crate::test_util::grads_of(&theirs, &upstream);
            let d = max_rel_diff(g_ours.get(&x).unwrap(), g_theirs.get(&x).unwrap());
            assert!(d < 1e-4, "case {i}: input gradient differs by {d}");
            let theirs_vars: std::collections::BTreeMap<_, _> =
                vars(&composed_map).into_iter().collect();
            for (name, var) in vars(&fused_map) {
                let other = &theirs_vars[&name];
                if name.contains("running") {
                    let d = max_rel_diff(var.as_tensor(), other.as_tensor());
                    assert!(d < 1e-5, "case {i}: {name} differs by {d}");
                } else {
                    let a = g_ours
                        .get(&var)
                        .unwrap_or_else(|| panic!("no gradient for {name}"));
                    let b = g_theirs.get(other).expect("composed gradient");
                    let d = max_rel_diff(a, b);
                    assert!(d < 1e-4, "case {i}: gradient of {name} differs by {d}");
                }
            }
        }
    }

    /// The fused block's input gradient is the derivative of its forward:
    /// ⟨∂L/∂x, v⟩ matches the central difference of L(x + t·v).
    #[test]
    fn fused_block_gradient_matches_central_differences() {
        let (b, _map) = block(3, 2, 2, 2);
        let x = Var::from_tensor(&random(&[2, 3, 5, 5], 7, -1.0, 1.0)).unwrap();
        let u = random(&[2, 7, 5, 5], 8, -1.0, 1.0);
        let v = random(&[2, 3, 5, 5], 9, -1.0, 1.0);
        let loss = |x: &Tensor| dot(&b.forward_train_fused(x).unwrap(), &u);
        let y = b.forward_train_fused(&x).unwrap();
        let grads = crate::test_util::grads_of(&y, &u);
        let analytic = dot(grads.get(&x).unwrap(), &v);
        let t = 1e-3;
        let xs = x.as_tensor();
        let fd = (loss(&(xs + (&v * t).unwrap()).unwrap())
            - loss(&(xs - (&v * t).unwrap()).unwrap()))
            / (2.0 * t);
        // Loose: ReLU kinks inside ±t·v and f32 rounding move the quotient
        // by a few parts in a thousand; the comparison with the composed
        // block above is the tight check, this one needs no reference.
        let err = (analytic - fd).abs() / fd.abs().max(1.0);
        assert!(err < 1e-2, "⟨dx, v⟩ = {analytic}, difference quotient {fd}");
    }

    /// Output and gradients do not depend on the thread count.
    #[test]
    fn fused_block_does_not_depend_on_the_thread_count() {
        let run = |threads: usize| {
            crate::test_util::on_threads(threads, || {
                let (b, map) = block(4, 3, 3, 2);
                let x = Var::from_tensor(&random(&[3, 4, 6, 6], 1, -1.0, 1.0)).unwrap();
                let y = b.forward_train_fused(&x).unwrap();
                let u = random(y.dims(), 2, -1.0, 1.0);
                let grads = crate::test_util::grads_of(&y, &u);
                let mut out = vec![flat(&y), flat(grads.get(&x).unwrap())];
                for (_, var) in vars(&map) {
                    match grads.get(&var) {
                        Some(g) => out.push(flat(g)),
                        None => out.push(flat(var.as_tensor())),
                    }
                }
                out
            })
        };
        let one = run(1);
        for threads in [2, 5] {
            assert!(one == run(threads), "{threads} threads differ from one");
        }
    }
}
