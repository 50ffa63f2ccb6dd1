//! Contrast Limited Adaptive Histogram Equalisation, following OpenCV's
//! `cv::CLAHE::apply` for 8-bit images (modules/imgproc/src/clahe.cpp).

use crate::{GrayImage8, VisionError};

const HIST_SIZE: usize = 256;
/// Most tiles in a grid (the LUTs then take 16 MiB).
const MAX_TILES: u64 = 65_536;

/// OpenCV's `borderInterpolate` for `BORDER_REFLECT_101` (`gfedcb|abcdefgh|gfedcba`).
fn reflect_101(p: i64, len: i64) -> usize {
    if len <= 1 {
        return 0;
    }
    let mut p = p;
    while p < 0 || p >= len {
        if p < 0 {
            p = -p;
        } else {
            p = 2 * (len - 1) - p;
        }
    }
    p as usize
}

/// Applies CLAHE like `cv2.createCLAHE(clipLimit, tileGridSize).apply(img)`.
///
/// `tiles` is (tiles across, tiles down), OpenCV's `tileGridSize`; the usual
/// values are `clip_limit = 2.0`, `tiles = (8, 8)`. A `clip_limit` of 0
/// disables clipping (plain adaptive equalisation), as in OpenCV.
///
/// When the image size is not a multiple of the grid, the histograms are
/// taken over the image padded on the right and bottom with
/// `BORDER_REFLECT_101`, as OpenCV does (including its quirk of padding a
/// side that is already a multiple by one more tile's worth).
pub fn clahe(
    src: &GrayImage8,
    clip_limit: f32,
    tiles: (u32, u32),
) -> Result<GrayImage8, VisionError> {
    src.validate()?;
    if !clip_limit.is_finite() || clip_limit < 0.0 {
        return Err(VisionError::InvalidParameter {
            detail: format!("CLAHE clip limit must be finite and >= 0, got {clip_limit}"),
        });
    }
    let (tiles_x, tiles_y) = tiles;
    if tiles_x == 0 || tiles_y == 0 || u64::from(tiles_x) * u64::from(tiles_y) > MAX_TILES {
        return Err(VisionError::InvalidParameter {
            detail: format!("CLAHE tile grid {tiles_x}x{tiles_y} must have 1 to {MAX_TILES} tiles"),
        });
    }
    let (w, h) = (src.width as usize, src.height as usize);
    let (tx_n, ty_n) = (tiles_x as usize, tiles_y as usize);

    // Padded size, a multiple of the grid. OpenCV pads only when either side
    // is not a multiple, but then pads BOTH sides by `tiles - size % tiles`:
    // a side that was already a multiple gains a whole extra tile's worth.
    let (ext_w, ext_h) = if w % tx_n == 0 && h % ty_n == 0 {
        (w, h)
    } else {
        (w + tx_n - w % tx_n, h + ty_n - h % ty_n)
    };
    let tile_w = ext_w / tx_n;
    let tile_h = ext_h / ty_n;
    let tile_area = tile_w * tile_h;

    let col_map: Vec<usize> = (0..ext_w)
        .map(|x| reflect_101(x as i64, w as i64))
        .collect();
    let row_map: Vec<usize> = (0..ext_h)
        .map(|y| reflect_101(y as i64, h as i64))
        .collect();

    // OpenCV: clipLimit = max(1, int(clipLimit * tileArea / histSize)), when > 0.
    let clip: Option<usize> = if clip_limit > 0.0 {
        let c = (f64::from(clip_limit) * tile_area as f64 / HIST_SIZE as f64) as usize;
        Some(c.max(1))
    } else {
        None
    };
    let lut_scale = (HIST_SIZE - 1) as f32 / tile_area as f32;

    // One LUT of 256 entries per tile, tiles in row-major order.
    let mut luts = vec![0u8; tx_n * ty_n * HIST_SIZE];
    for ty in 0..ty_n {
        for tx in 0..tx_n {
            let mut hist = [0usize; HIST_SIZE];
            let mut parts = [[0u32; HIST_SIZE]; 4];
            let (x0, x1) = (tx * tile_w, (tx + 1) * tile_w);
            for &sy in &row_map[ty * tile_h..(ty + 1) * tile_h] {
                let row = &src.pixels[sy * w..(sy + 1) * w];
                if x1 <= w {
                    // Inside the image: a contiguous run, no index map;
                    // four partial histograms, so runs of equal pixels (smooth
                    // regions) do not wait on the same counter.
                    let run = &row[x0..x1];
                    let mut quads = run.chunks_exact(4);
                    for q in &mut quads {
                        parts[0][usize::from(q[0])] += 1;
                        parts[1][usize::from(q[1])] += 1;
                        parts[2][usize::from(q[2])] += 1;
                        parts[3][usize::from(q[3])] += 1;
                    }
                    for &p in quads.remainder() {
                        hist[usize::from(p)] += 1;
                    }
                } else {
                    for &sx in &col_map[x0..x1] {
                        hist[usize::from(row[sx])] += 1;
                    }
                }
            }
            for part in &parts {
                for (bin, &count) in hist.iter_mut().zip(part) {
                    *bin += count as usize;
                }
            }
            if let Some(clip) = clip {
                let mut clipped = 0usize;
                for bin in hist.iter_mut() {
                    if *bin > clip {
                        clipped += *bin - clip;
                        *bin = clip;
                    }
                }
                let redist_batch = clipped / HIST_SIZE;
                let residual = clipped - redist_batch * HIST_SIZE;
                for bin in hist.iter_mut() {
                    *bin += redist_batch;
                }
                // OpenCV: residualStep = max(histSize / residual, 1), from bin 0.
                if let Some(step) = HIST_SIZE.checked_div(residual) {
                    for bin in hist.iter_mut().step_by(step.max(1)).take(residual) {
                        *bin += 1;
                    }
                }
            }
            let lut = &mut luts[(ty * tx_n + tx) * HIST_SIZE..(ty * tx_n + tx + 1) * HIST_SIZE];
            let mut sum = 0usize;
            for (entry, &count) in lut.iter_mut().zip(hist.iter()) {
                sum += count;
                *entry = saturate_u8(sum as f32 * lut_scale);
            }
        }
    }

    // Bilinear interpolation between the LUTs of the four nearest tile
    // centres (OpenCV's CLAHE_Interpolation_Body), in f32 as OpenCV.
    let inv_tw = 1.0f32 / tile_w as f32;
    let inv_th = 1.0f32 / tile_h as f32;
    let x_taps: Vec<(usize, usize, f32)> = (0..w)
        .map(|x| {
            let txf = x as f32 * inv_tw - 0.5;
            let tx1 = txf.floor();
            let xa = txf - tx1;
            let tx1 = tx1 as i64;
            let t1 = tx1.max(0) as usize;
            let t2 = ((tx1 + 1) as usize).min(tx_n - 1);
            (t1 * HIST_SIZE, t2 * HIST_SIZE, xa)
        })
        .collect();
    let mut out = vec![0u8; w * h];
    for y in 0..h {
        let tyf = y as f32 * inv_th - 0.5;
        let ty1f = tyf.floor();
        let ya = tyf - ty1f;
        let ya1 = 1.0 - ya;
        let ty1 = ty1f as i64;
        let r1 = ty1.max(0) as usize;
        let r2 = ((ty1 + 1) as usize).min(ty_n - 1);
        let lut_row1 = &luts[r1 * tx_n * HIST_SIZE..(r1 + 1) * tx_n * HIST_SIZE];
        let lut_row2 = &luts[r2 * tx_n * HIST_SIZE..(r2 + 1) * tx_n * HIST_SIZE];
        let src_row = &src.pixels[y * w..(y + 1) * w];
        let dst_row = &mut out[y * w..(y + 1) * w];
        for ((d, &v), &(i1, i2, xa)) in dst_row.iter_mut().zip(src_row).zip(&x_taps) {
            let v = usize::from(v);
            let xa1 = 1.0 - xa;
            let top = f32::from(lut_row1[i1 + v]) * xa1 + f32::from(lut_row1[i2 + v]) * xa;
            let bottom = f32::from(lut_row2[i1 + v]) * xa1 + f32::from(lut_row2[i2 + v]) * xa;
            *d = round_half_even_u8(top * ya1 + bottom * ya);
        }
    }
    GrayImage8::new(src.width, src.height, out)
}

/// OpenCV's `saturate_cast<uchar>(float)`: round half to even, then clamp.
/// Rounds a value in [0, 255] half to even, as OpenCV's saturate_cast does.
/// Adding and subtracting 2^23 leaves the float unit's round-to-nearest-even
/// to do it: `round_ties_even` is a library call on baseline x86-64 and was
/// the largest cost of the interpolation. (Interpolated LUT values stay in
/// [0, 255], so no clamping is needed; `as u8` saturates regardless.)
#[inline]
fn round_half_even_u8(v: f32) -> u8 {
    const SHIFT: f32 = 8_388_608.0; // 2^23
    ((v + SHIFT) - SHIFT) as u8
}

fn saturate_u8(v: f32) -> u8 {
    let r = v.round_ties_even();
    if r.is_nan() || r <= 0.0 {
        0
    } else if r >= 255.0 {
        255
    } else {
        r as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_101_matches_opencv() {
        let got: Vec<usize> = (-3..8).map(|p| reflect_101(p, 5)).collect();
        assert_eq!(got, vec![3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]);
        assert_eq!(reflect_101(5, 1), 0);
        assert_eq!(reflect_101(9, 2), 1);
    }

    #[test]
    fn fast_rounding_equals_round_ties_even() {
        for i in 0..=(255 * 64) {
            let v = i as f32 / 64.0;
            assert_eq!(round_half_even_u8(v), saturate_u8(v), "{v}");
        }
        for v in [0.5f32, 1.5, 2.5, 254.5, 0.499_999_97, 127.500_01] {
            assert_eq!(round_half_even_u8(v), saturate_u8(v), "{v}");
        }
    }

    #[test]
    fn saturate_rounds_half_to_even() {
        assert_eq!(saturate_u8(2.5), 2);
        assert_eq!(saturate_u8(3.5), 4);
        assert_eq!(saturate_u8(-1.0), 0);
        assert_eq!(saturate_u8(300.0), 255);
    }

    #[test]
    fn bad_parameters_are_errors() -> Result<(), VisionError> {
        let img = GrayImage8::new(16, 16, vec![10; 256])?;
        for (clip, tiles) in [
            (-1.0, (8, 8)),
            (f32::NAN, (8, 8)),
            (2.0, (0, 8)),
            (2.0, (8, 0)),
            (2.0, (65_537, 1)),
        ] {
            assert!(matches!(
                clahe(&img, clip, tiles),
                Err(VisionError::InvalidParameter { .. })
            ));
        }
        Ok(())
    }

    #[test]
    fn tiny_images_do_not_panic() -> Result<(), VisionError> {
        for (w, h) in [(1, 1), (1, 7), (7, 1), (3, 3), (9, 17)] {
            let px: Vec<u8> = (0..w * h).map(|i| (i * 37 % 256) as u8).collect();
            let img = GrayImage8::new(w, h, px)?;
            let out = clahe(&img, 2.0, (8, 8))?;
            assert_eq!((out.width, out.height), (w, h));
        }
        Ok(())
    }
}
