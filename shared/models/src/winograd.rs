//! Winograd F(2×2, 3×3) for the 3×3, stride 1, padding 1 convolutions of
//! training (Lavin & Gray, 2016), with both backward passes.
//!
//! Each 2×2 output tile is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for the 4×4 input
//! patch `d` around it, so the 36 multiplies per tile and channel pair of
//! the direct (im2col) convolution become 16, and those 16 are 16 matrix
//! products over all tiles at once:
//!
//! ```text
//! forward      M[ξ] = U[ξ] · V[ξ]           U = G g Gᵀ (cout × cin), V = Bᵀ d B (cin × tiles)
//! input grad   dV[ξ] = U[ξ]ᵀ · dM[ξ]        dM = A dY Aᵀ, dx += B dV Bᵀ
//! weight grad  dU[ξ] = Σ dM[ξ] · V[ξ]ᵀ      dW = Gᵀ dU G
//! ```
//!
//! for each of the 16 positions ξ of the transformed tile. The backward
//! passes are the exact adjoints of the forward map, so the gradients are
//! those of the convolution up to f32 rounding (the transforms only add,
//! subtract and halve). Tiles are processed a block of tile rows at a
//! time, so the transformed data of a block stays bounded whatever the
//! image size; images are split into one fixed chunk per thread, and the
//! weight gradient's partial sums are added in chunk order, as in the
//! im2col path.

// The transforms index rows and columns of small matrices by position,
// the way the formulas read.
#![allow(clippy::needless_range_loop)]

use std::ops::Range;

use gemm::Parallelism;
use rayon::prelude::*;

use crate::conv::{matmul, with_col, Geometry, MatRef};

/// Positions of a transformed 4×4 tile.
const XI: usize = 16;

/// Floats of transformed input and output held per block:
/// `16·(cin + cout)·tiles ≤ BLOCK_FLOATS` (8 MiB).
const BLOCK_FLOATS: usize = 1 << 21;

/// Whether a convolution takes this path.
pub(crate) fn applies(g: &Geometry) -> bool {
    g.k == 3 && g.stride == 1 && g.pad == 1
}

/// The tiling of one convolution's images.
///
/// Tile `tx` of tile row `ty` reads input rows and columns `2ty − 1 ..
/// 2ty + 2` and `2tx − 1 .. 2tx + 2`. The padded input is split into four
/// planes by row and column parity, each `th + 1` rows of `tw + 1`, so the
/// 16 entries of every patch are four planes read at four offsets, and
/// each transform is a few elementwise loops over all the tile rows of an
/// image at once. For that, a tile row has `tw + 1` slots: the last one is
/// a spare tile whose output is never read and whose gradient is zero.
struct Tiles {
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    /// Tile rows and columns per image.
    th: usize,
    tw: usize,
}

/// Tile rows `rows` of image `img`, at slot `slot` of a block.
struct Segment {
    img: usize,
    rows: Range<usize>,
    slot: usize,
}

impl Tiles {
    fn new(g: &Geometry) -> Tiles {
        Tiles {
            cin: g.cin,
            cout: g.cout,
            h: g.h,
            w: g.w,
            th: g.h.div_ceil(2),
            tw: g.w.div_ceil(2),
        }
    }

    /// Slots per tile row.
    fn sw(&self) -> usize {
        self.tw + 1
    }

    /// Floats of one parity plane, with one spare at the end.
    fn plane_len(&self) -> usize {
        (self.th + 1) * self.sw() + 1
    }

    /// Blocks of tile rows over `images` images; tile row `r` is image
    /// `r / th`, tile row `r % th`.
    fn blocks(&self, images: usize) -> impl Iterator<Item = Range<usize>> {
        let per_row = XI * (self.cin + self.cout) * self.sw();
        let rows_per_block = (BLOCK_FLOATS / per_row).max(1);
        let total = images * self.th;
        (0..total.div_ceil(rows_per_block))
            .map(move |b| b * rows_per_block..((b + 1) * rows_per_block).min(total))
    }

    /// The block's tile rows, one run per image.
    fn segments(&self, rows: Range<usize>) -> Vec<Segment> {
        let mut out = Vec::new();
        let mut r = rows.start;
        while r < rows.end {
            let (img, ty0) = (r / self.th, r % self.th);
            let ty1 = self.th.min(ty0 + rows.end - r);
            out.push(Segment {
                img,
                rows: ty0..ty1,
                slot: (r - rows.start) * self.sw(),
            });
            r += ty1 - ty0;
        }
        out
    }

    /// `V[ξ][ci][t] = (Bᵀ d B)[ξ]` for the tiles of `rows`; `v` is
    /// 16 × cin × slots, `x` the chunk's images.
    #[inline(always)]
    fn transform_input(&self, x: &[f32], rows: Range<usize>, v: &mut [f32]) {
        let (h, w, sw) = (self.h, self.w, self.sw());
        let slots = rows.len() * sw;
        let stride = self.cin * slots;
        let mut planes: [[Vec<f32>; 2]; 2] = rows_of(self.plane_len());
        let mut bd: [[Vec<f32>; 2]; 4] = rows_of(slots + 1);
        for seg in self.segments(rows) {
            let len = seg.rows.len() * sw;
            let b0 = seg.rows.start * sw;
            for ci in 0..self.cin {
                let plane = &x[(seg.img * self.cin + ci) * h * w..][..h * w];
                // Plane rows ty0 ..= ty1: padded rows 2R + pa.
                for r in seg.rows.start..=seg.rows.end {
                    for (pa, [even, odd]) in planes.iter_mut().enumerate() {
                        let (even, odd) = (&mut even[r * sw..][..sw], &mut odd[r * sw..][..sw]);
                        match (2 * r + pa).checked_sub(1).filter(|&iy| iy < h) {
                            Some(iy) => split_padded(&plane[iy * w..(iy + 1) * w], even, odd),
                            None => {
                                even.fill(0.0);
                                odd.fill(0.0);
                            }
                        }
                    }
                }
                // Bᵀ d over the patch rows (d0 − d2, d1 + d2, d2 − d1,
                // d1 − d3): row 2ra + pa is plane pa one row (sw) down if ra.
                for pc in 0..2 {
                    let (e, o) = (&planes[0][pc][b0..], &planes[1][pc][b0..]);
                    let n = len + 1;
                    zip_with(&mut bd[0][pc][..n], &e[..n], &e[sw..sw + n], |a, b| a - b);
                    zip_with(&mut bd[1][pc][..n], &o[..n], &e[sw..sw + n], |a, b| a + b);
                    zip_with(&mut bd[2][pc][..n], &e[sw..sw + n], &o[..n], |a, b| a - b);
                    zip_with(&mut bd[3][pc][..n], &o[..n], &o[sw..sw + n], |a, b| a - b);
                }
                // (Bᵀ d) B: the same over the patch columns, column
                // 2rc + pc being parity pc one slot right if rc.
                let base = ci * slots + seg.slot;
                for (i, [e, o]) in bd.iter().enumerate() {
                    let at =
                        |j: usize| (4 * i + j) * stride + base..(4 * i + j) * stride + base + len;
                    zip_with(&mut v[at(0)], &e[..len], &e[1..=len], |a, b| a - b);
                    zip_with(&mut v[at(1)], &o[..len], &e[1..=len], |a, b| a + b);
                    zip_with(&mut v[at(2)], &e[1..=len], &o[..len], |a, b| a - b);
                    zip_with(&mut v[at(3)], &o[..len], &o[1..=len], |a, b| a - b);
                }
            }
        }
    }

    /// The output tiles `Aᵀ M A` of `rows` into the chunk's output `out`;
    /// `m` is 16 × cout × slots.
    #[inline(always)]
    fn transform_output(&self, m: &[f32], rows: Range<usize>, out: &mut [f32]) {
        let (h, w, sw, tw) = (self.h, self.w, self.sw(), self.tw);
        let slots = rows.len() * sw;
        let stride = self.cout * slots;
        let mut am: [[Vec<f32>; 4]; 2] = rows_of(slots);
        let mut y: [[Vec<f32>; 2]; 2] = rows_of(slots);
        for seg in self.segments(rows) {
            let len = seg.rows.len() * sw;
            for co in 0..self.cout {
                let base = co * slots + seg.slot;
                let at = |i: usize, j: usize| &m[(4 * i + j) * stride + base..][..len];
                // Aᵀ M: rows (m0 + m1 + m2, m1 − m2 − m3), then columns.
                for j in 0..4 {
                    zip3_with(
                        &mut am[0][j][..len],
                        at(0, j),
                        at(1, j),
                        at(2, j),
                        |a, b, c| a + b + c,
                    );
                    zip3_with(
                        &mut am[1][j][..len],
                        at(1, j),
                        at(2, j),
                        at(3, j),
                        |a, b, c| a - b - c,
                    );
                }
                for (row, [y0, y1]) in am.iter().zip(y.iter_mut()) {
                    zip3_with(&mut y0[..len], &row[0], &row[1], &row[2], |a, b, c| {
                        a + b + c
                    });
                    zip3_with(&mut y1[..len], &row[1], &row[2], &row[3], |a, b, c| {
                        a - b - c
                    });
                }
                let plane = &mut out[(seg.img * self.cout + co) * h * w..][..h * w];
                for (t, ty) in seg.rows.clone().enumerate() {
                    for (a, [y0, y1]) in y.iter().enumerate() {
                        let oy = 2 * ty + a;
                        if oy < h {
                            let tiles = t * sw..t * sw + tw;
                            interleave(
                                &y0[tiles.clone()],
                                &y1[tiles],
                                &mut plane[oy * w..(oy + 1) * w],
                            );
                        }
                    }
                }
            }
        }
    }

    /// `dM = A dY Aᵀ` for the tiles of `rows` (the adjoint of
    /// [`Self::transform_output`]), zero in the spare slots; `dy` is the
    /// chunk's output gradient.
    #[inline(always)]
    fn transform_output_grad(&self, dy: &[f32], rows: Range<usize>, dm: &mut [f32]) {
        let (h, w, sw, tw) = (self.h, self.w, self.sw(), self.tw);
        let slots = rows.len() * sw;
        let stride = self.cout * slots;
        let mut y: [[Vec<f32>; 2]; 2] = rows_of(slots);
        let mut ya: [[Vec<f32>; 4]; 2] = rows_of(slots);
        for seg in self.segments(rows) {
            let len = seg.rows.len() * sw;
            for co in 0..self.cout {
                let plane = &dy[(seg.img * self.cout + co) * h * w..][..h * w];
                for (t, ty) in seg.rows.clone().enumerate() {
                    for (a, [y0, y1]) in y.iter_mut().enumerate() {
                        let (y0, y1) = (&mut y0[t * sw..][..sw], &mut y1[t * sw..][..sw]);
                        y0[tw] = 0.0;
                        y1[tw] = 0.0;
                        let oy = 2 * ty + a;
                        if oy < h {
                            split(&plane[oy * w..(oy + 1) * w], &mut y0[..tw], &mut y1[..tw]);
                        } else {
                            y0.fill(0.0);
                            y1.fill(0.0);
                        }
                    }
                }
                // dY Aᵀ: each row (y0, y1) → (y0, y0 + y1, y0 − y1, −y1).
                for ([y0, y1], row) in y.iter().zip(ya.iter_mut()) {
                    let (y0, y1) = (&y0[..len], &y1[..len]);
                    row[0][..len].copy_from_slice(y0);
                    zip_with(&mut row[1][..len], y0, y1, |a, b| a + b);
                    zip_with(&mut row[2][..len], y0, y1, |a, b| a - b);
                    zip_with(&mut row[3][..len], y0, y1, |_, b| -b);
                }
                // A (dY Aᵀ): the same on the columns.
                let base = co * slots + seg.slot;
                for j in 0..4 {
                    let (c0, c1) = (&ya[0][j][..len], &ya[1][j][..len]);
                    let at =
                        |i: usize| (4 * i + j) * stride + base..(4 * i + j) * stride + base + len;
                    dm[at(0)].copy_from_slice(c0);
                    zip_with(&mut dm[at(1)], c0, c1, |a, b| a + b);
                    zip_with(&mut dm[at(2)], c0, c1, |a, b| a - b);
                    zip_with(&mut dm[at(3)], c0, c1, |_, b| -b);
                }
            }
        }
    }

    /// Adds `B dV Bᵀ` of the tiles of `rows` into the chunk's input
    /// gradient `dx` (the adjoint of [`Self::transform_input`]); `dV` is
    /// zero in the spare slots.
    #[inline(always)]
    fn add_input_grad(&self, dv: &[f32], rows: Range<usize>, dx: &mut [f32]) {
        let (h, w, sw) = (self.h, self.w, self.sw());
        let slots = rows.len() * sw;
        let stride = self.cin * slots;
        let mut bv: [[Vec<f32>; 4]; 4] = rows_of(slots);
        let mut p: [Vec<f32>; 4] = std::array::from_fn(|_| vec![0f32; slots]);
        let mut planes: [[Vec<f32>; 2]; 2] = rows_of(self.plane_len());
        for seg in self.segments(rows) {
            let len = seg.rows.len() * sw;
            let b0 = seg.rows.start * sw;
            for ci in 0..self.cin {
                let base = ci * slots + seg.slot;
                let at = |i: usize, j: usize| &dv[(4 * i + j) * stride + base..][..len];
                // B dV: each column (v0..v3) → (v0, v1 − v2 + v3, v1 + v2 − v0, −v3).
                for j in 0..4 {
                    bv[0][j][..len].copy_from_slice(at(0, j));
                    zip3_with(
                        &mut bv[1][j][..len],
                        at(1, j),
                        at(2, j),
                        at(3, j),
                        |a, b, c| a - b + c,
                    );
                    zip3_with(
                        &mut bv[2][j][..len],
                        at(1, j),
                        at(2, j),
                        at(0, j),
                        |a, b, c| a + b - c,
                    );
                    zip_with(&mut bv[3][j][..len], at(3, j), at(3, j), |a, _| -a);
                }
                // Plane rows ty0 ..= ty1 collect this run's gradient.
                let rows_len = (seg.rows.len() + 1) * sw + 1;
                for parity in planes.iter_mut().flatten() {
                    parity[b0..b0 + rows_len].fill(0.0);
                }
                // (B dV) Bᵀ on the columns: patch entry (2ra + pa,
                // 2rc + pc) lands on plane (pa, pc), ra rows and rc
                // slots on.
                for (a, row) in bv.iter().enumerate() {
                    p[0][..len].copy_from_slice(&row[0][..len]);
                    zip3_with(&mut p[1][..len], &row[1], &row[2], &row[3], |a, b, c| {
                        a - b + c
                    });
                    zip3_with(&mut p[2][..len], &row[1], &row[2], &row[0], |a, b, c| {
                        a + b - c
                    });
                    zip_with(&mut p[3][..len], &row[3], &row[3], |a, _| -a);
                    let (ra, pa) = (a / 2, a % 2);
                    for (c, values) in p.iter().enumerate() {
                        let (rc, pc) = (c / 2, c % 2);
                        let at = b0 + ra * sw + rc;
                        add_assign(&mut planes[pa][pc][at..at + len], &values[..len]);
                    }
                }
                let plane = &mut dx[(seg.img * self.cin + ci) * h * w..][..h * w];
                for r in seg.rows.start..=seg.rows.end {
                    for (pa, [even, odd]) in planes.iter().enumerate() {
                        if let Some(iy) = (2 * r + pa).checked_sub(1).filter(|&iy| iy < h) {
                            let (even, odd) = (&even[r * sw..][..sw], &odd[r * sw..][..sw]);
                            add_padded(&mut plane[iy * w..(iy + 1) * w], even, odd);
                        }
                    }
                }
            }
        }
    }
}

/// Runs `f` compiled for the widest vector instructions this CPU has
/// (AVX-512 or AVX2 + FMA, detected at run time): the transforms are
/// elementwise loops the compiler vectorises at that width.
fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// Arrays of zeroed rows of `len` floats.
fn rows_of<const A: usize, const B: usize>(len: usize) -> [[Vec<f32>; B]; A] {
    std::array::from_fn(|_| std::array::from_fn(|_| vec![0f32; len]))
}

#[inline(always)]
fn zip_with(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((d, &a), &b) in dst.iter_mut().zip(a).zip(b) {
        *d = f(a, b);
    }
}

#[inline(always)]
fn zip3_with(dst: &mut [f32], a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) {
    for (((d, &a), &b), &c) in dst.iter_mut().zip(a).zip(b).zip(c) {
        *d = f(a, b, c);
    }
}

#[inline(always)]
fn add_assign(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// A row padded by one zero each side, split into its even entries
/// (`even[m]` = column 2m − 1) and odd ones (`odd[m]` = column 2m); both
/// `⌈w/2⌉ + 1` long.
#[inline(always)]
fn split_padded(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    even.fill(0.0);
    odd.fill(0.0);
    for (m, pair) in row.chunks(2).enumerate() {
        odd[m] = pair[0];
        if let Some(&value) = pair.get(1) {
            even[m + 1] = value;
        }
    }
}

/// The adjoint of [`split_padded`]: adds the entries back onto the row.
#[inline(always)]
fn add_padded(row: &mut [f32], even: &[f32], odd: &[f32]) {
    for (m, pair) in row.chunks_mut(2).enumerate() {
        pair[0] += odd[m];
        if let Some(value) = pair.get_mut(1) {
            *value += even[m + 1];
        }
    }
}

/// A row split into columns 2m and 2m + 1 (zero past its end).
#[inline(always)]
fn split(row: &[f32], first: &mut [f32], second: &mut [f32]) {
    second.fill(0.0);
    for (m, pair) in row.chunks(2).enumerate() {
        first[m] = pair[0];
        if let Some(&value) = pair.get(1) {
            second[m] = value;
        }
    }
}

/// The inverse of [`split`], dropping a second column past the row's end.
#[inline(always)]
fn interleave(first: &[f32], second: &[f32], row: &mut [f32]) {
    for (m, pair) in row.chunks_mut(2).enumerate() {
        pair[0] = first[m];
        if let Some(value) = pair.get_mut(1) {
            *value = second[m];
        }
    }
}

/// `U[ξ][co][ci] = (G g Gᵀ)[ξ]` of a (cout, cin, 3, 3) kernel.
fn transform_weight(cout: usize, cin: usize, weight: &[f32]) -> Vec<f32> {
    // G applied to a 3-vector: (g0, (g0 + g1 + g2)/2, (g0 − g1 + g2)/2, g2).
    let g = |v: [f32; 3]| {
        [
            v[0],
            0.5 * (v[0] + v[1] + v[2]),
            0.5 * (v[0] - v[1] + v[2]),
            v[2],
        ]
    };
    let mut u = vec![0f32; XI * cout * cin];
    for (pair, k) in weight.chunks_exact(9).enumerate() {
        let mut gk = [[0f32; 3]; 4];
        for j in 0..3 {
            let col = g([k[j], k[3 + j], k[6 + j]]);
            for i in 0..4 {
                gk[i][j] = col[i];
            }
        }
        for (i, row) in gk.into_iter().enumerate() {
            for (j, value) in g(row).into_iter().enumerate() {
                u[(4 * i + j) * cout * cin + pair] = value;
            }
        }
    }
    u
}

/// `dW = Gᵀ dU G` (the adjoint of [`transform_weight`]).
pub(crate) fn weight_grad_from(cout: usize, cin: usize, du: &[f32]) -> Vec<f32> {
    // Gᵀ applied to a 4-vector: (u0 + (u1 + u2)/2, (u1 − u2)/2, (u1 + u2)/2 + u3).
    let gt = |u: [f32; 4]| {
        let (s, d) = (0.5 * (u[1] + u[2]), 0.5 * (u[1] - u[2]));
        [u[0] + s, d, s + u[3]]
    };
    let mut dw = vec![0f32; cout * cin * 9];
    for (pair, k) in dw.chunks_exact_mut(9).enumerate() {
        let at = |i: usize, j: usize| du[(4 * i + j) * cout * cin + pair];
        let mut gu = [[0f32; 4]; 3];
        for j in 0..4 {
            let col = gt([at(0, j), at(1, j), at(2, j), at(3, j)]);
            for i in 0..3 {
                gu[i][j] = col[i];
            }
        }
        for (i, row) in gu.into_iter().enumerate() {
            k[3 * i..3 * i + 3].copy_from_slice(&gt(row));
        }
    }
    dw
}

/// `out = conv(x, weight)` for the whole batch (N, cin, h, w).
pub(crate) fn forward(g: &Geometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
    let t = Tiles::new(g);
    let u = transform_weight(g.cout, g.cin, weight);
    let (in_len, out_len) = (g.cin * g.h * g.w, g.cout * g.h * g.w);
    let mut out = vec![0f32; g.n * out_len];
    let (chunk, parallelism) = (g.chunk(), g.parallelism());
    out.par_chunks_mut(chunk * out_len)
        .zip(x.par_chunks(chunk * in_len))
        .for_each(|(out, x)| t.forward(&u, x, out, parallelism));
    out
}

/// The input gradient for the output gradient `dy`.
pub(crate) fn input_grad(g: &Geometry, dy: &[f32], weight: &[f32]) -> Vec<f32> {
    let t = Tiles::new(g);
    let u = transform_weight(g.cout, g.cin, weight);
    let (in_len, out_len) = (g.cin * g.h * g.w, g.cout * g.h * g.w);
    let mut dx = vec![0f32; g.n * in_len];
    let (chunk, parallelism) = (g.chunk(), g.parallelism());
    dx.par_chunks_mut(chunk * in_len)
        .zip(dy.par_chunks(chunk * out_len))
        .for_each(|(dx, dy)| t.add_input_grad_of(&u, dy, dx, parallelism));
    dx
}

/// The weight gradient (cout, cin, 3, 3) for the input `x` and the output
/// gradient `dy`.
pub(crate) fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let t = Tiles::new(g);
    let (in_len, out_len) = (g.cin * g.h * g.w, g.cout * g.h * g.w);
    let (chunk, parallelism) = (g.chunk(), g.parallelism());
    let partials: Vec<Vec<f32>> = x
        .par_chunks(chunk * in_len)
        .zip(dy.par_chunks(chunk * out_len))
        .map(|(x, dy)| {
            let mut du = vec![0f32; XI * g.cout * g.cin];
            t.add_weight_grad_of(x, dy, &mut du, parallelism);
            du
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut du = partials
        .next()
        .unwrap_or_else(|| vec![0f32; XI * g.cout * g.cin]);
    for partial in partials {
        du.iter_mut().zip(&partial).for_each(|(d, p)| *d += p);
    }
    weight_grad_from(g.cout, g.cin, &du)
}

/// One convolution's transformed kernel, for callers that loop over
/// images themselves (the dense block): [`Self::forward`] and the two
/// gradients take any number of whole images.
pub(crate) struct ImageConv {
    tiles: Tiles,
    /// `U = G g Gᵀ`, 16 × cout × cin.
    u: Vec<f32>,
}

impl ImageConv {
    /// For a convolution of `g`'s shape (see [`applies`]) with `weight`.
    pub(crate) fn new(g: &Geometry, weight: &[f32]) -> ImageConv {
        ImageConv {
            tiles: Tiles::new(g),
            u: transform_weight(g.cout, g.cin, weight),
        }
    }

    pub(crate) fn forward(&self, x: &[f32], out: &mut [f32], parallelism: Parallelism) {
        self.tiles.forward(&self.u, x, out, parallelism);
    }

    /// Adds the input gradient of `dy` to `dx`.
    pub(crate) fn add_input_grad(&self, dy: &[f32], dx: &mut [f32], parallelism: Parallelism) {
        self.tiles.add_input_grad_of(&self.u, dy, dx, parallelism);
    }

    /// Adds the weight gradient of `x` and `dy` to `du`, in the
    /// transformed domain (16 × cout × cin; see [`weight_grad_from`]).
    pub(crate) fn add_weight_grad(
        &self,
        x: &[f32],
        dy: &[f32],
        du: &mut [f32],
        parallelism: Parallelism,
    ) {
        self.tiles.add_weight_grad_of(x, dy, du, parallelism);
    }

    /// Floats of a transformed weight gradient.
    pub(crate) fn weight_grad_len(&self) -> usize {
        XI * self.tiles.cout * self.tiles.cin
    }
}

impl Tiles {
    fn images(&self, len: usize, channels: usize) -> usize {
        len / (channels * self.h * self.w)
    }

    /// Runs `f(rows, slots, a, b)` for each block of tile rows of
    /// `images` images, with this thread's buffer split into `a`
    /// (16 × cin × slots floats) and `b` (16 × cout × slots).
    fn for_each_block(
        &self,
        images: usize,
        mut f: impl FnMut(Range<usize>, usize, &mut [f32], &mut [f32]),
    ) {
        for rows in self.blocks(images) {
            let slots = rows.len() * self.sw();
            with_col(XI * (self.cin + self.cout) * slots, |buf| {
                let (a, b) = buf.split_at_mut(XI * self.cin * slots);
                f(rows, slots, a, b);
            });
        }
    }

    /// `out = conv(x)` for whole images.
    fn forward(&self, u: &[f32], x: &[f32], out: &mut [f32], parallelism: Parallelism) {
        let (cin, cout) = (self.cin, self.cout);
        self.for_each_block(self.images(x.len(), cin), |rows, slots, v, m| {
            simd(|| self.transform_input(x, rows.clone(), v));
            // M[ξ] (cout × slots) = U[ξ] (cout × cin) · V[ξ] (cin × slots).
            let operands = |xi: usize| {
                let u = MatRef::rows(&u[xi * cout * cin..][..cout * cin], cin);
                (
                    u,
                    MatRef::rows(&v[xi * cin * slots..][..cin * slots], slots),
                )
            };
            // SAFETY: each operand is built from a slice of exactly its
            // shape, in buffers other than the destination.
            unsafe { per_position(m, cout, slots, cin, false, operands, parallelism) };
            simd(|| self.transform_output(m, rows, out));
        });
    }

    /// `dx += ∂conv/∂x · dy` for whole images.
    fn add_input_grad_of(&self, u: &[f32], dy: &[f32], dx: &mut [f32], parallelism: Parallelism) {
        let (cin, cout) = (self.cin, self.cout);
        self.for_each_block(self.images(dy.len(), cout), |rows, slots, dv, dm| {
            simd(|| self.transform_output_grad(dy, rows.clone(), dm));
            // dV[ξ] (cin × slots) = U[ξ]ᵀ (cin × cout) · dM[ξ] (cout × slots).
            let operands = |xi: usize| {
                let ut = MatRef::transposed(&u[xi * cout * cin..][..cout * cin], cin);
                (
                    ut,
                    MatRef::rows(&dm[xi * cout * slots..][..cout * slots], slots),
                )
            };
            // SAFETY: each operand is built from a slice of exactly its
            // shape, in buffers other than the destination.
            unsafe { per_position(dv, cin, slots, cout, false, operands, parallelism) };
            simd(|| self.add_input_grad(dv, rows, dx));
        });
    }

    /// `du += Σ dM[ξ] · V[ξ]ᵀ` for whole images.
    fn add_weight_grad_of(&self, x: &[f32], dy: &[f32], du: &mut [f32], parallelism: Parallelism) {
        let (cin, cout) = (self.cin, self.cout);
        self.for_each_block(self.images(x.len(), cin), |rows, slots, v, dm| {
            simd(|| self.transform_input(x, rows.clone(), v));
            simd(|| self.transform_output_grad(dy, rows, dm));
            // dU[ξ] (cout × cin) += dM[ξ] (cout × slots) · V[ξ]ᵀ (slots × cin).
            let operands = |xi: usize| {
                let dm = MatRef::rows(&dm[xi * cout * slots..][..cout * slots], slots);
                (
                    dm,
                    MatRef::transposed(&v[xi * cin * slots..][..cin * slots], slots),
                )
            };
            // SAFETY: each operand is built from a slice of exactly its
            // shape, in buffers other than the destination.
            unsafe { per_position(du, cout, cin, slots, true, operands, parallelism) };
        });
    }
}

/// The 16 products of a block, `dst[ξ] (+)= lhs(ξ) · rhs(ξ)`: `dst[ξ]` is
/// the `m × n` matrix at `ξ·m·n` in `dst`, `operands(ξ)` an `m × k` and a
/// `k × n` matrix.
///
/// # Safety
/// Each operand must be valid for reads of its shape through its strides
/// and must not overlap `dst`.
unsafe fn per_position(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    operands: impl Fn(usize) -> (MatRef, MatRef),
    parallelism: Parallelism,
) {
    assert!(dst.len() >= XI * m * n, "Winograd product buffer too small");
    for xi in 0..XI {
        let (lhs, rhs) = operands(xi);
        // SAFETY: dst[ξ] lies inside `dst` (asserted above); the operands
        // are the caller's to keep valid.
        unsafe {
            matmul(
                dst.as_mut_ptr().add(xi * m * n),
                n,
                accumulate,
                lhs,
                rhs,
                m,
                n,
                k,
                parallelism,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{flat, random};
    use candle_core::Layout;

    /// Direct 3×3, stride 1, padding 1 convolution in f64: visits every
    /// (output, input, kernel) triple and hands it to `f`.
    fn for_each_tap(g: &Geometry, mut f: impl FnMut(usize, usize, usize)) {
        let (h, w) = (g.h, g.w);
        for img in 0..g.n {
            for co in 0..g.cout {
                for ci in 0..g.cin {
                    for oy in 0..h {
                        for ox in 0..w {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (Some(iy), Some(ix)) =
                                        ((oy + ky).checked_sub(1), (ox + kx).checked_sub(1))
                                    else {
                                        continue;
                                    };
                                    if iy >= h || ix >= w {
                                        continue;
                                    }
                                    let out = ((img * g.cout + co) * h + oy) * w + ox;
                                    let input = ((img * g.cin + ci) * h + iy) * w + ix;
                                    let tap = ((co * g.cin + ci) * 3 + ky) * 3 + kx;
                                    f(out, input, tap);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn assert_close(what: &str, ours: &[f32], reference: &[f64]) {
        assert_eq!(ours.len(), reference.len(), "{what}");
        let scale = reference.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        let worst = ours
            .iter()
            .zip(reference)
            .fold(0f64, |m, (a, b)| m.max((*a as f64 - b).abs() / scale));
        assert!(worst < 1e-5, "{what}: differs from float64 by {worst}");
    }

    /// Output and both gradients equal the direct convolution's in f64,
    /// for odd and even sizes, images smaller than a tile, and a batch
    /// whose tile rows span several blocks that split an image.
    #[test]
    fn matches_the_direct_convolution_in_float64() {
        // (n, cin, h, w, cout)
        let cases = [
            (2, 3, 5, 7, 4),
            (1, 2, 1, 1, 3),
            (3, 4, 2, 3, 2),
            (2, 5, 8, 8, 6),
            (3, 40, 37, 90, 24),
        ];
        for (i, &(n, cin, h, w, cout)) in cases.iter().enumerate() {
            let x = flat(&random(&[n, cin, h, w], 3 * i as u64, -1.0, 1.0));
            let weight = flat(&random(&[cout, cin, 3, 3], 3 * i as u64 + 1, -1.0, 1.0));
            let dy = flat(&random(&[n, cout, h, w], 3 * i as u64 + 2, -1.0, 1.0));
            let g = Geometry::new(
                &Layout::contiguous((n, cin, h, w)),
                &Layout::contiguous((cout, cin, 3, 3)),
                1,
                1,
            )
            .unwrap();
            assert!(applies(&g));
            if i == cases.len() - 1 {
                assert!(
                    Tiles::new(&g).blocks(n).count() > 1,
                    "case {i} spans blocks"
                );
            }

            let mut y = vec![0f64; dy.len()];
            let mut dx = vec![0f64; x.len()];
            let mut dw = vec![0f64; weight.len()];
            for_each_tap(&g, |o, inp, tap| {
                y[o] += x[inp] as f64 * weight[tap] as f64;
                dx[inp] += dy[o] as f64 * weight[tap] as f64;
                dw[tap] += dy[o] as f64 * x[inp] as f64;
            });
            assert_close(&format!("case {i} forward"), &forward(&g, &x, &weight), &y);
            assert_close(
                &format!("case {i} input grad"),
                &input_grad(&g, &dy, &weight),
                &dx,
            );
            assert_close(
                &format!("case {i} weight grad"),
                &weight_grad(&g, &x, &dy),
                &dw,
            );
        }
    }
}
