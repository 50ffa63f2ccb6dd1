//! Train-mode BatchNorm, optionally with the ReLU that follows it, as one
//! CPU op forward and one op backward.
//!
//! Composed from candle's tensor ops, a train-mode BatchNorm is about ten
//! elementwise kernels, each allocating a new activation-sized tensor that
//! the autograd graph then keeps until the backward pass; its backward is
//! as many again. Here the forward reads the input twice (mean, then the
//! centred variance) and writes the output once; the backward reads the
//! input, output and upstream gradient once for the two per-channel sums
//! and once more to write the input gradient:
//!
//! ```text
//! x̂ = (x − μ)·s,  s = 1/√(σ² + ε),  y = γ·x̂ + β,  a = relu(y) (or y)
//! g  = ∂L/∂a · [a > 0] (or ∂L/∂a)
//! ∂L/∂β = Σ g,  ∂L/∂γ = Σ g·x̂
//! ∂L/∂x = γ·s·(g − ∂L/∂β / M − x̂·∂L/∂γ / M),   M = N·H·W
//! ```
//!
//! The batch mean and (biased) variance are kept by the op for the backward
//! pass and handed to the caller for the running statistics. Sums run per
//! channel in a fixed order, so results do not depend on the thread count.
//! f32 on the CPU only; [`crate::BatchNorm2d`] composes candle's ops
//! everywhere else.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::pool::{contiguous_f32, lock_state};
use crate::vector::simd;

/// What the forward pass measured, per channel.
#[derive(Debug, Clone, Default)]
pub(crate) struct BatchStats {
    pub(crate) mean: Vec<f32>,
    /// Biased (divided by M) variance, what normalises the batch.
    pub(crate) var: Vec<f32>,
    inv_std: Vec<f32>,
}

/// Whether [`batch_norm_train`] applies to this input.
pub(crate) fn fast_path_applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && x.rank() == 4
}

/// `relu?(γ·(x − μ)/√(σ² + ε) + β)` with the batch's own statistics,
/// differentiable in `x`, `weight` (γ) and `bias` (β). Returns the output
/// and the batch mean and biased variance.
pub(crate) fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> candle_core::Result<(Tensor, BatchStats)> {
    let stats = Arc::new(Mutex::new(BatchStats::default()));
    let op = BatchNormTrain {
        eps: eps as f32,
        relu,
        stats: stats.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    let stats = lock_state(&stats, "batch norm statistics")?.clone();
    Ok((y, stats))
}

struct BatchNormTrain {
    eps: f32,
    relu: bool,
    /// Filled by the forward pass, read by the backward pass.
    stats: Arc<Mutex<BatchStats>>,
}

/// (N, C, H·W) of a 4-D input whose per-channel parameters have C entries.
fn dims(x: &Layout, params: &[&Layout]) -> candle_core::Result<(usize, usize, usize)> {
    let (n, c, h, w) = x.shape().dims4()?;
    for p in params {
        if p.shape().dims() != [c] {
            candle_core::bail!(
                "batch norm: parameter of shape {:?} for an input of {c} channels",
                p.shape()
            );
        }
    }
    if n * h * w < 2 {
        candle_core::bail!(
            "train-mode batch norm needs more than one value per channel, got input {:?}",
            x.shape()
        );
    }
    Ok((n, c, h * w))
}

/// Values summed in f32 lanes before they are folded into f64.
const FOLD: usize = 4096;

/// Σ f(x) over a slice: eight f32 lanes (fixed-size arrays the compiler
/// vectorises), folded into f64 every [`FOLD`] values so long planes keep
/// their precision.
#[inline(always)]
fn sum1(x: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0f64;
    for x in x.chunks(FOLD) {
        let mut acc = [0f32; 8];
        let (x8, rest) = x.as_chunks::<8>();
        for x in x8 {
            for i in 0..8 {
                acc[i] += f(x[i]);
            }
        }
        for &x in rest {
            acc[0] += f(x);
        }
        total += acc.iter().map(|&v| v as f64).sum::<f64>();
    }
    total
}

/// Channels `first..first + len` of an (N, C, H·W) buffer.
#[derive(Clone, Copy)]
pub(crate) struct Channels<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) hw: usize,
    pub(crate) first: usize,
    pub(crate) len: usize,
}

impl<'a> Channels<'a> {
    /// All channels of an (N, C, H·W) buffer.
    pub(crate) fn all(data: &'a [f32], n: usize, c: usize, hw: usize) -> Self {
        Channels {
            data,
            n,
            c,
            hw,
            first: 0,
            len: c,
        }
    }

    /// Image `img`'s plane of channel `ch` (counted from `first`).
    pub(crate) fn plane(&self, img: usize, ch: usize) -> &'a [f32] {
        let start = (img * self.c + self.first + ch) * self.hw;
        &self.data[start..start + self.hw]
    }

    /// Values per channel (N·H·W).
    fn count(&self) -> usize {
        self.n * self.hw
    }
}

/// Per-channel batch mean and biased variance (two passes: the variance
/// is summed centred, so it cannot cancel).
pub(crate) fn moments(x: Channels) -> (Vec<f32>, Vec<f32>) {
    let m = x.count() as f64;
    (0..x.len)
        .into_par_iter()
        .map(|ch| {
            simd(
                #[inline(always)]
                move || {
                    let mean = (0..x.n)
                        .map(|img| sum1(x.plane(img, ch), |v| v))
                        .sum::<f64>()
                        / m;
                    let mf = mean as f32;
                    let var = (0..x.n)
                        .map(|img| sum1(x.plane(img, ch), |v| (v - mf) * (v - mf)))
                        .sum::<f64>()
                        / m;
                    (mf, var as f32)
                },
            )
        })
        .unzip()
}

/// 1/√(σ² + ε) per channel.
pub(crate) fn inv_std(var: &[f32], eps: f32) -> Vec<f32> {
    var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect()
}

/// A train-mode BatchNorm (+ ReLU) over some channels, with the batch
/// statistics it normalises by.
#[derive(Clone, Copy)]
pub(crate) struct Norm<'a> {
    pub(crate) gamma: &'a [f32],
    pub(crate) beta: &'a [f32],
    pub(crate) mean: &'a [f32],
    pub(crate) inv_std: &'a [f32],
    pub(crate) relu: bool,
}

impl Norm<'_> {
    /// y = x·scale + shift: the one expression both passes evaluate, so
    /// the backward's ReLU gate is exactly the forward's.
    fn scale_shift(&self, ch: usize) -> (f32, f32) {
        let scale = self.gamma[ch] * self.inv_std[ch];
        (scale, self.beta[ch] - self.mean[ch] * scale)
    }

    /// Channel `ch`'s output plane `y` from its input plane `x`.
    pub(crate) fn apply(&self, ch: usize, x: &[f32], y: &mut [f32]) {
        let (scale, shift) = self.scale_shift(ch);
        simd(
            #[inline(always)]
            move || {
                if self.relu {
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = (x * scale + shift).max(0.0);
                    }
                } else {
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y = x * scale + shift;
                    }
                }
            },
        )
    }

    /// Image `img`'s output planes from its input planes `x`, into `out`
    /// (`x.len` planes of `x.hw`).
    pub(crate) fn apply_image(&self, x: Channels, img: usize, out: &mut [f32]) {
        for (ch, y) in out.chunks_mut(x.hw).enumerate().take(x.len) {
            self.apply(ch, x.plane(img, ch), y);
        }
    }

    /// (∂L/∂γ, ∂L/∂β) per channel, for input `x` and the gradient `g` of
    /// the output (same channel count).
    pub(crate) fn param_grads(&self, x: Channels, g: Channels) -> (Vec<f32>, Vec<f32>) {
        if self.relu {
            self.param_grads_gated::<true>(x, g)
        } else {
            self.param_grads_gated::<false>(x, g)
        }
    }

    // The ReLU is a const parameter so that each loop is branch-free and
    // vectorises.
    fn param_grads_gated<const RELU: bool>(
        &self,
        x: Channels,
        g: Channels,
    ) -> (Vec<f32>, Vec<f32>) {
        (0..x.len)
            .into_par_iter()
            .map(|ch| {
                simd(
                    #[inline(always)]
                    move || self.channel_param_grads::<RELU>(x, g, ch),
                )
            })
            .unzip()
    }

    /// Channel `ch`'s (∂L/∂γ, ∂L/∂β).
    #[inline(always)]
    fn channel_param_grads<const RELU: bool>(
        &self,
        x: Channels,
        g: Channels,
        ch: usize,
    ) -> (f32, f32) {
        let (scale, shift) = self.scale_shift(ch);
        let mu = self.mean[ch];
        // Σ g' and Σ g'·(x − μ), in eight f32 lanes per plane.
        let (mut dgamma, mut dbeta) = (0f64, 0f64);
        let planes = (0..x.n).flat_map(|img| {
            x.plane(img, ch)
                .chunks(FOLD)
                .zip(g.plane(img, ch).chunks(FOLD))
        });
        for (xp, gp) in planes {
            let (x8, xr) = xp.as_chunks::<8>();
            let (g8, gr) = gp.as_chunks::<8>();
            let (mut sb, mut sg) = ([0f32; 8], [0f32; 8]);
            for (xc, gc) in x8.iter().zip(g8) {
                for i in 0..8 {
                    let gi = gate::<RELU>(xc[i] * scale + shift, gc[i]);
                    sb[i] += gi;
                    sg[i] += gi * (xc[i] - mu);
                }
            }
            for (&xv, &gv) in xr.iter().zip(gr) {
                let gi = gate::<RELU>(xv * scale + shift, gv);
                sb[0] += gi;
                sg[0] += gi * (xv - mu);
            }
            dbeta += sb.iter().map(|&v| v as f64).sum::<f64>();
            dgamma += sg.iter().map(|&v| v as f64).sum::<f64>();
        }
        ((dgamma * self.inv_std[ch] as f64) as f32, dbeta as f32)
    }

    /// Channel `ch`'s input-gradient plane from its input plane `x` and
    /// output-gradient plane `g`, given the channel's (∂L/∂γ, ∂L/∂β) and
    /// the count M; added to `dx` when `accumulate`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn input_grad(
        &self,
        ch: usize,
        count: usize,
        dgamma: f32,
        dbeta: f32,
        x: &[f32],
        g: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    ) {
        let (scale, shift) = self.scale_shift(ch);
        let (mu, s) = (self.mean[ch], self.inv_std[ch]);
        let m = count as f32;
        let (mean_dg, mean_db) = (dgamma / m, dbeta / m);
        let k = s * mean_dg;
        let v = move |x: f32, g: f32| scale * (g - mean_db - (x - mu) * k);
        simd(
            #[inline(always)]
            move || match (self.relu, accumulate) {
                (true, true) => apply3(dx, x, g, |d, x, g| {
                    d + v(x, gate::<true>(x * scale + shift, g))
                }),
                (true, false) => {
                    apply3(dx, x, g, |_, x, g| v(x, gate::<true>(x * scale + shift, g)))
                }
                (false, true) => apply3(dx, x, g, |d, x, g| d + v(x, g)),
                (false, false) => apply3(dx, x, g, |_, x, g| v(x, g)),
            },
        )
    }
}

/// The upstream gradient `g` through a ReLU whose input was `y`
/// (PyTorch's rule: nothing passes where the output is 0).
#[inline(always)]
fn gate<const RELU: bool>(y: f32, g: f32) -> f32 {
    if RELU {
        // A bit mask rather than a branch, so that loops vectorise.
        let keep = ((y > 0.0) as u32).wrapping_neg();
        f32::from_bits(g.to_bits() & keep)
    } else {
        g
    }
}

/// dx[i] = f(dx[i], x[i], g[i]).
#[inline(always)]
fn apply3(dx: &mut [f32], x: &[f32], g: &[f32], f: impl Fn(f32, f32, f32) -> f32) {
    for ((d, &x), &g) in dx.iter_mut().zip(x).zip(g) {
        *d = f(*d, x, g);
    }
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, hw) = dims(xl, &[wl, bl])?;
        let x = contiguous_f32(xs, xl, "batch norm forward")?;
        let gamma = contiguous_f32(ws, wl, "batch norm forward")?;
        let beta = contiguous_f32(bs, bl, "batch norm forward")?;
        let (mean, var) = moments(Channels::all(x, n, c, hw));
        let inv_std = inv_std(&var, self.eps);
        let norm = Norm {
            gamma,
            beta,
            mean: &mean,
            inv_std: &inv_std,
            relu: self.relu,
        };
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(p, (y, x))| norm.apply(p % c, x, y));
        let mut stats = lock_state(&self.stats, "batch norm statistics")?;
        *stats = BatchStats { mean, var, inv_std };
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _out: &Tensor,
        grad_out: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = lock_state(&self.stats, "batch norm statistics")?.clone();
        let sums = Arc::new(Mutex::new((Vec::new(), Vec::new())));
        let grad = BatchNormTrainGrad {
            relu: self.relu,
            gamma: weight.flatten_all()?.to_vec1::<f32>()?,
            beta: bias.flatten_all()?.to_vec1::<f32>()?,
            stats,
            want_input: x.track_op(),
            sums: sums.clone(),
        };
        let dx = x.apply_op2_no_bwd(&grad_out.contiguous()?, &grad)?;
        let (dgamma, dbeta) = lock_state(&sums, "batch norm gradient")?.clone();
        let c = dgamma.len();
        let dgamma = Tensor::from_vec(dgamma, c, weight.device())?;
        let dbeta = Tensor::from_vec(dbeta, c, weight.device())?;
        Ok((x.track_op().then_some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// The backward pass; arguments (x, upstream gradient). Returns ∂L/∂x
/// (empty when the input needs none) and leaves (∂L/∂γ, ∂L/∂β) in `sums`.
struct BatchNormTrainGrad {
    relu: bool,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    stats: BatchStats,
    want_input: bool,
    sums: Arc<Mutex<(Vec<f32>, Vec<f32>)>>,
}

impl CustomOp2 for BatchNormTrainGrad {
    fn name(&self) -> &'static str {
        "batch-norm-train-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, hw) = dims(xl, &[])?;
        if gl.shape() != xl.shape() || self.gamma.len() != c {
            candle_core::bail!(
                "batch norm backward: input {:?}, gradient {:?}, {} channels",
                xl.shape(),
                gl.shape(),
                self.gamma.len()
            );
        }
        let x = contiguous_f32(xs, xl, "batch norm backward")?;
        let g = contiguous_f32(gs, gl, "batch norm backward")?;
        let norm = Norm {
            gamma: &self.gamma,
            beta: &self.beta,
            mean: &self.stats.mean,
            inv_std: &self.stats.inv_std,
            relu: self.relu,
        };
        let (dgamma, dbeta) =
            norm.param_grads(Channels::all(x, n, c, hw), Channels::all(g, n, c, hw));
        let dx = if self.want_input {
            let mut dx = vec![0f32; x.len()];
            dx.par_chunks_mut(hw)
                .zip(x.par_chunks(hw).zip(g.par_chunks(hw)))
                .enumerate()
                .for_each(|(p, (dx, (x, g)))| {
                    let ch = p % c;
                    norm.input_grad(ch, n * hw, dgamma[ch], dbeta[ch], x, g, dx, false)
                });
            dx
        } else {
            Vec::new()
        };
        let mut sums = lock_state(&self.sums, "batch norm gradient")?;
        *sums = (dgamma, dbeta);
        let shape = if self.want_input {
            xl.shape().clone()
        } else {
            Shape::from(0usize)
        };
        Ok((CpuStorage::F32(dx), shape))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::test_util::{dot, flat, max_rel_diff, random};
    use crate::BatchNorm2d;

    /// A BatchNorm2d of `c` channels with random γ, β and running
    /// statistics, and its VarMap.
    fn layer(c: usize, seed: u64) -> (BatchNorm2d, VarMap) {
        let mut map = VarMap::new();
        let bn =
            BatchNorm2d::new(c, VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu)).unwrap();
        for (name, lo, hi) in [
            ("weight", 0.5, 1.5),
            ("bias", -0.5, 0.5),
            ("running_mean", -1.0, 1.0),
            ("running_var", 0.5, 2.0),
        ] {
            let seed = seed + name.len() as u64;
            map.set_one(name, random(&[c], seed, lo, hi)).unwrap();
        }
        (bn, map)
    }

    fn var(map: &VarMap, name: &str) -> Var {
        map.data().lock().unwrap()[name].clone()
    }

    /// Output, running statistics and the gradients of x, γ and β equal
    /// the BatchNorm composed from candle's ops, with and without ReLU,
    /// for one image of many pixels, many images of one pixel, and odd
    /// sizes.
    #[test]
    fn matches_the_composed_batch_norm_forward_backward_and_running_stats() {
        for (i, &(n, c, h, w)) in [(2, 3, 5, 7), (8, 4, 1, 1), (1, 2, 40, 33), (3, 16, 6, 6)]
            .iter()
            .enumerate()
        {
            for relu in [false, true] {
                let seed = 10 * i as u64;
                let x = Var::from_tensor(&random(&[n, c, h, w], seed, -2.0, 3.0)).unwrap();
                let upstream = random(&[n, c, h, w], seed + 1, -1.0, 1.0);
                let (fused_bn, fused_map) = layer(c, seed + 2);
                let (composed_bn, composed_map) = layer(c, seed + 2);

                let ours = if relu {
                    fused_bn.forward_relu_t(&x, true).unwrap()
                } else {
                    fused_bn.forward_t(&x, true).unwrap()
                };
                let theirs = composed_bn.forward_composed(&x, true).unwrap();
                let theirs = if relu { theirs.relu().unwrap() } else { theirs };
                let d = max_rel_diff(&ours, &theirs);
                assert!(d < 1e-5, "case {i} relu {relu}: forward differs by {d}");
                for name in ["running_mean", "running_var"] {
                    let d = max_rel_diff(
                        var(&fused_map, name).as_tensor(),
                        var(&composed_map, name).as_tensor(),
                    );
                    assert!(d < 1e-5, "case {i} relu {relu}: {name} differs by {d}");
                }

                let g_ours = crate::test_util::grads_of(&ours, &upstream);
                let g_theirs = crate::test_util::grads_of(&theirs, &upstream);
                let pairs = [
                    ("input", x.clone(), x.clone()),
                    (
                        "weight",
                        var(&fused_map, "weight"),
                        var(&composed_map, "weight"),
                    ),
                    ("bias", var(&fused_map, "bias"), var(&composed_map, "bias")),
                ];
                for (name, a, b) in pairs {
                    let a = g_ours.get(&a).expect("our gradient");
                    let b = g_theirs.get(&b).expect("composed gradient");
                    let d = max_rel_diff(a, b);
                    assert!(
                        d < 2e-5,
                        "case {i} relu {relu}: {name} gradient differs by {d}"
                    );
                }
            }
        }
    }

    /// The input gradient is the derivative of the forward: for a random
    /// direction v, ⟨∂L/∂x, v⟩ matches the central difference of
    /// L(x + t·v) = Σ u·bn(x + t·v), computed without reference to the
    /// composed version. Likewise for γ.
    #[test]
    fn input_and_weight_gradients_match_central_differences() {
        let (n, c, h, w) = (3, 4, 5, 6);
        let x = Var::from_tensor(&random(&[n, c, h, w], 1, -2.0, 2.0)).unwrap();
        let u = random(&[n, c, h, w], 2, -1.0, 1.0);
        let v = random(&[n, c, h, w], 3, -1.0, 1.0);
        let gamma = Var::from_tensor(&random(&[c], 4, 0.5, 1.5)).unwrap();
        let beta = random(&[c], 5, -0.5, 0.5);
        let vg = random(&[c], 6, -1.0, 1.0);
        let loss = |x: &Tensor, gamma: &Tensor| -> f64 {
            let (y, _) = batch_norm_train(x, gamma, &beta, 1e-5, false).unwrap();
            dot(&y, &u)
        };
        let (y, _) = batch_norm_train(&x, &gamma, &beta, 1e-5, false).unwrap();
        let grads = crate::test_util::grads_of(&y, &u);
        let t = 1e-2;
        let xs = x.as_tensor();
        let gs = gamma.as_tensor();
        let fd_x = (loss(&(xs + (&v * t).unwrap()).unwrap(), gs)
            - loss(&(xs - (&v * t).unwrap()).unwrap(), gs))
            / (2.0 * t);
        let fd_g = (loss(xs, &(gs + (&vg * t).unwrap()).unwrap())
            - loss(xs, &(gs - (&vg * t).unwrap()).unwrap()))
            / (2.0 * t);
        for (name, fd, g, dir) in [("input", fd_x, &x, &v), ("weight", fd_g, &gamma, &vg)] {
            let analytic = dot(grads.get(g).expect("gradient"), dir);
            let err = (analytic - fd).abs() / fd.abs().max(1.0);
            assert!(
                err < 1e-3,
                "{name}: ⟨grad, v⟩ = {analytic}, difference quotient {fd}"
            );
        }
    }

    /// Results do not depend on how many threads run the op.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let run = |threads: usize| {
            crate::test_util::on_threads(threads, || {
                let x = Var::from_tensor(&random(&[4, 6, 9, 11], 7, -1.0, 2.0)).unwrap();
                let gamma = Var::from_tensor(&random(&[6], 8, 0.5, 1.5)).unwrap();
                let beta = Var::from_tensor(&random(&[6], 9, -0.5, 0.5)).unwrap();
                let (y, stats) = batch_norm_train(&x, &gamma, &beta, 1e-5, true).unwrap();
                let u = random(&[4, 6, 9, 11], 10, -1.0, 1.0);
                let grads = crate::test_util::grads_of(&y, &u);
                (
                    flat(&y),
                    stats.var,
                    flat(grads.get(&x).unwrap()),
                    flat(grads.get(&gamma).unwrap()),
                )
            })
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn refuses_a_single_value_per_channel_and_wrong_parameters() {
        let (bn, _map) = layer(3, 1);
        let err = bn
            .forward_relu_t(&random(&[1, 3, 1, 1], 1, 0.0, 1.0), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than one value per channel"), "{err}");
        let err = batch_norm_train(
            &random(&[2, 3, 4, 4], 2, 0.0, 1.0),
            &random(&[4], 3, 0.0, 1.0),
            &random(&[4], 4, 0.0, 1.0),
            1e-5,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("parameter of shape [4] for an input of 3 channels"),
            "{err}"
        );
    }
}
