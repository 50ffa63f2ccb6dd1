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

    /// Index (within the input plane) of the window's first maximum, or
    /// `None` for a window that is all padding.
    #[inline]
    fn argmax(&self, plane: &[f32], h: usize, w: usize, oy: usize, ox: usize) -> Option<usize> {
        let mut best: Option<(usize, f32)> = None;
        let y0 = (oy * self.stride) as isize - self.padding as isize;
        let x0 = (ox * self.stride) as isize - self.padding as isize;
        for ky in 0..self.kernel as isize {
            let y = y0 + ky;
            if y < 0 || y >= h as isize {
                continue;
            }
            for kx in 0..self.kernel as isize {
                let xx = x0 + kx;
                if xx < 0 || xx >= w as isize {
                    continue;
                }
                let idx = y as usize * w + xx as usize;
                let v = plane[idx];
                match best {
                    None => best = Some((idx, v)),
                    Some((_, m)) if v > m || v.is_nan() && !m.is_nan() => best = Some((idx, v)),
                    _ => {}
                }
            }
        }
        best.map(|(i, _)| i)
    }
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
        let input = contiguous_f32(storage, layout, "max pool forward")?;
        let mut out = vec![0f32; n * c * ho * wo];
        out.par_chunks_mut(ho * wo)
            .zip(input.par_chunks(h * w))
            .for_each(|(dst, plane)| {
                for oy in 0..ho {
                    for ox in 0..wo {
                        dst[oy * wo + ox] = match self.argmax(plane, h, w, oy, ox) {
                            Some(i) => plane[i],
                            None => f32::NEG_INFINITY,
                        };
                    }
                }
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
        let input = contiguous_f32(arg, arg_layout, "max pool backward")?;
        let grad = contiguous_f32(grad, grad_layout, "max pool backward")?;
        let mut out = vec![0f32; n * c * h * w];
        out.par_chunks_mut(h * w)
            .zip(input.par_chunks(h * w).zip(grad.par_chunks(ho * wo)))
            .for_each(|(dst, (plane, g))| {
                for oy in 0..ho {
                    for ox in 0..wo {
                        if let Some(i) = pool.argmax(plane, h, w, oy, ox) {
                            dst[i] += g[oy * wo + ox];
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), arg_layout.shape().clone()))
    }
}
