//! 2-D max pooling with padding and a backward pass, which candle lacks
//! (its `max_pool2d` has no padding and no gradient when kernel ≠ stride,
//! and the 3×3/2 stem pool of DenseNet and ResNet is exactly that case).
//!
//! Semantics are PyTorch's `F.max_pool2d(x, k, s, p)`: padding counts as
//! −∞, the gradient goes to the first maximum of each window in row-major
//! order, and NaN wins. On CPU with f32 this is a custom op (one pass
//! forward, one scatter backward); elsewhere it is composed from
//! `index_select` and `maximum`, which every backend differentiates.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::vector::simd;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl MaxPool2d {
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            kernel,
            stride,
            padding,
        }
    }

    fn out_len(&self, len: usize) -> candle_core::Result<usize> {
        let padded = len + 2 * self.padding;
        if self.kernel == 0
            || self.stride == 0
            || padded < self.kernel
            || self.padding * 2 > self.kernel
        {
            candle_core::bail!(
                "max pool kernel {} stride {} padding {} does not fit a side of {len}",
                self.kernel,
                self.stride,
                self.padding
            );
        }
        Ok((padded - self.kernel) / self.stride + 1)
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 {
            x.contiguous()?.apply_op1(*self)
        } else {
            self.forward_composed(x)
        }
    }

    /// Backend-neutral version: max over the k×k shifted, strided views of
    /// the input padded with −∞.
    pub fn forward_composed(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let (ho, wo) = (self.out_len(h)?, self.out_len(w)?);
        let p = self.padding;
        let xp = if p > 0 {
            let side =
                Tensor::full(f32::NEG_INFINITY, (n, c, h, p), x.device())?.to_dtype(x.dtype())?;
            let xp = Tensor::cat(&[&side, x, &side], 3)?;
            let top = Tensor::full(f32::NEG_INFINITY, (n, c, p, w + 2 * p), x.device())?
                .to_dtype(x.dtype())?;
            Tensor::cat(&[&top, &xp, &top], 2)?
        } else {
            x.clone()
        };
        let mut out: Option<Tensor> = None;
        for ky in 0..self.kernel {
            let rows: Vec<u32> = (0..ho).map(|i| (ky + i * self.stride) as u32).collect();
            let rows = Tensor::new(rows.as_slice(), x.device())?;
            let xr = xp.index_select(&rows, 2)?;
            for kx in 0..self.kernel {
                let cols: Vec<u32> = (0..wo).map(|i| (kx + i * self.stride) as u32).collect();
                let cols = Tensor::new(cols.as_slice(), x.device())?;
                let v = xr.index_select(&cols, 3)?;
                out = Some(match out {
                    None => v,
                    Some(m) => m.maximum(&v)?,
                });
            }
        }
        out.ok_or_else(|| candle_core::Error::Msg("max pool with an empty kernel".into()))
    }

    /// Each window's first maximum along output row `oy` of one plane:
    /// its value into `best` and its index within the plane into `arg`
    /// ([`NO_INDEX`] for a window that is all padding, whose value is
    /// −∞). The windows are visited a kernel offset at a time across the
    /// whole row, in the window's row-major order, so each offset is one
    /// branch-free strided loop; a later entry wins only when it is
    /// greater, or NaN over a number, which keeps the first maximum.
    #[inline(always)]
    fn row_argmax(
        &self,
        plane: &[f32],
        (h, w): (usize, usize),
        oy: usize,
        best: &mut [f32],
        arg: &mut [u32],
    ) {
        // The stem pools' stride as a constant, so their loads become
        // vector shuffles.
        match self.stride {
            2 => self.row_argmax_strided::<2>(plane, (h, w), oy, best, arg),
            1 => self.row_argmax_strided::<1>(plane, (h, w), oy, best, arg),
            _ => self.row_argmax_strided::<0>(plane, (h, w), oy, best, arg),
        }
    }

    /// [`Self::row_argmax`] for stride `S` (0: `self.stride`).
    #[inline(always)]
    fn row_argmax_strided<const S: usize>(
        &self,
        plane: &[f32],
        (h, w): (usize, usize),
        oy: usize,
        best: &mut [f32],
        arg: &mut [u32],
    ) {
        let (k, p) = (self.kernel, self.padding);
        let s = if S == 0 { self.stride } else { S };
        best.fill(f32::NEG_INFINITY);
        arg.fill(NO_INDEX);
        let wo = best.len().min(arg.len());
        for ky in 0..k {
            let Some(y) = (oy * s + ky).checked_sub(p).filter(|&y| y < h) else {
                continue;
            };
            let row = &plane[y * w..(y + 1) * w];
            for kx in 0..k {
                // Outputs whose column ox·s + kx − p lies inside the row.
                let first = p.saturating_sub(kx).div_ceil(s);
                let end = match (w + p).checked_sub(kx + 1) {
                    Some(last) => (last / s + 1).min(wo),
                    None => 0,
                };
                if first >= end {
                    continue;
                }
                let col0 = first * s + kx - p;
                assert!(
                    col0 + (end - 1 - first) * s < w,
                    "max pool: column out of row"
                );
                // A plane's indices fit in u32 (checked by the callers).
                let index0 = (y * w + col0) as u32;
                let windows = best[first..end].iter_mut().zip(&mut arg[first..end]);
                for (i, (m, a)) in windows.enumerate() {
                    // SAFETY: i < end − first, so col0 + i·s < w (asserted).
                    let v = unsafe { *row.get_unchecked(col0 + i * s) };
                    let take = *a == NO_INDEX || v > *m || (v.is_nan() && !m.is_nan());
                    *m = if take { v } else { *m };
                    *a = if take { index0 + (i * s) as u32 } else { *a };
                }
            }
        }
    }
}

/// [`MaxPool2d::row_argmax`]'s index of a window with no input.
const NO_INDEX: u32 = u32::MAX;

/// Refuses a plane too large for [`MaxPool2d::row_argmax`]'s indices.
fn check_plane(h: usize, w: usize) -> candle_core::Result<()> {
    if h.saturating_mul(w) >= NO_INDEX as usize {
        candle_core::bail!("max pool: a {h}×{w} plane is too large");
    }
    Ok(())
}

/// The f32 data of a contiguous CPU tensor; `what` names the caller in
/// errors.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(d) => d,
        _ => candle_core::bail!("{what}: only f32 is implemented on CPU"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// The state a fused op keeps between its forward and backward passes
/// (behind a mutex, since candle holds the op as `&self`); a poisoned lock
/// is an error naming `what`, not a panic.
pub(crate) fn lock_state<'a, T>(
    m: &'a std::sync::Mutex<T>,
    what: &str,
) -> candle_core::Result<std::sync::MutexGuard<'a, T>> {
    m.lock()
        .map_err(|_| candle_core::Error::Msg(format!("{what} lock poisoned")))
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "max-pool2d-padded"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = layout.shape().dims4()?;
        let (ho, wo) = (self.out_len(h)?, self.out_len(w)?);
        check_plane(h, w)?;
        let input = contiguous_f32(storage, layout, "max pool forward")?;
        let mut out = vec![0f32; n * c * ho * wo];
        out.par_chunks_mut((ho * wo).max(1))
            .zip(input.par_chunks((h * w).max(1)))
            .for_each(|(dst, plane)| {
                let mut arg = vec![NO_INDEX; wo];
                simd(
                    #[inline(always)]
                    move || {
                        for (oy, best) in dst.chunks_exact_mut(wo.max(1)).enumerate() {
                            self.row_argmax(plane, (h, w), oy, best, &mut arg);
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, ho, wo))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = arg
            .contiguous()?
            .apply_op2_no_bwd(&grad_res.contiguous()?, &MaxPool2dGrad(*self))?;
        Ok(Some(grad))
    }
}

/// Scatters the output gradient to each window's first maximum.
struct MaxPool2dGrad(MaxPool2d);

impl CustomOp2 for MaxPool2dGrad {
    fn name(&self) -> &'static str {
        "max-pool2d-padded-grad"
    }

    fn cpu_fwd(
        &self,
        arg: &CpuStorage,
        arg_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let pool = self.0;
        let (n, c, h, w) = arg_layout.shape().dims4()?;
        let (ho, wo) = (pool.out_len(h)?, pool.out_len(w)?);
        if grad_layout.shape().dims() != [n, c, ho, wo] {
            candle_core::bail!(
                "max pool backward: gradient shape {:?} does not match",
                grad_layout.shape()
            );
        }
        check_plane(h, w)?;
        let input = contiguous_f32(arg, arg_layout, "max pool backward")?;
        let grad = contiguous_f32(grad, grad_layout, "max pool backward")?;
        let mut out = vec![0f32; n * c * h * w];
        out.par_chunks_mut((h * w).max(1))
            .zip(
                input
                    .par_chunks((h * w).max(1))
                    .zip(grad.par_chunks((ho * wo).max(1))),
            )
            .for_each(|(dst, (plane, g))| {
                let (mut best, mut arg) = (vec![0f32; wo], vec![NO_INDEX; wo]);
                simd(
                    #[inline(always)]
                    move || {
                        for (oy, g) in g.chunks_exact(wo.max(1)).enumerate() {
                            pool.row_argmax(plane, (h, w), oy, &mut best, &mut arg);
                            for (&i, &g) in arg.iter().zip(g) {
                                if let Some(d) = dst.get_mut(i as usize) {
                                    *d += g;
                                }
                            }
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(out), arg_layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::MaxPool2d;

    /// Each window's first maximum in row-major order (NaN winning), one
    /// window at a time: the definition the row-wise op must match.
    fn window_argmax(
        pool: MaxPool2d,
        plane: &[f32],
        (h, w): (usize, usize),
        (oy, ox): (usize, usize),
    ) -> Option<usize> {
        let mut best: Option<(usize, f32)> = None;
        for ky in 0..pool.kernel {
            for kx in 0..pool.kernel {
                let y = (oy * pool.stride + ky).checked_sub(pool.padding);
                let x = (ox * pool.stride + kx).checked_sub(pool.padding);
                let (Some(y), Some(x)) = (y.filter(|&y| y < h), x.filter(|&x| x < w)) else {
                    continue;
                };
                let v = plane[y * w + x];
                match best {
                    Some((_, m)) if !(v > m || v.is_nan() && !m.is_nan()) => {}
                    _ => best = Some((y * w + x, v)),
                }
            }
        }
        best.map(|(i, _)| i)
    }

    #[test]
    fn rows_of_windows_match_the_window_by_window_definition() {
        // Few distinct values, so windows hold ties; and some NaN and −∞.
        let mut state = 0x2545_f491_u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        for (pool, h, w) in [
            (MaxPool2d::new(3, 2, 1), 9, 11),
            (MaxPool2d::new(3, 2, 1), 8, 1),
            (MaxPool2d::new(2, 2, 0), 7, 9),
            (MaxPool2d::new(3, 1, 1), 5, 6),
            (MaxPool2d::new(3, 3, 0), 10, 7),
            (MaxPool2d::new(4, 2, 2), 6, 5),
        ] {
            let planes = 3;
            let values: Vec<f32> = (0..planes * h * w)
                .map(|_| match next() % 16 {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    2 => -0.0,
                    r => (r % 4) as f32,
                })
                .collect();
            let x = Var::from_tensor(
                &Tensor::from_vec(values.clone(), (1, planes, h, w), &Device::Cpu).unwrap(),
            )
            .unwrap();
            let out = pool.forward(x.as_tensor()).unwrap();
            let (_, _, ho, wo) = out.dims4().unwrap();
            let weights: Vec<f32> = (0..planes * ho * wo).map(|i| 1.0 + i as f32).collect();
            let weights = Tensor::from_vec(weights.clone(), out.shape(), &Device::Cpu).unwrap();
            let grads = (&out * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let got_out = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got_grad = grads.get(x.as_tensor()).unwrap();
            let got_grad = got_grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();

            let mut want_grad = vec![0f32; planes * h * w];
            for c in 0..planes {
                let plane = &values[c * h * w..(c + 1) * h * w];
                for oy in 0..ho {
                    for ox in 0..wo {
                        let o = (c * ho + oy) * wo + ox;
                        let want = window_argmax(pool, plane, (h, w), (oy, ox));
                        let value = want.map_or(f32::NEG_INFINITY, |i| plane[i]);
                        assert_eq!(
                            got_out[o].to_bits(),
                            value.to_bits(),
                            "{pool:?} {h}×{w}: output {o}"
                        );
                        if let Some(i) = want {
                            want_grad[c * h * w + i] += 1.0 + o as f32;
                        }
                    }
                }
            }
            assert_eq!(got_grad, want_grad, "{pool:?} {h}×{w}: gradient");
        }
    }
}
