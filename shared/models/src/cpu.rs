//! A fused CPU inference path for both networks, numerically the eval-mode
//! forward of [`ChestModel`](crate::ChestModel) (same weights, same
//! outputs within float rounding) but built for speed:
//!
//! * every BatchNorm that directly follows a convolution is folded into it
//!   (weights scaled, a bias added), and ReLU runs in the same pass as the
//!   bias;
//! * a DenseNet block writes each layer's new channels into one
//!   preallocated buffer, so there is no concatenation;
//! * a DenseNet transition averages the 2×2 pool before its 1×1
//!   convolution (both are linear, so they commute): a quarter of the work;
//! * convolutions are `gemm` calls on an im2col matrix built a few output
//!   rows at a time (bounded memory), written straight into the output;
//! * a batch runs one image per thread; a single image uses all threads
//!   inside each matrix multiply.
//!
//! Weights are plain `f32` arrays; no autograd graph exists here. Each
//! network's plan lives beside the network (`DenseNetPlan` in `densenet.rs`,
//! `SeResNetPlan` in `se_resnet.rs`), built from the same state-dict names;
//! this file holds the fused layers they are made of.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::conv::{matmul, with_col, Geometry, MatRef};
use crate::densenet::DenseNetPlan;
use crate::se_resnet::SeResNetPlan;
use crate::{DualLogits, ModelConfig, ModelError, Result};

const BN_EPS: f32 = 1e-5;
/// Output pixels per im2col tile: bounds the im2col buffer to
/// `cin·k² × TILE_PIXELS` floats.
const TILE_PIXELS: usize = 2048;

/// A convolution with its following BatchNorm folded in.
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    cin: usize,
    pub(crate) cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    /// (cout, cin·k·k), row-major: PyTorch's layout.
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// An eval-mode BatchNorm as a per-channel affine map.
#[derive(Debug, Clone)]
pub(crate) struct Affine {
    scale: Vec<f32>,
    shift: Vec<f32>,
}

#[derive(Debug, Clone)]
pub(crate) struct Linear {
    cin: usize,
    cout: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

pub(crate) struct Weights<'a> {
    pub(crate) tensors: &'a BTreeMap<String, Tensor>,
}

impl Weights<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::Weights(format!("no tensor `{name}`")))?;
        if t.dims() != shape {
            return Err(ModelError::Weights(format!(
                "`{name}` has shape {:?}, expected {shape:?}",
                t.dims()
            )));
        }
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    pub(crate) fn affine(&self, prefix: &str, c: usize) -> Result<Affine> {
        let weight = self.get(&format!("{prefix}.weight"), &[c])?;
        let bias = self.get(&format!("{prefix}.bias"), &[c])?;
        let mean = self.get(&format!("{prefix}.running_mean"), &[c])?;
        let var = self.get(&format!("{prefix}.running_var"), &[c])?;
        let scale: Vec<f32> = weight
            .iter()
            .zip(&var)
            .map(|(w, v)| w / (v + BN_EPS).sqrt())
            .collect();
        let shift = bias
            .iter()
            .zip(&mean)
            .zip(&scale)
            .map(|((b, m), s)| b - m * s)
            .collect();
        Ok(Affine { scale, shift })
    }

    /// Convolution `conv` (no bias) followed by BatchNorm `bn`, folded.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv_bn(
        &self,
        conv: &str,
        bn: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Conv> {
        let mut weight = self.get(&format!("{conv}.weight"), &[cout, cin, k, k])?;
        let affine = self.affine(bn, cout)?;
        let per_out = cin * k * k;
        for (o, row) in weight.chunks_mut(per_out).enumerate() {
            row.iter_mut().for_each(|w| *w *= affine.scale[o]);
        }
        Ok(Conv {
            cin,
            cout,
            k,
            stride,
            pad,
            weight,
            bias: affine.shift,
        })
    }

    /// Convolution without a BatchNorm after it (zero bias).
    pub(crate) fn conv(
        &self,
        conv: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Conv> {
        Ok(Conv {
            cin,
            cout,
            k,
            stride,
            pad,
            weight: self.get(&format!("{conv}.weight"), &[cout, cin, k, k])?,
            bias: vec![0.0; cout],
        })
    }

    pub(crate) fn linear(&self, prefix: &str, cin: usize, cout: usize) -> Result<Linear> {
        Ok(Linear {
            cin,
            cout,
            weight: self.get(&format!("{prefix}.weight"), &[cout, cin])?,
            bias: self.get(&format!("{prefix}.bias"), &[cout])?,
        })
    }
}

pub(crate) fn out_len(len: usize, k: usize, stride: usize, pad: usize) -> usize {
    (len + 2 * pad).saturating_sub(k) / stride + 1
}

impl Conv {
    pub(crate) fn out_dims(&self, h: usize, w: usize) -> (usize, usize) {
        (
            out_len(h, self.k, self.stride, self.pad),
            out_len(w, self.k, self.stride, self.pad),
        )
    }

    /// `out[cout, ho·wo] = W · im2col(input[cin, h·w]) + bias`, ReLU if
    /// asked. `out` may be a channel range of a larger buffer. With more
    /// than one thread the output rows are split between threads, each
    /// running its own single-threaded multiply (gemm's own threading
    /// costs more than it gains on these shapes).
    pub(crate) fn run(
        &self,
        input: &[f32],
        h: usize,
        w: usize,
        out: &mut [f32],
        relu: bool,
        threads: usize,
    ) {
        let (ho, wo) = self.out_dims(h, w);
        assert_eq!(input.len(), self.cin * h * w, "conv input size");
        assert_eq!(out.len(), self.cout * ho * wo, "conv output size");
        if threads <= 1 || ho < 2 * threads {
            self.run_rows(input, h, w, SharedOut(out.as_mut_ptr()), 0, ho, relu);
            return;
        }
        let dst = SharedOut(out.as_mut_ptr());
        let per = ho.div_ceil(threads);
        rayon::scope(|scope| {
            for t in 0..threads {
                let (r0, r1) = (t * per, ((t + 1) * per).min(ho));
                if r0 >= r1 {
                    continue;
                }
                scope.spawn(move |_| self.run_rows(input, h, w, dst, r0, r1, relu));
            }
        });
    }

    /// Output rows r0..r1 of every channel.
    #[allow(clippy::too_many_arguments)]
    fn run_rows(
        &self,
        input: &[f32],
        h: usize,
        w: usize,
        out: SharedOut,
        r0: usize,
        r1: usize,
        relu: bool,
    ) {
        let (ho, wo) = self.out_dims(h, w);
        let hw_out = ho * wo;
        let kk = self.cin * self.k * self.k;
        if self.k == 1 && self.stride == 1 && self.pad == 0 {
            // SAFETY: rows r0..r1 of each of the cout output planes lie in
            // `out` (checked by the caller) and belong to this call only.
            unsafe {
                gemm_into(
                    out.0.add(r0 * wo),
                    hw_out,
                    &self.weight,
                    self.cout,
                    kk,
                    input.as_ptr().add(r0 * w),
                    h * w,
                    (r1 - r0) * wo,
                );
            }
        } else {
            let geometry =
                Geometry::single_image(self.cin, h, w, self.cout, self.k, self.stride, self.pad);
            let rows_per_tile = (TILE_PIXELS / wo.max(1)).max(1);
            let mut t0 = r0;
            while t0 < r1 {
                let t1 = (t0 + rows_per_tile).min(r1);
                let cols = (t1 - t0) * wo;
                with_col(kk * cols, |col| {
                    geometry.im2col(input, t0..t1, col);
                    // SAFETY: as above, rows t0..t1 ⊂ r0..r1.
                    unsafe {
                        gemm_into(
                            out.0.add(t0 * wo),
                            hw_out,
                            &self.weight,
                            self.cout,
                            kk,
                            col.as_ptr(),
                            cols,
                            cols,
                        );
                    }
                });
                t0 = t1;
            }
        }
        for c in 0..self.cout {
            let b = self.bias[c];
            // SAFETY: as above.
            let row = unsafe {
                std::slice::from_raw_parts_mut(out.0.add(c * hw_out + r0 * wo), (r1 - r0) * wo)
            };
            if relu {
                row.iter_mut().for_each(|v| *v = (*v + b).max(0.0));
            } else if b != 0.0 {
                row.iter_mut().for_each(|v| *v += b);
            }
        }
    }
}

/// A raw output pointer handed to threads that write disjoint rows.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: threads given a `SharedOut` write disjoint row ranges only.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// `dst[m, n] = lhs[m, k] · rhs[k, n]`, `dst` rows `dst_rs` apart, `rhs`
/// rows `rhs_rs` apart, all row-major.
///
/// # Safety
/// `dst` must be valid for `m` rows of `n` floats `dst_rs` apart, `rhs`
/// for `k` rows of `n` floats `rhs_rs` apart, and they must not overlap.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    dst: *mut f32,
    dst_rs: usize,
    lhs: &[f32],
    m: usize,
    k: usize,
    rhs: *const f32,
    rhs_rs: usize,
    n: usize,
) {
    debug_assert_eq!(lhs.len(), m * k);
    let rhs = MatRef {
        ptr: rhs,
        row_stride: rhs_rs,
        col_stride: 1,
    };
    matmul(
        dst,
        dst_rs,
        false,
        MatRef::rows(lhs, k),
        rhs,
        m,
        n,
        k,
        Parallelism::None,
    );
}

pub(crate) fn max_pool_3x3_s2_p1(
    input: &[f32],
    c: usize,
    h: usize,
    w: usize,
    out: &mut [f32],
) -> (usize, usize) {
    let (ho, wo) = (out_len(h, 3, 2, 1), out_len(w, 3, 2, 1));
    for ch in 0..c {
        let plane = &input[ch * h * w..(ch + 1) * h * w];
        let dst = &mut out[ch * ho * wo..(ch + 1) * ho * wo];
        for oy in 0..ho {
            let y0 = (oy * 2).saturating_sub(1);
            let y1 = (oy * 2 + 2).min(h);
            for ox in 0..wo {
                let x0 = (ox * 2).saturating_sub(1);
                let x1 = (ox * 2 + 2).min(w);
                let mut m = f32::NEG_INFINITY;
                for y in y0..y1 {
                    for &v in &plane[y * w + x0..y * w + x1] {
                        if v > m || v.is_nan() {
                            m = v;
                        }
                    }
                }
                dst[oy * wo + ox] = m;
            }
        }
    }
    (ho, wo)
}

impl Affine {
    /// `out = relu(scale·x + shift)` per channel.
    pub(crate) fn relu_into(&self, input: &[f32], hw: usize, out: &mut [f32], threads: usize) {
        let f = |(c, (src, dst)): (usize, (&[f32], &mut [f32]))| {
            let (s, t) = (self.scale[c], self.shift[c]);
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = (x * s + t).max(0.0);
            }
        };
        if threads > 1 {
            input
                .par_chunks(hw)
                .zip(out.par_chunks_mut(hw))
                .enumerate()
                .for_each(f);
        } else {
            input
                .chunks(hw)
                .zip(out.chunks_mut(hw))
                .enumerate()
                .for_each(f);
        }
    }

    /// `out = avgpool2x2(relu(scale·x + shift))` per channel (floor sizes).
    pub(crate) fn relu_avg_pool2_into(
        &self,
        input: &[f32],
        h: usize,
        w: usize,
        out: &mut [f32],
    ) -> (usize, usize) {
        let (ho, wo) = (h / 2, w / 2);
        for (c, (src, dst)) in input.chunks(h * w).zip(out.chunks_mut(ho * wo)).enumerate() {
            let (s, t) = (self.scale[c], self.shift[c]);
            let f = |x: f32| (x * s + t).max(0.0);
            for oy in 0..ho {
                let a = &src[2 * oy * w..];
                let b = &src[(2 * oy + 1) * w..];
                for ox in 0..wo {
                    dst[oy * wo + ox] =
                        0.25 * (f(a[2 * ox]) + f(a[2 * ox + 1]) + f(b[2 * ox]) + f(b[2 * ox + 1]));
                }
            }
        }
        (ho, wo)
    }

    /// Global mean of relu(scale·x + shift) per channel.
    pub(crate) fn relu_mean(&self, input: &[f32], hw: usize) -> Vec<f32> {
        input
            .chunks(hw)
            .enumerate()
            .map(|(c, src)| {
                let (s, t) = (self.scale[c], self.shift[c]);
                src.iter().map(|&x| (x * s + t).max(0.0)).sum::<f32>() / hw as f32
            })
            .collect()
    }
}

impl Linear {
    pub(crate) fn apply(&self, x: &[f32]) -> Vec<f32> {
        self.weight
            .chunks(self.cin)
            .zip(&self.bias)
            .map(|(row, b)| row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>() + b)
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Plan {
    DenseNet(DenseNetPlan),
    SeResNet(SeResNetPlan),
}

/// The fused CPU forward pass of a model, from its tensors.
#[derive(Debug, Clone)]
pub struct CpuInference {
    plan: Plan,
    multilabel: Linear,
    binary: Linear,
}

/// Per-thread working memory, reused across layers.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(crate) a: Vec<f32>,
    pub(crate) b: Vec<f32>,
    pub(crate) c: Vec<f32>,
}

pub(crate) fn resize(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

impl CpuInference {
    /// Builds the fused plan from a model's tensors (a checkpoint's, or a
    /// `VarMap`'s through [`crate::varmap_tensors`]).
    pub fn new(
        config: &ModelConfig,
        num_findings: usize,
        tensors: &BTreeMap<String, Tensor>,
    ) -> Result<Self> {
        let wts = Weights { tensors };
        let plan = match config {
            ModelConfig::Densenet(c) => Plan::DenseNet(DenseNetPlan::new(c, &wts)?),
            ModelConfig::SeResnet(c) => Plan::SeResNet(SeResNetPlan::new(c, &wts)?),
        };
        let features = config.num_features();
        Ok(Self {
            plan,
            multilabel: wts.linear(crate::model::MULTILABEL_HEAD, features, num_findings)?,
            binary: wts.linear(crate::model::BINARY_HEAD, features, 1)?,
        })
    }

    pub fn num_findings(&self) -> usize {
        self.multilabel.cout
    }

    /// Eval-mode logits for a batch (N, 3, H, W) of normalised images.
    pub fn forward(&self, x: &Tensor) -> Result<DualLogits> {
        crate::layers::check_input(x)?;
        let (n, _, h, w) = x.dims4()?;
        let data = x
            .to_device(&Device::Cpu)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let per_image = 3 * h * w;
        let threads = rayon::current_num_threads().max(1);
        // One image per thread when the batch can fill the threads;
        // otherwise every thread inside each matrix multiply.
        let pooled: Vec<Vec<f32>> = if n >= threads {
            data.par_chunks(per_image)
                .map(|img| self.features(img, h, w, 1))
                .collect()
        } else {
            data.chunks(per_image)
                .map(|img| self.features(img, h, w, threads))
                .collect()
        };
        let mut findings = Vec::with_capacity(n * self.multilabel.cout);
        let mut abnormal = Vec::with_capacity(n);
        for f in &pooled {
            findings.extend(self.multilabel.apply(f));
            abnormal.extend(self.binary.apply(f));
        }
        Ok(DualLogits {
            findings: Tensor::from_vec(findings, (n, self.multilabel.cout), x.device())?,
            abnormal: Tensor::from_vec(abnormal, (n, 1), x.device())?,
        })
    }

    /// The pooled feature of one image (3·h·w floats).
    fn features(&self, img: &[f32], h: usize, w: usize, threads: usize) -> Vec<f32> {
        let mut s = Scratch::default();
        match &self.plan {
            Plan::DenseNet(p) => p.features(img, h, w, threads, &mut s),
            Plan::SeResNet(p) => p.features(img, h, w, threads, &mut s),
        }
    }
}
