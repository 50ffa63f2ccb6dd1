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
//! image size.
//!
//! A whole batch ([`forward`], [`input_grad`], [`weight_grad`]) goes
//! through the blocks one after another, and every thread works on every
//! block: the transforms split by channel and image, the 16 products by
//! position. The work so divides evenly whatever the batch size (a fixed
//! chunk of images per thread left one thread idle while the other
//! finished), no thread keeps a partial weight gradient, and every value
//! is computed by one task in a fixed order, so results do not depend on
//! the thread count. The dense block's convolutions ([`ImageConv`]) run
//! inside the block's own loop over images, on the calling thread.

// The transforms index rows and columns of small matrices by position,
// the way the formulas read.
#![allow(clippy::needless_range_loop)]

use std::cell::RefCell;
use std::ops::Range;

use gemm::Parallelism;
use rayon::prelude::*;

use crate::conv::{matmul, with_thread_buffer, Geometry, MatRef};
use crate::vector::simd;

/// Positions of a transformed 4×4 tile.
const XI: usize = 16;

/// Floats of transformed input and output held per block,
/// `16·(cin + cout)·tiles`, on one thread (8 MiB) ...
const BLOCK_FLOATS: usize = 1 << 21;
/// ... and shared by all threads in a whole batch (16 MiB, half the L3
/// cache of the CI machine): larger blocks make larger products.
const BATCH_BLOCK_FLOATS: usize = 1 << 22;

/// Weight pairs per task of [`weight_grad_from`].
const PAIRS_PER_TASK: usize = 4096;

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

/// Where a convolution's work runs.
#[derive(Clone, Copy)]
enum Schedule {
    /// Split across the thread pool: a whole batch.
    Pool,
    /// On the calling thread, the products with gemm's `Parallelism`:
    /// some images inside a caller's own parallel loop.
    ThisThread(Parallelism),
}

impl Schedule {
    fn block_floats(self) -> usize {
        match self {
            Schedule::Pool => BATCH_BLOCK_FLOATS,
            Schedule::ThisThread(_) => BLOCK_FLOATS,
        }
    }

    /// `a` and `b`, side by side when the pool does the work.
    fn join(self, a: impl FnOnce() + Send, b: impl FnOnce() + Send) {
        match self {
            Schedule::Pool => {
                rayon::join(a, b);
            }
            Schedule::ThisThread(_) => {
                a();
                b();
            }
        }
    }

    /// `f(c, rows, scratch)` for each channel of `buf` (16 × channels ×
    /// `slots` floats), `rows` being that channel's 16 rows of `slots`,
    /// with `scratch` floats of scratch.
    fn channels(
        self,
        buf: &mut [f32],
        channels: usize,
        slots: usize,
        scratch: usize,
        f: impl Fn(usize, &mut [&mut [f32]; XI], &mut [f32]) + Sync,
    ) {
        let mut positions: Vec<_> = buf
            .chunks_exact_mut((channels * slots).max(1))
            .map(|position| position.chunks_exact_mut(slots.max(1)))
            .collect();
        let mut rows: Vec<[&mut [f32]; XI]> = (0..channels)
            .map(|_| {
                std::array::from_fn(|xi| {
                    positions
                        .get_mut(xi)
                        .and_then(Iterator::next)
                        .unwrap_or_default()
                })
            })
            .collect();
        match self {
            Schedule::Pool => rows
                .par_iter_mut()
                .enumerate()
                .for_each(|(c, rows)| with_scratch(scratch, |s| f(c, rows, s))),
            Schedule::ThisThread(_) => with_scratch(scratch, |s| {
                for (c, rows) in rows.iter_mut().enumerate() {
                    f(c, rows, s);
                }
            }),
        }
    }

    /// `f(segment, c, plane, scratch)` for each (image, channel) plane of
    /// `data` (images × channels × `plane` floats) that the block's
    /// segments cover.
    fn planes(
        self,
        data: &mut [f32],
        plane: usize,
        channels: usize,
        segs: &[Segment],
        scratch: usize,
        f: impl Fn(&Segment, usize, &mut [f32], &mut [f32]) + Sync,
    ) {
        let (Some(first), plane, channels) = (segs.first(), plane.max(1), channels.max(1)) else {
            return;
        };
        // The segments are consecutive images, one each.
        let data = &mut data[first.img * channels * plane..][..segs.len() * channels * plane];
        let each = |p: usize, data: &mut [f32], s: &mut [f32]| {
            f(&segs[p / channels], p % channels, data, s)
        };
        match self {
            Schedule::Pool => data
                .par_chunks_mut(plane)
                .enumerate()
                .for_each(|(p, data)| with_scratch(scratch, |s| each(p, data, s))),
            Schedule::ThisThread(_) => with_scratch(scratch, |s| {
                for (p, data) in data.chunks_mut(plane).enumerate() {
                    each(p, data, s);
                }
            }),
        }
    }
}

thread_local! {
    /// Each thread's transformed block and transform scratch, reused
    /// across layers and calls.
    static BLOCK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_scratch<T>(len: usize, f: impl FnOnce(&mut [f32]) -> T) -> T {
    with_thread_buffer(&SCRATCH, len, f)
}

/// `A × B` rows of `len` floats from the front of `buf`, and the rest.
fn carve<const A: usize, const B: usize>(
    buf: &mut [f32],
    len: usize,
) -> ([[&mut [f32]; B]; A], &mut [f32]) {
    let (head, rest) = buf.split_at_mut(A * B * len);
    let mut rows = head.chunks_exact_mut(len.max(1));
    let rows = std::array::from_fn(|_| std::array::from_fn(|_| rows.next().unwrap_or_default()));
    (rows, rest)
}

/// A zeroed vector, written by all threads when it is large.
fn zeros(len: usize) -> Vec<f32> {
    if len < 1 << 16 {
        vec![0f32; len]
    } else {
        (0..len).into_par_iter().map(|_| 0f32).collect()
    }
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

    /// Scratch floats any transform of a block of `slots` slots needs.
    fn scratch_len(&self, slots: usize) -> usize {
        20 * (slots + 1) + 4 * self.plane_len()
    }

    /// Blocks of tile rows over `images` images, of at most `floats`
    /// transformed floats each; tile row `r` is image `r / th`, tile row
    /// `r % th`.
    fn blocks(&self, images: usize, floats: usize) -> impl Iterator<Item = Range<usize>> {
        let per_row = XI * (self.cin + self.cout) * self.sw();
        let rows_per_block = (floats / per_row).max(1);
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

    /// `V[ξ][ci][t] = (Bᵀ d B)[ξ]` of input channel `ci` for the block's
    /// tiles: `v` is that channel's 16 rows, `x` the images the segments
    /// index.
    #[inline(always)]
    fn transform_input(
        &self,
        x: &[f32],
        segs: &[Segment],
        ci: usize,
        v: &mut [&mut [f32]; XI],
        scratch: &mut [f32],
    ) {
        let (h, w, sw) = (self.h, self.w, self.sw());
        let slots = v[0].len();
        let (mut planes, rest) = carve::<2, 2>(scratch, self.plane_len());
        let (bd, _) = carve::<4, 2>(rest, slots + 1);
        for seg in segs {
            let len = seg.rows.len() * sw;
            let b0 = seg.rows.start * sw;
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
            // The spare past the last row feeds only the last spare tile;
            // zero, so stale scratch never reaches the products.
            for parity in planes.iter_mut().flatten() {
                parity[(seg.rows.end + 1) * sw] = 0.0;
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
            // (Bᵀ d) B: the same over the patch columns, column 2rc + pc
            // being parity pc one slot right if rc.
            let tiles = seg.slot..seg.slot + len;
            for (i, [e, o]) in bd.iter().enumerate() {
                let (e0, e1, o0, o1) = (&e[..len], &e[1..=len], &o[..len], &o[1..=len]);
                zip_with(&mut v[4 * i][tiles.clone()], e0, e1, |a, b| a - b);
                zip_with(&mut v[4 * i + 1][tiles.clone()], o0, e1, |a, b| a + b);
                zip_with(&mut v[4 * i + 2][tiles.clone()], e1, o0, |a, b| a - b);
                zip_with(&mut v[4 * i + 3][tiles.clone()], o0, o1, |a, b| a - b);
            }
        }
    }

    /// The output rows of segment `seg` in one channel's `plane` (h × w):
    /// `Aᵀ M A` of each tile, `m` being that channel's 16 rows.
    #[inline(always)]
    fn transform_output(
        &self,
        m: [&[f32]; XI],
        seg: &Segment,
        plane: &mut [f32],
        scratch: &mut [f32],
    ) {
        let (h, w, sw, tw) = (self.h, self.w, self.sw(), self.tw);
        let len = seg.rows.len() * sw;
        let (am, rest) = carve::<2, 4>(scratch, len);
        let (mut y, _) = carve::<2, 2>(rest, len);
        let at = |i: usize, j: usize| &m[4 * i + j][seg.slot..][..len];
        // Aᵀ M: rows (m0 + m1 + m2, m1 − m2 − m3), then columns.
        for j in 0..4 {
            zip3_with(am[0][j], at(0, j), at(1, j), at(2, j), |a, b, c| a + b + c);
            zip3_with(am[1][j], at(1, j), at(2, j), at(3, j), |a, b, c| a - b - c);
        }
        for (row, [y0, y1]) in am.iter().zip(y.iter_mut()) {
            zip3_with(y0, row[0], row[1], row[2], |a, b, c| a + b + c);
            zip3_with(y1, row[1], row[2], row[3], |a, b, c| a - b - c);
        }
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

    /// `dM = A dY Aᵀ` of output channel `co` for the block's tiles (the
    /// adjoint of [`Self::transform_output`]), zero in the spare slots:
    /// `dm` is that channel's 16 rows, `dy` the images' gradient.
    #[inline(always)]
    fn transform_output_grad(
        &self,
        dy: &[f32],
        segs: &[Segment],
        co: usize,
        dm: &mut [&mut [f32]; XI],
        scratch: &mut [f32],
    ) {
        let (h, w, sw, tw) = (self.h, self.w, self.sw(), self.tw);
        let slots = dm[0].len();
        let (mut y, rest) = carve::<2, 2>(scratch, slots);
        let (mut ya, _) = carve::<2, 4>(rest, slots);
        for seg in segs {
            let len = seg.rows.len() * sw;
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
                negate(&mut row[3][..len], y1);
            }
            // A (dY Aᵀ): the same on the columns.
            for j in 0..4 {
                let (c0, c1) = (&ya[0][j][..len], &ya[1][j][..len]);
                let tiles = seg.slot..seg.slot + len;
                dm[j][tiles.clone()].copy_from_slice(c0);
                zip_with(&mut dm[4 + j][tiles.clone()], c0, c1, |a, b| a + b);
                zip_with(&mut dm[8 + j][tiles.clone()], c0, c1, |a, b| a - b);
                negate(&mut dm[12 + j][tiles], c1);
            }
        }
    }

    /// Adds `B dV Bᵀ` of segment `seg`'s tiles into one channel's input
    /// gradient `plane` (the adjoint of [`Self::transform_input`]); `dv`
    /// is that channel's 16 rows, zero in the spare slots.
    #[inline(always)]
    fn add_input_grad(
        &self,
        dv: [&[f32]; XI],
        seg: &Segment,
        plane: &mut [f32],
        scratch: &mut [f32],
    ) {
        let (h, w, sw) = (self.h, self.w, self.sw());
        let len = seg.rows.len() * sw;
        let b0 = seg.rows.start * sw;
        let (bv, rest) = carve::<4, 4>(scratch, len);
        let ([p], rest) = carve::<1, 4>(rest, len);
        let (mut planes, _) = carve::<2, 2>(rest, self.plane_len());
        let at = |i: usize, j: usize| &dv[4 * i + j][seg.slot..][..len];
        // B dV: each column (v0..v3) → (v0, v1 − v2 + v3, v1 + v2 − v0, −v3).
        for j in 0..4 {
            bv[0][j].copy_from_slice(at(0, j));
            zip3_with(bv[1][j], at(1, j), at(2, j), at(3, j), |a, b, c| a - b + c);
            zip3_with(bv[2][j], at(1, j), at(2, j), at(0, j), |a, b, c| a + b - c);
            negate(bv[3][j], at(3, j));
        }
        // Plane rows ty0 ..= ty1 collect this run's gradient.
        let rows_len = (seg.rows.len() + 1) * sw + 1;
        for parity in planes.iter_mut().flatten() {
            parity[b0..b0 + rows_len].fill(0.0);
        }
        // (B dV) Bᵀ on the columns: patch entry (2ra + pa, 2rc + pc) lands
        // on plane (pa, pc), ra rows and rc slots on.
        for (a, row) in bv.iter().enumerate() {
            p[0].copy_from_slice(row[0]);
            zip3_with(p[1], row[1], row[2], row[3], |a, b, c| a - b + c);
            zip3_with(p[2], row[1], row[2], row[0], |a, b, c| a + b - c);
            negate(p[3], row[3]);
            let (ra, pa) = (a / 2, a % 2);
            for (c, values) in p.iter().enumerate() {
                let (rc, pc) = (c / 2, c % 2);
                let at = b0 + ra * sw + rc;
                add_assign(&mut planes[pa][pc][at..at + len], values);
            }
        }
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

#[inline(always)]
fn negate(dst: &mut [f32], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = -s;
    }
}

// The four helpers below move a row's pairs of columns with
// `chunks_exact`, so the compiler turns each into vector shuffles; the
// odd last column of an odd width is handled on its own.

/// A row padded by one zero each side, split into its even entries
/// (`even[m]` = column 2m − 1) and odd ones (`odd[m]` = column 2m); both
/// `⌈w/2⌉ + 1` long.
#[inline(always)]
fn split_padded(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let pairs = row.len() / 2;
    even[0] = 0.0;
    let (odd_pairs, odd_rest) = odd.split_at_mut(pairs);
    let even_pairs = &mut even[1..=pairs];
    for ((pair, o), e) in row.chunks_exact(2).zip(odd_pairs).zip(even_pairs) {
        *o = pair[0];
        *e = pair[1];
    }
    let last = row.chunks_exact(2).remainder();
    odd_rest.fill(0.0);
    even[pairs + 1..].fill(0.0);
    if let (Some(&value), Some(o)) = (last.first(), odd_rest.first_mut()) {
        *o = value;
    }
}

/// The adjoint of [`split_padded`]: adds the entries back onto the row.
#[inline(always)]
fn add_padded(row: &mut [f32], even: &[f32], odd: &[f32]) {
    let pairs = row.len() / 2;
    let (head, last) = row.split_at_mut(2 * pairs);
    for ((pair, &o), &e) in head
        .chunks_exact_mut(2)
        .zip(&odd[..pairs])
        .zip(&even[1..=pairs])
    {
        pair[0] += o;
        pair[1] += e;
    }
    if let Some(value) = last.first_mut() {
        *value += odd[pairs];
    }
}

/// A row split into columns 2m and 2m + 1 (zero past its end).
#[inline(always)]
fn split(row: &[f32], first: &mut [f32], second: &mut [f32]) {
    let pairs = row.len() / 2;
    let (first_pairs, first_rest) = first.split_at_mut(pairs);
    let (second_pairs, second_rest) = second.split_at_mut(pairs);
    for ((pair, a), b) in row.chunks_exact(2).zip(first_pairs).zip(second_pairs) {
        *a = pair[0];
        *b = pair[1];
    }
    second_rest.fill(0.0);
    if let (Some(&value), Some(a)) = (
        row.chunks_exact(2).remainder().first(),
        first_rest.first_mut(),
    ) {
        *a = value;
    }
}

/// The inverse of [`split`], dropping a second column past the row's end.
#[inline(always)]
fn interleave(first: &[f32], second: &[f32], row: &mut [f32]) {
    let pairs = row.len() / 2;
    let (head, last) = row.split_at_mut(2 * pairs);
    for ((pair, &a), &b) in head.chunks_exact_mut(2).zip(first).zip(second) {
        pair[0] = a;
        pair[1] = b;
    }
    if let Some(value) = last.first_mut() {
        *value = first[pairs];
    }
}

/// `U[ξ][co][ci] = (G g Gᵀ)[ξ]` of a (cout, cin, 3, 3) kernel.
fn transform_weight(cout: usize, cin: usize, weight: &[f32]) -> Vec<f32> {
    // Row i of G applied to a 3-vector: g0, (g0 + g1 + g2)/2,
    // (g0 − g1 + g2)/2, g2.
    let g_row = |i: usize, v: [f32; 3]| match i {
        0 => v[0],
        1 => 0.5 * (v[0] + v[1] + v[2]),
        2 => 0.5 * (v[0] - v[1] + v[2]),
        _ => v[2],
    };
    let pairs = cout * cin;
    let mut u = zeros(XI * pairs);
    // One task per row i of G g Gᵀ, whose positions 4i .. 4i + 4 are
    // contiguous.
    u.par_chunks_mut((4 * pairs).max(1))
        .enumerate()
        .for_each(|(i, rows)| {
            for (pair, k) in weight.chunks_exact(9).enumerate() {
                // Row i of G g: G's row i applied to each column of g.
                let gk: [f32; 3] = std::array::from_fn(|j| g_row(i, [k[j], k[3 + j], k[6 + j]]));
                for j in 0..4 {
                    rows[j * pairs + pair] = g_row(j, gk);
                }
            }
        });
    u
}

/// `dW = Gᵀ dU G` (the adjoint of [`transform_weight`]).
pub(crate) fn weight_grad_from(cout: usize, cin: usize, du: &[f32]) -> Vec<f32> {
    // Gᵀ applied to a 4-vector: (u0 + (u1 + u2)/2, (u1 − u2)/2, (u1 + u2)/2 + u3).
    let gt = |u: [f32; 4]| {
        let (s, d) = (0.5 * (u[1] + u[2]), 0.5 * (u[1] - u[2]));
        [u[0] + s, d, s + u[3]]
    };
    let pairs = cout * cin;
    let mut dw = zeros(pairs * 9);
    dw.par_chunks_mut(9 * PAIRS_PER_TASK)
        .enumerate()
        .for_each(|(task, dw)| {
            for (p, k) in dw.chunks_exact_mut(9).enumerate() {
                let pair = task * PAIRS_PER_TASK + p;
                let at = |i: usize, j: usize| du[(4 * i + j) * pairs + pair];
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
        });
    dw
}

/// `out = conv(x, weight)` for the whole batch (N, cin, h, w).
pub(crate) fn forward(g: &Geometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
    let u = transform_weight(g.cout, g.cin, weight);
    let mut out = zeros(g.n * g.cout * g.h * g.w);
    Tiles::new(g).forward(&u, x, &mut out, Schedule::Pool);
    out
}

/// The input gradient for the output gradient `dy`.
pub(crate) fn input_grad(g: &Geometry, dy: &[f32], weight: &[f32]) -> Vec<f32> {
    let u = transform_weight(g.cout, g.cin, weight);
    let mut dx = zeros(g.n * g.cin * g.h * g.w);
    Tiles::new(g).add_input_grad_of(&u, dy, &mut dx, Schedule::Pool);
    dx
}

/// The weight gradient (cout, cin, 3, 3) for the input `x` and the output
/// gradient `dy`.
pub(crate) fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut du = zeros(XI * g.cout * g.cin);
    Tiles::new(g).add_weight_grad_of(x, dy, &mut du, Schedule::Pool);
    weight_grad_from(g.cout, g.cin, &du)
}

/// One convolution's transformed kernel, for callers that loop over
/// images themselves (the dense block): [`Self::forward`] and the two
/// gradients take any number of whole images and run on this thread.
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
        let schedule = Schedule::ThisThread(parallelism);
        self.tiles.forward(&self.u, x, out, schedule);
    }

    /// Adds the input gradient of `dy` to `dx`.
    pub(crate) fn add_input_grad(&self, dy: &[f32], dx: &mut [f32], parallelism: Parallelism) {
        let schedule = Schedule::ThisThread(parallelism);
        self.tiles.add_input_grad_of(&self.u, dy, dx, schedule);
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
        let schedule = Schedule::ThisThread(parallelism);
        self.tiles.add_weight_grad_of(x, dy, du, schedule);
    }

    /// Floats of a transformed weight gradient.
    pub(crate) fn weight_grad_len(&self) -> usize {
        XI * self.tiles.cout * self.tiles.cin
    }
}

impl Tiles {
    fn images(&self, len: usize, channels: usize) -> usize {
        len / (channels * self.h * self.w).max(1)
    }

    /// Runs `f(segments, slots, a, b)` for each block of tile rows of
    /// `images` images, with this thread's block buffer split into `a`
    /// (16 × cin × slots floats) and `b` (16 × cout × slots).
    fn for_each_block(
        &self,
        images: usize,
        schedule: Schedule,
        mut f: impl FnMut(&[Segment], usize, &mut [f32], &mut [f32]),
    ) {
        for rows in self.blocks(images, schedule.block_floats()) {
            let slots = rows.len() * self.sw();
            let segs = self.segments(rows);
            with_thread_buffer(&BLOCK, XI * (self.cin + self.cout) * slots, |buf| {
                let (a, b) = buf.split_at_mut(XI * self.cin * slots);
                f(&segs, slots, a, b);
            });
        }
    }

    /// `dst[ξ] = U[ξ] · src[ξ]` (cout × slots from cin × slots), or with
    /// `U[ξ]ᵀ` when `transposed` (cin × slots from cout × slots).
    fn products_with_u(
        &self,
        u: &[f32],
        transposed: bool,
        src: &[f32],
        dst: &mut [f32],
        slots: usize,
        schedule: Schedule,
    ) {
        let (cin, cout) = (self.cin, self.cout);
        let (rows, inner) = if transposed { (cin, cout) } else { (cout, cin) };
        let operands = |xi: usize| {
            let u = &u[xi * cout * cin..][..cout * cin];
            let u = if transposed {
                MatRef::transposed(u, cin)
            } else {
                MatRef::rows(u, cin)
            };
            (
                u,
                MatRef::rows(&src[xi * inner * slots..][..inner * slots], slots),
            )
        };
        let at = Positions::matrices(rows, slots);
        // SAFETY: each operand is built from a slice of exactly its shape,
        // in buffers other than the destination.
        unsafe { products(dst, (rows, slots, inner), at, false, operands, schedule) };
    }

    /// `out = conv(x)` for whole images.
    fn forward(&self, u: &[f32], x: &[f32], out: &mut [f32], schedule: Schedule) {
        let (cin, cout, hw) = (self.cin, self.cout, self.h * self.w);
        self.for_each_block(self.images(x.len(), cin), schedule, |segs, slots, v, m| {
            let scratch = self.scratch_len(slots);
            schedule.channels(v, cin, slots, scratch, |ci, v, s| {
                simd(
                    #[inline(always)]
                    || self.transform_input(x, segs, ci, v, s),
                )
            });
            // M[ξ] (cout × slots) = U[ξ] (cout × cin) · V[ξ] (cin × slots).
            self.products_with_u(u, false, v, m, slots, schedule);
            schedule.planes(out, hw, cout, segs, scratch, |seg, co, plane, s| {
                let m = position_rows(m, cout, slots, co);
                simd(
                    #[inline(always)]
                    || self.transform_output(m, seg, plane, s),
                )
            });
        });
    }

    /// `dx += ∂conv/∂x · dy` for whole images.
    fn add_input_grad_of(&self, u: &[f32], dy: &[f32], dx: &mut [f32], schedule: Schedule) {
        let (cin, cout, hw) = (self.cin, self.cout, self.h * self.w);
        let images = self.images(dy.len(), cout);
        self.for_each_block(images, schedule, |segs, slots, dv, dm| {
            let scratch = self.scratch_len(slots);
            schedule.channels(dm, cout, slots, scratch, |co, dm, s| {
                simd(
                    #[inline(always)]
                    || self.transform_output_grad(dy, segs, co, dm, s),
                )
            });
            // dV[ξ] (cin × slots) = U[ξ]ᵀ (cin × cout) · dM[ξ] (cout × slots).
            self.products_with_u(u, true, dm, dv, slots, schedule);
            schedule.planes(dx, hw, cin, segs, scratch, |seg, ci, plane, s| {
                let dv = position_rows(dv, cin, slots, ci);
                simd(
                    #[inline(always)]
                    || self.add_input_grad(dv, seg, plane, s),
                )
            });
        });
    }

    /// `du += Σ dM[ξ] · V[ξ]ᵀ` for whole images.
    fn add_weight_grad_of(&self, x: &[f32], dy: &[f32], du: &mut [f32], schedule: Schedule) {
        let (cin, cout) = (self.cin, self.cout);
        self.for_each_block(self.images(x.len(), cin), schedule, |segs, slots, v, dm| {
            let scratch = self.scratch_len(slots);
            schedule.join(
                || {
                    schedule.channels(v, cin, slots, scratch, |ci, v, s| {
                        simd(
                            #[inline(always)]
                            || self.transform_input(x, segs, ci, v, s),
                        )
                    })
                },
                || {
                    schedule.channels(dm, cout, slots, scratch, |co, dm, s| {
                        simd(
                            #[inline(always)]
                            || self.transform_output_grad(dy, segs, co, dm, s),
                        )
                    })
                },
            );
            // dU[ξ] (cout × cin) += dM[ξ] (cout × slots) · V[ξ]ᵀ (slots × cin).
            let operands = |xi: usize| {
                (
                    MatRef::rows(&dm[xi * cout * slots..][..cout * slots], slots),
                    MatRef::transposed(&v[xi * cin * slots..][..cin * slots], slots),
                )
            };
            let at = Positions::matrices(cout, cin);
            // SAFETY: each operand is built from a slice of exactly its
            // shape, in buffers other than the destination.
            unsafe { products(du, (cout, cin, slots), at, true, operands, schedule) };
        });
    }
}

/// Channel `c`'s 16 rows of a block's transformed data (16 × channels ×
/// `slots` floats).
fn position_rows(data: &[f32], channels: usize, slots: usize, c: usize) -> [&[f32]; XI] {
    std::array::from_fn(|xi| &data[(xi * channels + c) * slots..][..slots])
}

/// Where the 16 products' destinations lie: position ξ's matrix starts
/// `ξ·step` floats in, its rows `row_stride` apart.
#[derive(Clone, Copy)]
struct Positions {
    step: usize,
    row_stride: usize,
}

impl Positions {
    /// One `rows × cols` matrix after another.
    fn matrices(rows: usize, cols: usize) -> Positions {
        Positions {
            step: rows * cols,
            row_stride: cols,
        }
    }
}

/// The destination pointer, handed to the pool's threads; each writes
/// only its own position's rows.
#[derive(Clone, Copy)]
struct Destination(*mut f32);

// SAFETY: the positions' matrices are disjoint (see `products`).
unsafe impl Send for Destination {}
unsafe impl Sync for Destination {}

impl Destination {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: `products` checks every position's offset lies in `dst`.
        unsafe { self.0.add(offset) }
    }
}

/// The 16 products of a block, `dst[ξ] (+)= lhs(ξ) · rhs(ξ)` with `dims`
/// (m, n, k): `dst[ξ]` is the `m × n` matrix that `at` places, and
/// `operands(ξ)` an `m × k` and a `k × n` matrix. Positions run across
/// the pool (each product on one thread, so each is computed in one
/// order) or in turn on this thread.
///
/// # Safety
/// Each operand must be valid for reads of its shape through its strides
/// and must not overlap `dst`.
unsafe fn products(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    at: Positions,
    accumulate: bool,
    operands: impl Fn(usize) -> (MatRef, MatRef) + Sync,
    schedule: Schedule,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        dst.len() >= (XI - 1) * at.step + (m - 1) * at.row_stride + n,
        "Winograd product buffer too small"
    );
    let dst = Destination(dst.as_mut_ptr());
    let product = |xi: usize, parallelism: Parallelism| {
        let (lhs, rhs) = operands(xi);
        // SAFETY: dst[ξ] lies inside `dst` (asserted above) and no other
        // position's rows overlap it; the operands are the caller's to
        // keep valid.
        unsafe {
            matmul(
                dst.at(xi * at.step),
                at.row_stride,
                accumulate,
                lhs,
                rhs,
                m,
                n,
                k,
                parallelism,
            )
        };
    };
    match schedule {
        Schedule::Pool => (0..XI)
            .into_par_iter()
            .for_each(|xi| product(xi, Parallelism::None)),
        Schedule::ThisThread(parallelism) => (0..XI).for_each(|xi| product(xi, parallelism)),
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
    /// for odd and even sizes and images smaller than a tile, through the
    /// whole-batch path and one image at a time; and for a batch whose
    /// tile rows span several blocks that split an image.
    #[test]
    fn matches_the_direct_convolution_in_float64() {
        // (n, cin, h, w, cout)
        let cases = [
            (2, 3, 5, 7, 4),
            (1, 2, 1, 1, 3),
            (3, 4, 2, 3, 2),
            (2, 5, 8, 8, 6),
            (3, 40, 37, 90, 24),
            (2, 40, 150, 90, 24),
        ];
        for (i, &(n, cin, h, w, cout)) in cases.iter().enumerate() {
            let x = flat(&random(&[n, cin, h, w], 3 * i as u64, -1.0, 1.0));
            let weight = flat(&random(&[cout, cin, 3, 3], 3 * i as u64 + 1, -1.0, 1.0));
            let dy = flat(&random(&[n, cout, h, w], 3 * i as u64 + 2, -1.0, 1.0));
            let g = geometry(n, cin, h, w, cout);
            assert!(applies(&g));
            let tiles = Tiles::new(&g);
            if i == cases.len() - 2 {
                assert!(
                    tiles.blocks(n, BLOCK_FLOATS).count() > 1,
                    "case {i} spans blocks"
                );
            }
            if i == cases.len() - 1 {
                assert!(
                    tiles.blocks(n, BATCH_BLOCK_FLOATS).count() > 1,
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

            if i == cases.len() - 1 {
                continue;
            }
            // One image at a time, into buffers that already hold values.
            let conv = ImageConv::new(&g, &weight);
            let (in_len, out_len) = (cin * h * w, cout * h * w);
            let mut out = vec![f32::NAN; n * out_len];
            let mut dx_images = vec![1f32; n * in_len];
            let mut du = vec![0f32; conv.weight_grad_len()];
            for img in 0..n {
                let (x, dy) = (
                    &x[img * in_len..][..in_len],
                    &dy[img * out_len..][..out_len],
                );
                conv.forward(x, &mut out[img * out_len..][..out_len], Parallelism::None);
                conv.add_input_grad(
                    dy,
                    &mut dx_images[img * in_len..][..in_len],
                    Parallelism::None,
                );
                conv.add_weight_grad(x, dy, &mut du, Parallelism::Rayon(2));
            }
            assert_close(&format!("case {i} image forward"), &out, &y);
            let dx_plus_one: Vec<f64> = dx.iter().map(|v| v + 1.0).collect();
            assert_close(
                &format!("case {i} image input grad"),
                &dx_images,
                &dx_plus_one,
            );
            assert_close(
                &format!("case {i} image weight grad"),
                &weight_grad_from(cout, cin, &du),
                &dw,
            );
        }
    }

    /// The whole-batch path gives the same bits on one thread as on
    /// three: no value depends on how the work was split.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (n, cin, h, w, cout) = (3, 24, 45, 30, 20);
        let x = flat(&random(&[n, cin, h, w], 40, -1.0, 1.0));
        let weight = flat(&random(&[cout, cin, 3, 3], 41, -1.0, 1.0));
        let dy = flat(&random(&[n, cout, h, w], 42, -1.0, 1.0));
        let g = geometry(n, cin, h, w, cout);
        let run = |threads: usize| {
            crate::test_util::on_threads(threads, || {
                (
                    forward(&g, &x, &weight),
                    input_grad(&g, &dy, &weight),
                    weight_grad(&g, &x, &dy),
                )
            })
        };
        let (one, three) = (run(1), run(3));
        assert!(one.0 == three.0, "forward");
        assert!(one.1 == three.1, "input grad");
        assert!(one.2 == three.2, "weight grad");
    }

    fn geometry(n: usize, cin: usize, h: usize, w: usize, cout: usize) -> Geometry {
        Geometry::new(
            &Layout::contiguous((n, cin, h, w)),
            &Layout::contiguous((cout, cin, 3, 3)),
            1,
            1,
        )
        .unwrap()
    }
}
