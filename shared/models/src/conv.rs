//! A CPU convolution for training, with its own backward pass.
//!
//! candle's CPU `conv2d` backward computes the input gradient with a direct
//! `conv_transpose2d` (one dot product per input element) and the weight
//! gradient as a convolution whose kernel is the whole output gradient, and
//! its forward allocates the im2col matrix of the whole batch on every
//! call. On a DenseNet-121 training step those were the largest costs. Here
//! all three products are `gemm` calls on one image's im2col matrix, held
//! in a per-thread buffer that is reused across layers:
//!
//! ```text
//! forward       out[n] = W · col(x[n])
//! input grad    dx[n]  = col2im(Wᵀ · g[n])
//! weight grad   dW     = Σₙ g[n] · col(x[n])ᵀ
//! ```
//!
//! A 1×1 convolution with stride 1 and no padding needs no im2col at all,
//! and a 3×3 one with stride 1 and padding 1 (most of SE-ResNet's) goes
//! through Winograd F(2×2, 3×3) instead (`winograd.rs`), which needs 16
//! multiplies per 2×2 output tile and channel pair where im2col needs 36.
//! Gradients are computed only for arguments that need one (the network's
//! input image does not). f32, square kernels, no groups or dilation;
//! anything else, and every other device, goes through candle's `conv2d`.
//! Results do not depend on scheduling: images are split into fixed chunks
//! per thread and the weight gradient's partial sums are added in chunk
//! order.

use std::cell::RefCell;
use std::ops::Range;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::pool::contiguous_f32;
use crate::vector::simd;
use crate::winograd;

/// Output pixels per im2col tile: bounds each thread's im2col buffer to
/// `cin·k² × TILE_PIXELS` floats whatever the image size.
const TILE_PIXELS: usize = 2048;

/// The shape of one convolution call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) n: usize,
    pub(crate) cin: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) cout: usize,
    pub(crate) k: usize,
    pub(crate) stride: usize,
    pub(crate) pad: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    pub(crate) fn new(
        x: &Layout,
        weight: &Layout,
        stride: usize,
        pad: usize,
    ) -> candle_core::Result<Geometry> {
        let (n, cin, h, w) = x.shape().dims4()?;
        let (cout, wcin, k, k2) = weight.shape().dims4()?;
        if wcin != cin || k != k2 || k == 0 || stride == 0 {
            candle_core::bail!(
                "conv2d: input {:?} and kernel {:?} (stride {stride}) do not fit",
                x.shape(),
                weight.shape()
            );
        }
        if h + 2 * pad < k || w + 2 * pad < k {
            candle_core::bail!(
                "conv2d: a {k}×{k} kernel does not fit a {h}×{w} input padded by {pad}"
            );
        }
        Ok(Geometry {
            n,
            cin,
            h,
            w,
            cout,
            k,
            stride,
            pad,
            ho: (h + 2 * pad - k) / stride + 1,
            wo: (w + 2 * pad - k) / stride + 1,
        })
    }

    /// One image's convolution (the fused inference path's).
    pub(crate) fn single_image(
        cin: usize,
        h: usize,
        w: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Geometry {
        Geometry {
            n: 1,
            cin,
            h,
            w,
            cout,
            k,
            stride,
            pad,
            ho: (h + 2 * pad).saturating_sub(k) / stride + 1,
            wo: (w + 2 * pad).saturating_sub(k) / stride + 1,
        }
    }

    /// Rows of the im2col matrix (and columns of the weight matrix).
    pub(crate) fn kk(&self) -> usize {
        self.cin * self.k * self.k
    }

    fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }

    fn out_len(&self) -> usize {
        self.cout * self.ho * self.wo
    }

    /// A 1×1, stride 1, unpadded convolution: the input is its own im2col.
    fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// Output columns `lo..hi` whose input column for kernel column `kx`
    /// lies inside the image: 0 ≤ ox·s − p + kx < w.
    fn valid_columns(&self, kx: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.pad);
        let lo = p.saturating_sub(kx).div_ceil(s);
        let hi = if self.w + p > kx {
            ((self.w + p - kx - 1) / s + 1).min(self.wo)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// Input row for output row `oy` and kernel row `ky`, if inside.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let iy = (oy * self.stride + ky).checked_sub(self.pad)?;
        (iy < self.h).then_some(iy)
    }

    /// Output rows `rows` as im2col columns:
    /// `col[(ci·k + ky)·k + kx, (oy − r0)·wo + ox] = x[ci, oy·s − p + ky, ox·s − p + kx]`,
    /// zero outside the image. `col` must be `kk × rows.len()·wo`.
    pub(crate) fn im2col(&self, x: &[f32], rows: Range<usize>, col: &mut [f32]) {
        simd(
            #[inline(always)]
            move || self.im2col_rows(x, rows, col),
        )
    }

    #[inline(always)]
    fn im2col_rows(&self, x: &[f32], rows: Range<usize>, col: &mut [f32]) {
        let (k, s, p) = (self.k, self.stride, self.pad);
        let (h, w, wo) = (self.h, self.w, self.wo);
        let cols = rows.len() * wo;
        for ci in 0..self.cin {
            let plane = &x[ci * h * w..(ci + 1) * h * w];
            for ky in 0..k {
                for kx in 0..k {
                    let row = (ci * k + ky) * k + kx;
                    let dst_row = &mut col[row * cols..(row + 1) * cols];
                    let (lo, hi) = self.valid_columns(kx);
                    for (t, oy) in rows.clone().enumerate() {
                        let dst = &mut dst_row[t * wo..(t + 1) * wo];
                        let iy = match self.input_row(oy, ky) {
                            Some(iy) if lo < hi => iy,
                            _ => {
                                dst.fill(0.0);
                                continue;
                            }
                        };
                        dst[..lo].fill(0.0);
                        dst[hi..].fill(0.0);
                        let src = &plane[iy * w..(iy + 1) * w];
                        let ix0 = lo * s + kx - p;
                        let src = &src[ix0..ix0 + (hi - lo - 1) * s + 1];
                        gather_strided(&mut dst[lo..hi], src, s);
                    }
                }
            }
        }
    }

    /// The adjoint of [`Self::im2col`]: adds each column entry back to the
    /// input pixel it was read from.
    pub(crate) fn col2im(&self, col: &[f32], rows: Range<usize>, dx: &mut [f32]) {
        simd(
            #[inline(always)]
            move || self.col2im_rows(col, rows, dx),
        )
    }

    #[inline(always)]
    fn col2im_rows(&self, col: &[f32], rows: Range<usize>, dx: &mut [f32]) {
        let (k, s, p) = (self.k, self.stride, self.pad);
        let (h, w, wo) = (self.h, self.w, self.wo);
        let cols = rows.len() * wo;
        for ci in 0..self.cin {
            let plane = &mut dx[ci * h * w..(ci + 1) * h * w];
            for ky in 0..k {
                for kx in 0..k {
                    let row = (ci * k + ky) * k + kx;
                    let src_row = &col[row * cols..(row + 1) * cols];
                    let (lo, hi) = self.valid_columns(kx);
                    if lo >= hi {
                        continue;
                    }
                    for (t, oy) in rows.clone().enumerate() {
                        let Some(iy) = self.input_row(oy, ky) else {
                            continue;
                        };
                        let src = &src_row[t * wo + lo..t * wo + hi];
                        let dst = &mut plane[iy * w..(iy + 1) * w];
                        let ix0 = lo * s + kx - p;
                        let dst = &mut dst[ix0..ix0 + (hi - lo - 1) * s + 1];
                        scatter_add_strided(dst, src, s);
                    }
                }
            }
        }
    }

    /// Output row tiles of at most [`TILE_PIXELS`] pixels (at least one
    /// row each).
    pub(crate) fn row_tiles(&self) -> impl Iterator<Item = Range<usize>> {
        let per = (TILE_PIXELS / self.wo.max(1)).max(1);
        let ho = self.ho;
        (0..ho.div_ceil(per)).map(move |t| t * per..((t + 1) * per).min(ho))
    }

    /// Images per task: the batch split into one fixed chunk per thread.
    fn chunk(&self) -> usize {
        self.n.div_ceil(rayon::current_num_threads().max(1)).max(1)
    }

    /// With fewer images than threads, each multiply uses all threads.
    fn parallelism(&self) -> Parallelism {
        if self.n < rayon::current_num_threads() {
            Parallelism::Rayon(0)
        } else {
            Parallelism::None
        }
    }
}

/// `dst[j] = src[j·s]`, `src` holding exactly the entries read; stride 2
/// (the stems and downsampling convolutions) as pairs, which vectorise.
#[inline(always)]
fn gather_strided(dst: &mut [f32], src: &[f32], s: usize) {
    match s {
        1 => dst.copy_from_slice(&src[..dst.len()]),
        2 => {
            let (pairs, last) = src.as_chunks::<2>();
            for (d, pair) in dst.iter_mut().zip(pairs) {
                *d = pair[0];
            }
            if let (Some(d), Some(&v)) = (dst.get_mut(pairs.len()), last.first()) {
                *d = v;
            }
        }
        _ => {
            for (d, run) in dst.iter_mut().zip(src.chunks(s)) {
                *d = run[0];
            }
        }
    }
}

/// `dst[j·s] += src[j]` (the adjoint of [`gather_strided`]).
#[inline(always)]
fn scatter_add_strided(dst: &mut [f32], src: &[f32], s: usize) {
    match s {
        1 => {
            for (d, v) in dst.iter_mut().zip(src) {
                *d += v;
            }
        }
        2 => {
            let (pairs, last) = dst.as_chunks_mut::<2>();
            let done = pairs.len();
            for (pair, v) in pairs.iter_mut().zip(src) {
                pair[0] += v;
            }
            if let (Some(d), Some(v)) = (last.first_mut(), src.get(done)) {
                *d += v;
            }
        }
        _ => {
            for (run, v) in dst.chunks_mut(s).zip(src) {
                run[0] += v;
            }
        }
    }
}

thread_local! {
    /// Each thread's im2col buffer, reused across layers and calls.
    static COL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each thread's transposed gradient (see [`add_weight_product`]).
    static TRANSPOSED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `len` floats of this thread's `buffer`, or of a new
/// vector should the thread already be using it (a task stolen while it
/// waits inside a parallel call). The contents are stale: every user
/// writes before it reads.
pub(crate) fn with_thread_buffer<T>(
    buffer: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> T,
) -> T {
    buffer.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0f32; len]),
    })
}

/// Runs `f` with this thread's im2col buffer sized to `len`.
pub(crate) fn with_col<T>(len: usize, f: impl FnOnce(&mut [f32]) -> T) -> T {
    with_thread_buffer(&COL, len, f)
}

/// A row-major (or transposed, through its strides) f32 matrix operand.
#[derive(Clone, Copy)]
pub(crate) struct MatRef {
    pub ptr: *const f32,
    /// Distance between consecutive rows and columns, in elements.
    pub row_stride: usize,
    pub col_stride: usize,
}

impl MatRef {
    pub fn rows(data: &[f32], row_len: usize) -> MatRef {
        MatRef {
            ptr: data.as_ptr(),
            row_stride: row_len,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with rows of `row_len`.
    pub fn transposed(data: &[f32], row_len: usize) -> MatRef {
        MatRef {
            ptr: data.as_ptr(),
            row_stride: 1,
            col_stride: row_len,
        }
    }
}

/// `dst[m × n] (+)= lhs[m × k] · rhs[k × n]`, `dst` row-major with rows
/// `dst_row_stride` apart; adds to `dst` when `accumulate`.
///
/// # Safety
/// `dst` must be valid for writes of `m` rows of `n` floats, and the
/// operands valid for reads of their shapes through their strides; `dst`
/// must not overlap them.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul(
    dst: *mut f32,
    dst_row_stride: usize,
    accumulate: bool,
    lhs: MatRef,
    rhs: MatRef,
    m: usize,
    n: usize,
    k: usize,
    parallelism: Parallelism,
) {
    let dst = MatMut {
        ptr: dst,
        row_stride: dst_row_stride,
        col_stride: 1,
    };
    gemm_into(dst, accumulate, lhs, rhs, (m, n, k), parallelism)
}

/// A matrix written through its strides.
#[derive(Clone, Copy)]
struct MatMut {
    ptr: *mut f32,
    row_stride: usize,
    col_stride: usize,
}

/// `dst[m × n] (+)= lhs[m × k] · rhs[k × n]` (see [`matmul`]).
///
/// # Safety
/// As [`matmul`], for `dst` through its strides.
unsafe fn gemm_into(
    dst: MatMut,
    accumulate: bool,
    lhs: MatRef,
    rhs: MatRef,
    (m, n, k): (usize, usize, usize),
    parallelism: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst.ptr,
        dst.col_stride as isize,
        dst.row_stride as isize,
        accumulate,
        lhs.ptr,
        lhs.col_stride as isize,
        lhs.row_stride as isize,
        rhs.ptr,
        rhs.col_stride as isize,
        rhs.row_stride as isize,
        if accumulate { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

/// A weight gradient's product, `(a · bᵀ)ᵀ` into `dst_t` (n × m), or
/// added to it when `accumulate`: `a` is an output gradient (m × k, rows
/// `a_stride` apart) and `b` the input the weights saw (n × k, rows
/// `b_stride` apart), both with their rows along the k pixels.
///
/// gemm packs a left operand whose rows run along k one float at a time,
/// and `a · bᵀ` into a row-major result makes `b` that operand: its
/// packing cost more than the product's arithmetic (16 % of the tiny
/// config's training). Here `a`, the smaller of the two (output channels
/// against input channels × kernel taps), is transposed into a thread
/// buffer and the result written column-major, so gemm reads both
/// operands as they lie.
pub(crate) fn add_weight_product(
    dst_t: &mut [f32],
    accumulate: bool,
    (a, a_stride): (&[f32], usize),
    (b, b_stride): (&[f32], usize),
    (m, n, k): (usize, usize, usize),
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Internal invariants of the callers' geometry, not input checks.
    assert!(
        dst_t.len() >= m * n,
        "weight product: destination too short"
    );
    assert!(
        a.len() >= (m - 1) * a_stride + k && b.len() >= (n - 1) * b_stride + k,
        "weight product: operand too short"
    );
    with_thread_buffer(&TRANSPOSED, m * k, |at| {
        transpose_into((a, a_stride), m, k, at);
        let dst = MatMut {
            ptr: dst_t.as_mut_ptr(),
            row_stride: 1,
            col_stride: m,
        };
        let lhs = MatRef {
            ptr: at.as_ptr(),
            row_stride: 1,
            col_stride: m,
        };
        let rhs = MatRef::transposed(&b[..(n - 1) * b_stride + k], b_stride);
        // SAFETY: `dst` is m × n column-major in `dst_t`, `lhs` the m × k
        // transpose in `at`, `rhs` the k × n transpose of `b`: each checked
        // above to hold its shape, and `dst_t` overlaps neither.
        unsafe { gemm_into(dst, accumulate, lhs, rhs, (m, n, k), parallelism) }
    })
}

/// `dst[c·rows + r] = src[r·stride + c]`: the `rows × cols` matrix `src`
/// (rows `stride` apart) transposed, in tiles that stay in cache.
pub(crate) fn transpose_into(
    (src, stride): (&[f32], usize),
    rows: usize,
    cols: usize,
    dst: &mut [f32],
) {
    const TILE: usize = 16;
    for r0 in (0..rows).step_by(TILE) {
        let r1 = (r0 + TILE).min(rows);
        for c0 in (0..cols).step_by(TILE) {
            let c1 = (c0 + TILE).min(cols);
            for r in r0..r1 {
                let row = &src[r * stride + c0..r * stride + c1];
                for (c, &v) in (c0..c1).zip(row) {
                    dst[c * rows + r] = v;
                }
            }
        }
    }
}

/// Whether [`conv2d`] takes the fast path for these operands.
pub(crate) fn fast_path_applies(
    x: &Tensor,
    weight: &Tensor,
    groups: usize,
    dilation: usize,
) -> bool {
    x.device().is_cpu()
        && x.dtype() == candle_core::DType::F32
        && weight.dtype() == candle_core::DType::F32
        && groups == 1
        && dilation == 1
        && weight.dims().len() == 4
        && weight.dims()[2] == weight.dims()[3]
}

/// Bias-free convolution of `x` (N, Cin, H, W) with `weight`
/// (Cout, Cin, k, k), differentiable; CPU and f32 only (see
/// [`fast_path_applies`]).
pub(crate) fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, Conv2dOp { stride, padding })
}

#[derive(Debug, Clone, Copy)]
struct Conv2dOp {
    stride: usize,
    padding: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "conv2d-im2col-gemm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geometry::new(xl, wl, self.stride, self.padding)?;
        let x = contiguous_f32(xs, xl, "conv2d forward")?;
        let weight = contiguous_f32(ws, wl, "conv2d forward")?;
        let shape = Shape::from((g.n, g.cout, g.ho, g.wo));
        if winograd::applies(&g) {
            return Ok((CpuStorage::F32(winograd::forward(&g, x, weight)), shape));
        }
        let (hw_out, kk) = (g.ho * g.wo, g.kk());
        let mut out = vec![0f32; g.n * g.out_len()];
        let parallelism = g.parallelism();
        let chunk = g.chunk();
        out.par_chunks_mut(chunk * g.out_len())
            .zip(x.par_chunks(chunk * g.in_len()))
            .for_each(|(out, x)| {
                for (out, x) in out.chunks_mut(g.out_len()).zip(x.chunks(g.in_len())) {
                    let lhs = MatRef::rows(weight, kk);
                    // Output columns offset..offset + cols = W · rhs.
                    // SAFETY: `out` holds cout rows of hw_out floats and
                    // offset + cols ≤ hw_out; W is cout × kk and `rhs`
                    // kk × cols.
                    let mut run = |offset: usize, rhs: MatRef, cols: usize| unsafe {
                        matmul(
                            out.as_mut_ptr().add(offset),
                            hw_out,
                            false,
                            lhs,
                            rhs,
                            g.cout,
                            cols,
                            kk,
                            parallelism,
                        )
                    };
                    if g.is_pointwise() {
                        run(0, MatRef::rows(x, hw_out), hw_out);
                        continue;
                    }
                    for rows in g.row_tiles() {
                        let cols = rows.len() * g.wo;
                        with_col(kk * cols, |col| {
                            g.im2col(x, rows.clone(), col);
                            run(rows.start * g.wo, MatRef::rows(col, cols), cols);
                        });
                    }
                }
            });
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _out: &Tensor,
        grad_out: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_out = grad_out.contiguous()?;
        let grad_x = if x.track_op() {
            Some(grad_out.apply_op2_no_bwd(
                weight,
                &Conv2dInputGrad {
                    op: *self,
                    h: x.dim(2)?,
                    w: x.dim(3)?,
                },
            )?)
        } else {
            None
        };
        let grad_weight = if weight.track_op() {
            Some(x.apply_op2_no_bwd(
                &grad_out,
                &Conv2dWeightGrad {
                    op: *self,
                    k: weight.dim(2)?,
                    cout: weight.dim(0)?,
                },
            )?)
        } else {
            None
        };
        Ok((grad_x, grad_weight))
    }
}

/// `dx[n] = col2im(Wᵀ · g[n])`; arguments (grad_out, weight).
struct Conv2dInputGrad {
    op: Conv2dOp,
    h: usize,
    w: usize,
}

impl CustomOp2 for Conv2dInputGrad {
    fn name(&self) -> &'static str {
        "conv2d-im2col-gemm-input-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, _, _, _) = gl.shape().dims4()?;
        let (_, cin, _, _) = wl.shape().dims4()?;
        let x_layout = Layout::contiguous((n, cin, self.h, self.w));
        let g = Geometry::new(&x_layout, wl, self.op.stride, self.op.padding)?;
        if gl.shape().dims() != [g.n, g.cout, g.ho, g.wo] {
            candle_core::bail!(
                "conv2d backward: gradient {:?} does not match the output of {g:?}",
                gl.shape()
            );
        }
        let grad = contiguous_f32(gs, gl, "conv2d backward")?;
        let weight = contiguous_f32(ws, wl, "conv2d backward")?;
        if winograd::applies(&g) {
            let dx = winograd::input_grad(&g, grad, weight);
            return Ok((CpuStorage::F32(dx), x_layout.shape().clone()));
        }
        let (hw_out, kk) = (g.ho * g.wo, g.kk());
        let mut dx = vec![0f32; g.n * g.in_len()];
        let parallelism = g.parallelism();
        let chunk = g.chunk();
        dx.par_chunks_mut(chunk * g.in_len())
            .zip(grad.par_chunks(chunk * g.out_len()))
            .for_each(|(dx, grad)| {
                for (dx, grad) in dx.chunks_mut(g.in_len()).zip(grad.chunks(g.out_len())) {
                    let lhs = MatRef::transposed(weight, kk);
                    if g.is_pointwise() {
                        // SAFETY: `dx` holds cin × h·w = kk × hw_out
                        // floats; Wᵀ is kk × cout, the gradient cout × hw_out.
                        unsafe {
                            matmul(
                                dx.as_mut_ptr(),
                                hw_out,
                                false,
                                lhs,
                                MatRef::rows(grad, hw_out),
                                kk,
                                hw_out,
                                g.cout,
                                parallelism,
                            )
                        };
                        continue;
                    }
                    for rows in g.row_tiles() {
                        let cols = rows.len() * g.wo;
                        with_col(kk * cols, |col| {
                            // SAFETY: `col` holds kk × cols floats; the
                            // gradient's columns of these rows are cout ×
                            // cols, hw_out apart.
                            unsafe {
                                matmul(
                                    col.as_mut_ptr(),
                                    cols,
                                    false,
                                    lhs,
                                    MatRef::rows(&grad[rows.start * g.wo..], hw_out),
                                    kk,
                                    cols,
                                    g.cout,
                                    parallelism,
                                )
                            };
                            g.col2im(col, rows.clone(), dx);
                        });
                    }
                }
            });
        Ok((CpuStorage::F32(dx), x_layout.shape().clone()))
    }
}

/// `dW = Σₙ g[n] · col(x[n])ᵀ`; arguments (x, grad_out).
struct Conv2dWeightGrad {
    op: Conv2dOp,
    k: usize,
    cout: usize,
}

impl CustomOp2 for Conv2dWeightGrad {
    fn name(&self) -> &'static str {
        "conv2d-im2col-gemm-weight-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let cin = xl.shape().dims4()?.1;
        let w_layout = Layout::contiguous((self.cout, cin, self.k, self.k));
        let g = Geometry::new(xl, &w_layout, self.op.stride, self.op.padding)?;
        if gl.shape().dims() != [g.n, g.cout, g.ho, g.wo] {
            candle_core::bail!(
                "conv2d backward: gradient {:?} does not match the output of {g:?}",
                gl.shape()
            );
        }
        let x = contiguous_f32(xs, xl, "conv2d backward")?;
        let grad = contiguous_f32(gs, gl, "conv2d backward")?;
        if winograd::applies(&g) {
            let dw = winograd::weight_grad(&g, x, grad);
            return Ok((CpuStorage::F32(dw), w_layout.shape().clone()));
        }
        let (hw_out, kk) = (g.ho * g.wo, g.kk());
        let parallelism = g.parallelism();
        let chunk = g.chunk();
        // Each chunk of images sums its dWᵀ (kk × cout).
        let partials: Vec<Vec<f32>> = x
            .par_chunks(chunk * g.in_len())
            .zip(grad.par_chunks(chunk * g.out_len()))
            .map(|(x, grad)| {
                let mut dw_t = vec![0f32; g.cout * kk];
                for (i, (x, grad)) in x
                    .chunks(g.in_len())
                    .zip(grad.chunks(g.out_len()))
                    .enumerate()
                {
                    // dWᵀ (+)= (grad[:, offset..offset + cols] · inputᵀ)ᵀ,
                    // the input being kk × cols, rows `stride` apart.
                    let run = |dw_t: &mut [f32],
                               accumulate: bool,
                               offset: usize,
                               input: (&[f32], usize),
                               cols: usize| {
                        add_weight_product(
                            dw_t,
                            accumulate,
                            (&grad[offset..], hw_out),
                            input,
                            (g.cout, kk, cols),
                            parallelism,
                        )
                    };
                    if g.is_pointwise() {
                        run(&mut dw_t, i > 0, 0, (x, hw_out), hw_out);
                        continue;
                    }
                    for rows in g.row_tiles() {
                        let cols = rows.len() * g.wo;
                        let accumulate = i > 0 || rows.start > 0;
                        with_col(kk * cols, |col| {
                            g.im2col(x, rows.clone(), col);
                            run(&mut dw_t, accumulate, rows.start * g.wo, (col, cols), cols);
                        });
                    }
                }
                dw_t
            })
            .collect();
        let mut partials = partials.into_iter();
        let mut dw_t = partials.next().unwrap_or_else(|| vec![0f32; g.cout * kk]);
        for partial in partials {
            dw_t.iter_mut().zip(&partial).for_each(|(d, p)| *d += p);
        }
        let mut dw = vec![0f32; g.cout * kk];
        transpose_into((&dw_t, g.cout), kk, g.cout, &mut dw);
        Ok((CpuStorage::F32(dw), w_layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{dot, max_rel_diff};
    use candle_core::Var;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        crate::test_util::random(shape, seed, -1.0, 1.0)
    }

    /// Forward, input gradient and weight gradient equal candle's own
    /// conv2d for the shapes the networks use and some awkward ones.
    #[test]
    fn matches_candle_conv2d_forward_and_gradients() {
        // (n, cin, h, w, cout, k, stride, pad)
        let cases = [
            (2, 3, 17, 15, 5, 7, 2, 3), // stem: 7×7/2, odd sizes
            (3, 6, 9, 9, 4, 3, 1, 1),   // dense layer 3×3
            (1, 5, 8, 10, 7, 1, 1, 0),  // pointwise, one image
            (4, 4, 8, 8, 3, 1, 2, 0),   // strided 1×1 (SE-ResNet shortcut)
            (2, 3, 11, 9, 2, 3, 2, 1),  // strided 3×3
            (5, 2, 4, 4, 3, 3, 1, 0),   // valid only, more images than threads
            (1, 2, 3, 3, 2, 5, 1, 2),   // kernel larger than the image
            (1, 2, 10, 13, 3, 3, 3, 1), // stride 3: the general strided copy
        ];
        for (i, &(n, cin, h, w, cout, k, stride, pad)) in cases.iter().enumerate() {
            let x = Var::from_tensor(&random(&[n, cin, h, w], 2 * i as u64)).unwrap();
            let weight = Var::from_tensor(&random(&[cout, cin, k, k], 2 * i as u64 + 1)).unwrap();
            let upstream = random(
                &[
                    n,
                    cout,
                    (h + 2 * pad - k) / stride + 1,
                    (w + 2 * pad - k) / stride + 1,
                ],
                99,
            );

            let ours = conv2d(&x, &weight, stride, pad).unwrap();
            let theirs = x.conv2d(&weight, pad, stride, 1, 1).unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "case {i}");
            let d = max_rel_diff(&ours, &theirs);
            assert!(d < 1e-5, "case {i}: forward differs by {d}");

            let g_ours = crate::test_util::grads_of(&ours, &upstream);
            let g_theirs = crate::test_util::grads_of(&theirs, &upstream);
            for (name, var) in [("input", &x), ("weight", &weight)] {
                let a = g_ours.get(var).expect("our gradient");
                let b = g_theirs.get(var).expect("candle's gradient");
                let d = max_rel_diff(a, b);
                assert!(d < 1e-5, "case {i}: {name} gradient differs by {d}");
            }
        }
    }

    /// Both gradients are the adjoints of the forward map: for an upstream
    /// gradient v, ⟨dx, x⟩ = ⟨dW, W⟩ = ⟨conv(x, W), v⟩ (the convolution is
    /// linear in each argument). This holds for any shape, including the
    /// non-square strided ones where candle's own backward returns an input
    /// gradient of the wrong width, so it covers what the comparison with
    /// candle cannot.
    #[test]
    fn gradients_are_the_adjoints_of_the_forward() {
        let cases = [
            (4, 4, 7, 6, 3, 1, 2, 0),
            (2, 3, 10, 13, 5, 3, 2, 1),
            (3, 2, 9, 40, 4, 7, 2, 3),
            (1, 3, 70, 50, 2, 3, 1, 1), // several row tiles
        ];
        for (i, &(n, cin, h, w, cout, k, stride, pad)) in cases.iter().enumerate() {
            let x = Var::from_tensor(&random(&[n, cin, h, w], 10 + i as u64)).unwrap();
            let weight = Var::from_tensor(&random(&[cout, cin, k, k], 20 + i as u64)).unwrap();
            let y = conv2d(&x, &weight, stride, pad).unwrap();
            let v = random(y.dims(), 30 + i as u64);
            let grads = crate::test_util::grads_of(&y, &v);
            let dx = grads.get(&x).expect("input gradient");
            let dw = grads.get(&weight).expect("weight gradient");
            assert_eq!(dx.dims(), x.dims(), "case {i}");
            assert_eq!(dw.dims(), weight.dims(), "case {i}");
            let yv = dot(&y, &v);
            for (name, got) in [("input", dot(dx, &x)), ("weight", dot(dw, &weight))] {
                let err = (got - yv).abs() / yv.abs().max(1.0);
                assert!(
                    err < 1e-5,
                    "case {i}: ⟨d{name}, {name}⟩ = {got}, ⟨y, v⟩ = {yv}"
                );
            }
        }
    }

    /// An input that needs no gradient (the image) gets none, and the
    /// weight gradient is still right.
    #[test]
    fn skips_the_gradient_of_a_constant_input() {
        let x = random(&[2, 3, 12, 12], 5);
        let weight = Var::from_tensor(&random(&[4, 3, 3, 3], 6)).unwrap();
        let grads = conv2d(&x, &weight, 1, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(&x).is_none());
        let theirs = x
            .conv2d(&weight, 1, 1, 1, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let d = max_rel_diff(grads.get(&weight).unwrap(), theirs.get(&weight).unwrap());
        assert!(d < 1e-5, "weight gradient differs by {d}");
    }

    #[test]
    fn refuses_mismatched_channels() {
        let x = random(&[1, 3, 8, 8], 1);
        let weight = random(&[4, 2, 3, 3], 2);
        let err = conv2d(&x, &weight, 1, 1).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
    }
}
