//! A DenseNet dense block in train mode as one CPU op, forward and
//! backward.
//!
//! Composed from tensor ops, layer j of a block concatenates every earlier
//! feature map into a new tensor, and the backward pass adds a slice of
//! each concatenation's gradient into every earlier feature's gradient
//! (each add a fresh tensor): O(L²) copies in both directions, and the
//! autograd graph keeps every concatenation and BatchNorm output. Here
//! (the idea of torchvision's memory-efficient DenseNet):
//!
//! * the block's output is one preallocated buffer; the input is copied
//!   into its first channels and each layer writes its `growth` new
//!   channels after them, so layer j reads its input in place;
//! * a channel's batch mean and variance are computed once, when it is
//!   written: every later layer's `norm1` normalises the same values;
//! * the only activations kept for the backward pass are the buffer itself
//!   and each layer's bottleneck (`conv1`'s output, before `norm2`); the
//!   normalised inputs of both convolutions are recomputed per image when
//!   needed;
//! * the backward walks the layers in reverse with one gradient buffer of
//!   the block's shape: when layer j is reached, every later layer has
//!   added its share to j's channels, so they are complete.
//!
//! ```text
//! layer j, cin = c0 + j·growth:
//!   z  = conv1(relu(norm1(buf[:, :cin])))          1×1, mid = bn_size·growth
//!   buf[:, cin:cin+growth] = conv2(relu(norm2(z)))  3×3, padding 1
//! ```
//!
//! conv2 and both its gradients run as Winograd F(2×2, 3×3) per image
//! (`winograd.rs`); conv1 is a plain matrix product.
//!
//! The parameters arrive packed in one flat tensor (per layer: norm1
//! weight and bias, conv1 weight, norm2 weight and bias, conv2 weight), so
//! autograd returns their gradients to the variables through the packing.
//! Batch statistics are handed back for the running statistics. Per-image
//! weight-gradient parts are added in image order and per-channel sums run
//! in a fixed order, so results do not depend on the thread count.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::batch_norm::{inv_std, moments, Channels, Norm};
use crate::conv::{add_weight_product, matmul, transpose_into, Geometry, MatRef};
use crate::pool::{contiguous_f32, lock_state};
use crate::winograd::{weight_grad_from, ImageConv};

/// conv2's kernel, stride and padding in every DenseNet.
const K2: usize = 3;

/// The sizes of one dense block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockShape {
    /// Channels of the block's input.
    pub(crate) c0: usize,
    pub(crate) layers: usize,
    pub(crate) growth: usize,
    /// Bottleneck channels (bn_size · growth).
    pub(crate) mid: usize,
}

/// Where layer j's parameters lie in the packed parameter vector.
struct LayerParams {
    cin: usize,
    norm1_weight: Range<usize>,
    norm1_bias: Range<usize>,
    conv1: Range<usize>,
    norm2_weight: Range<usize>,
    norm2_bias: Range<usize>,
    conv2: Range<usize>,
}

impl LayerParams {
    /// norm1 + ReLU over the layer's input channels, with the buffer's
    /// batch statistics.
    fn norm1<'a>(&self, params: &'a [f32], mean: &'a [f32], inv_std: &'a [f32]) -> Norm<'a> {
        Norm {
            gamma: &params[self.norm1_weight.clone()],
            beta: &params[self.norm1_bias.clone()],
            mean: &mean[..self.cin],
            inv_std: &inv_std[..self.cin],
            relu: true,
        }
    }

    /// norm2 + ReLU over the bottleneck, with its batch statistics.
    fn norm2<'a>(&self, params: &'a [f32], mean: &'a [f32], inv_std: &'a [f32]) -> Norm<'a> {
        Norm {
            gamma: &params[self.norm2_weight.clone()],
            beta: &params[self.norm2_bias.clone()],
            mean,
            inv_std,
            relu: true,
        }
    }
}

impl BlockShape {
    /// Channels of the block's output.
    pub(crate) fn total(&self) -> usize {
        self.c0 + self.layers * self.growth
    }

    fn cin(&self, layer: usize) -> usize {
        self.c0 + layer * self.growth
    }

    fn layer(&self, layer: usize) -> LayerParams {
        let start: usize = (0..layer).map(|j| self.layer_len(j)).sum();
        let cin = self.cin(layer);
        let mut at = start;
        let mut next = |len: usize| {
            at += len;
            at - len..at
        };
        LayerParams {
            cin,
            norm1_weight: next(cin),
            norm1_bias: next(cin),
            conv1: next(self.mid * cin),
            norm2_weight: next(self.mid),
            norm2_bias: next(self.mid),
            conv2: next(self.growth * self.mid * K2 * K2),
        }
    }

    fn layer_len(&self, layer: usize) -> usize {
        let cin = self.cin(layer);
        2 * cin + self.mid * cin + 2 * self.mid + self.growth * self.mid * K2 * K2
    }

    /// Length of the packed parameter vector.
    pub(crate) fn params_len(&self) -> usize {
        (0..self.layers).map(|j| self.layer_len(j)).sum()
    }

    fn conv2(&self, h: usize, w: usize) -> Geometry {
        Geometry::single_image(self.mid, h, w, self.growth, K2, 1, 1)
    }
}

/// An (N, total, H·W) block buffer.
#[derive(Clone, Copy)]
struct BufferDims {
    n: usize,
    total: usize,
    hw: usize,
}

impl BufferDims {
    /// Channels `first..first + len` of `data`.
    fn channels<'a>(&self, data: &'a [f32], first: usize, len: usize) -> Channels<'a> {
        Channels {
            data,
            n: self.n,
            c: self.total,
            hw: self.hw,
            first,
            len,
        }
    }
}

/// Batch statistics of one forward pass, for the running statistics.
#[derive(Debug, Clone, Default)]
pub(crate) struct BlockStats {
    /// Mean and biased variance of every output channel: `norm1` of layer
    /// j uses the first `c0 + j·growth`.
    pub(crate) buffer: (Vec<f32>, Vec<f32>),
    /// Mean and biased variance of each layer's bottleneck (`norm2`).
    pub(crate) bottleneck: Vec<(Vec<f32>, Vec<f32>)>,
}

/// What the backward pass needs beyond the op's output.
#[derive(Default)]
struct Saved {
    stats: BlockStats,
    buffer_inv_std: Vec<f32>,
    bottleneck_inv_std: Vec<Vec<f32>>,
    /// Each layer's conv1 output, (N, mid, H·W).
    bottleneck: Vec<Vec<f32>>,
}

/// Values per channel must be at least 2 for train-mode BatchNorm.
pub(crate) fn dense_block_train(
    x: &Tensor,
    params: &Tensor,
    shape: BlockShape,
    eps: f64,
) -> candle_core::Result<(Tensor, BlockStats)> {
    let saved = Arc::new(Mutex::new(Saved::default()));
    let op = DenseBlockTrain {
        shape,
        eps: eps as f32,
        saved: saved.clone(),
    };
    let y = x.contiguous()?.apply_op2(&params.contiguous()?, op)?;
    let stats = lock_state(&saved, "dense block state")?.stats.clone();
    Ok((y, stats))
}

struct DenseBlockTrain {
    shape: BlockShape,
    eps: f32,
    saved: Arc<Mutex<Saved>>,
}

thread_local! {
    /// Each thread's buffer for a normalised input (norm1's or norm2's
    /// output for one image), reused across layers.
    static NORMED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_normed<T>(len: usize, f: impl FnOnce(&mut [f32]) -> T) -> T {
    NORMED.with(|buf| {
        let mut buf = buf.borrow_mut();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f(&mut buf[..len])
    })
}

/// Runs `f(image, a, b, parallelism)` for each image on its parts of `a`
/// and `b` (each an (N, …) buffer, or empty). With at least as many images
/// as threads, images run in parallel and each multiply on one thread;
/// otherwise images run in turn and each multiply uses every thread.
fn for_each_image<A: Send, B: Send>(
    n: usize,
    a: &mut [A],
    b: &mut [B],
    f: impl Fn(usize, &mut [A], &mut [B], Parallelism) + Sync,
) {
    fn parts<T>(buf: &mut [T], n: usize) -> Vec<&mut [T]> {
        if buf.is_empty() {
            (0..n).map(|_| <&mut [T]>::default()).collect()
        } else {
            let per = buf.len() / n;
            buf.chunks_mut(per).collect()
        }
    }
    let (a, b) = (parts(a, n), parts(b, n));
    if n >= rayon::current_num_threads() {
        a.into_par_iter()
            .zip(b)
            .enumerate()
            .for_each(|(i, (a, b))| f(i, a, b, Parallelism::None));
    } else {
        for (i, (a, b)) in a.into_iter().zip(b).enumerate() {
            f(i, a, b, Parallelism::Rayon(0));
        }
    }
}

/// `dst` = the sum of its `parts.len() / dst.len()` equal parts, in order.
fn add_parts(dst: &mut [f32], parts: &[f32]) {
    dst.fill(0.0);
    for part in parts.chunks(dst.len()) {
        for (d, p) in dst.iter_mut().zip(part) {
            *d += p;
        }
    }
}

impl CustomOp2 for DenseBlockTrain {
    fn name(&self) -> &'static str {
        "dense-block-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let s = self.shape;
        let (n, c0, h, w) = xl.shape().dims4()?;
        if c0 != s.c0 || pl.shape().dims() != [s.params_len()] {
            candle_core::bail!(
                "dense block: input {:?} and {:?} parameters for a block of {s:?} ({} parameters)",
                xl.shape(),
                pl.shape(),
                s.params_len()
            );
        }
        if n * h * w < 2 {
            candle_core::bail!(
                "train-mode batch norm needs more than one value per channel, got input {:?}",
                xl.shape()
            );
        }
        let x = contiguous_f32(xs, xl, "dense block forward")?;
        let params = contiguous_f32(ps, pl, "dense block forward")?;
        let (hw, total, mid, growth) = (h * w, s.total(), s.mid, s.growth);
        let conv2_shape = s.conv2(h, w);

        let mut buf = vec![0f32; n * total * hw];
        buf.par_chunks_mut(total * hw)
            .zip(x.par_chunks(c0 * hw))
            .for_each(|(b, x)| b[..c0 * hw].copy_from_slice(x));
        let dims = BufferDims { n, total, hw };
        let (mut mean, mut var) = moments(dims.channels(&buf, 0, c0));
        let mut saved = Saved::default();

        for j in 0..s.layers {
            let p = s.layer(j);
            let cin = p.cin;
            let norm1_inv_std = inv_std(&var, self.eps);
            let norm1 = p.norm1(params, &mean, &norm1_inv_std);
            let w1 = &params[p.conv1.clone()];
            // z = conv1(relu(norm1(buf[:, :cin]))), a 1×1 convolution.
            let mut z = vec![0f32; n * mid * hw];
            let input = &buf;
            for_each_image(n, &mut z, &mut [(); 0], |img, z, _, par| {
                with_normed(cin * hw, |a| {
                    norm1.apply_image(dims.channels(input, 0, cin), img, a);
                    // SAFETY: z is mid × hw, W1 mid × cin, a cin × hw.
                    unsafe {
                        matmul(
                            z.as_mut_ptr(),
                            hw,
                            false,
                            MatRef::rows(w1, cin),
                            MatRef::rows(a, hw),
                            mid,
                            hw,
                            cin,
                            par,
                        )
                    }
                })
            });
            let (z_mean, z_var) = moments(Channels::all(&z, n, mid, hw));
            let z_inv_std = inv_std(&z_var, self.eps);
            let norm2 = p.norm2(params, &z_mean, &z_inv_std);
            let conv2 = ImageConv::new(&conv2_shape, &params[p.conv2.clone()]);
            // buf[:, cin:cin+growth] = conv2(relu(norm2(z))).
            for_each_image(n, &mut buf, &mut [(); 0], |img, b, _, par| {
                let out = &mut b[cin * hw..(cin + growth) * hw];
                with_normed(mid * hw, |a| {
                    norm2.apply_image(Channels::all(&z, n, mid, hw), img, a);
                    conv2.forward(a, out, par);
                })
            });
            let (new_mean, new_var) = moments(dims.channels(&buf, cin, growth));
            mean.extend(new_mean);
            var.extend(new_var);
            saved.stats.bottleneck.push((z_mean, z_var));
            saved.bottleneck_inv_std.push(z_inv_std);
            saved.bottleneck.push(z);
        }
        saved.buffer_inv_std = inv_std(&var, self.eps);
        saved.stats.buffer = (mean, var);
        *lock_state(&self.saved, "dense block state")? = saved;
        Ok((CpuStorage::F32(buf), Shape::from((n, total, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        out: &Tensor,
        grad_out: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let saved = std::mem::take(&mut *lock_state(&self.saved, "dense block state")?);
        let dparams = Arc::new(Mutex::new(Vec::new()));
        let grad = DenseBlockGrad {
            shape: self.shape,
            params: params.to_vec1::<f32>()?,
            saved,
            dparams: dparams.clone(),
        };
        let dx = out.apply_op2_no_bwd(&grad_out.contiguous()?, &grad)?;
        let dparams = std::mem::take(&mut *lock_state(&dparams, "dense block state")?);
        let len = dparams.len();
        let dparams = Tensor::from_vec(dparams, len, params.device())?;
        Ok((
            x.track_op().then_some(dx),
            params.track_op().then_some(dparams),
        ))
    }
}

/// The backward pass; arguments (the block's output, its gradient).
/// Returns ∂L/∂x and leaves ∂L/∂params in `dparams`.
struct DenseBlockGrad {
    shape: BlockShape,
    params: Vec<f32>,
    saved: Saved,
    dparams: Arc<Mutex<Vec<f32>>>,
}

impl CustomOp2 for DenseBlockGrad {
    fn name(&self) -> &'static str {
        "dense-block-train-grad"
    }

    fn cpu_fwd(
        &self,
        bs: &CpuStorage,
        bl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let s = self.shape;
        let (n, total, h, w) = bl.shape().dims4()?;
        if total != s.total() || gl.shape() != bl.shape() || self.saved.bottleneck.len() != s.layers
        {
            candle_core::bail!(
                "dense block backward: output {:?}, gradient {:?} for a block of {s:?}",
                bl.shape(),
                gl.shape()
            );
        }
        let buf = contiguous_f32(bs, bl, "dense block backward")?;
        let params = &self.params;
        let (hw, mid, growth) = (h * w, s.mid, s.growth);
        let conv2_shape = s.conv2(h, w);
        let (mean, _) = &self.saved.stats.buffer;
        let dims = BufferDims { n, total, hw };
        // The gradient of the whole buffer; layer j's channels are complete
        // once every later layer has added its input gradient.
        let mut gbuf = contiguous_f32(gs, gl, "dense block backward")?.to_vec();
        let mut dparams = vec![0f32; params.len()];

        for j in (0..s.layers).rev() {
            let p = s.layer(j);
            let cin = p.cin;
            let z = &self.saved.bottleneck[j];
            let (z_mean, _) = &self.saved.stats.bottleneck[j];
            let norm2 = p.norm2(params, z_mean, &self.saved.bottleneck_inv_std[j]);
            let conv2 = ImageConv::new(&conv2_shape, &params[p.conv2.clone()]);

            // conv2: ∂W2 and ∂a (Winograd, `winograd.rs`), where
            // a = relu(norm2(z)) is recomputed and g is the layer's slice
            // of the buffer gradient.
            let mut da = vec![0f32; n * mid * hw];
            let mut du2_parts = vec![0f32; n * conv2.weight_grad_len()];
            let gbuf_ref = &gbuf;
            for_each_image(n, &mut da, &mut du2_parts, |img, da, du2, par| {
                let g = &gbuf_ref[(img * total + cin) * hw..(img * total + cin + growth) * hw];
                with_normed(mid * hw, |a| {
                    norm2.apply_image(Channels::all(z, n, mid, hw), img, a);
                    conv2.add_weight_grad(a, g, du2, par);
                });
                conv2.add_input_grad(g, da, par);
            });
            let mut du2 = vec![0f32; conv2.weight_grad_len()];
            add_parts(&mut du2, &du2_parts);
            dparams[p.conv2.clone()].copy_from_slice(&weight_grad_from(growth, mid, &du2));

            // norm2 + ReLU: ∂γ2, ∂β2 and ∂z.
            let (dgamma2, dbeta2) =
                norm2.param_grads(Channels::all(z, n, mid, hw), Channels::all(&da, n, mid, hw));
            let mut dz = vec![0f32; n * mid * hw];
            dz.par_chunks_mut(hw)
                .zip(z.par_chunks(hw).zip(da.par_chunks(hw)))
                .enumerate()
                .for_each(|(q, (dz, (z, g)))| {
                    let ch = q % mid;
                    norm2.input_grad(ch, n * hw, dgamma2[ch], dbeta2[ch], z, g, dz, false);
                });
            dparams[p.norm2_weight.clone()].copy_from_slice(&dgamma2);
            dparams[p.norm2_bias.clone()].copy_from_slice(&dbeta2);
            drop(da);

            // conv1 (1×1): ∂W1 = Σ dz·aᵀ and ∂a = W1ᵀ·dz, where
            // a = relu(norm1(buf[:, :cin])) is recomputed.
            let norm1 = p.norm1(params, mean, &self.saved.buffer_inv_std);
            let w1 = &params[p.conv1.clone()];
            let mut da = vec![0f32; n * cin * hw];
            // Each image's ∂W1ᵀ (cin × mid).
            let mut dw1_parts = vec![0f32; n * mid * cin];
            for_each_image(n, &mut da, &mut dw1_parts, |img, da, dw1_t, par| {
                let dz = &dz[img * mid * hw..(img + 1) * mid * hw];
                with_normed(cin * hw, |a| {
                    norm1.apply_image(dims.channels(buf, 0, cin), img, a);
                    add_weight_product(dw1_t, false, (dz, hw), (a, hw), (mid, cin, hw), par);
                });
                // SAFETY: da is cin × hw, W1ᵀ cin × mid, dz mid × hw.
                unsafe {
                    matmul(
                        da.as_mut_ptr(),
                        hw,
                        false,
                        MatRef::transposed(w1, cin),
                        MatRef::rows(dz, hw),
                        cin,
                        hw,
                        mid,
                        par,
                    )
                };
            });
            let mut dw1_t = vec![0f32; mid * cin];
            add_parts(&mut dw1_t, &dw1_parts);
            transpose_into((&dw1_t, mid), cin, mid, &mut dparams[p.conv1.clone()]);
            drop(dz);

            // norm1 + ReLU: ∂γ1, ∂β1, and the input gradient added to the
            // buffer gradient of channels 0..cin.
            let (dgamma1, dbeta1) =
                norm1.param_grads(dims.channels(buf, 0, cin), Channels::all(&da, n, cin, hw));
            gbuf.par_chunks_mut(hw).enumerate().for_each(|(q, gplane)| {
                let (img, ch) = (q / total, q % total);
                if ch < cin {
                    let x = dims.channels(buf, 0, cin).plane(img, ch);
                    let g = &da[(img * cin + ch) * hw..(img * cin + ch + 1) * hw];
                    norm1.input_grad(ch, n * hw, dgamma1[ch], dbeta1[ch], x, g, gplane, true);
                }
            });
            dparams[p.norm1_weight.clone()].copy_from_slice(&dgamma1);
            dparams[p.norm1_bias.clone()].copy_from_slice(&dbeta1);
        }

        let dx: Vec<f32> = gbuf
            .chunks(total * hw)
            .flat_map(|g| g[..s.c0 * hw].iter().copied())
            .collect();
        *lock_state(&self.dparams, "dense block state")? = dparams;
        Ok((CpuStorage::F32(dx), Shape::from((n, s.c0, h, w))))
    }
}
