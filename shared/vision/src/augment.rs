//! Training augmentations and tensor conversion for 8-bit grayscale images.
//!
//! [`augment`] draws an [`AugmentParams`] from a [`AugmentConfig`] with a
//! `ChaCha8Rng` seeded from the caller's `seed` ([`draw_params`]), then
//! applies it ([`apply_params`]). The same (image, config, seed) always gives
//! the same output.
//!
//! Order of operations in [`apply_params`]:
//!
//! 1. **Geometry, as one affine warp**: rotation about the image centre,
//!    x-shear and translation are composed into a single matrix, and the
//!    horizontal flip is applied after it, all in one inverse-mapping pass
//!    with bilinear sampling, so the image is resampled only once. Samples
//!    that fall outside the source read as constant **0** (black), like
//!    torchvision's `RandomAffine(fill=0)`.
//! 2. **Brightness** (multiply by the factor), then **contrast** (blend with
//!    the mean of the current image), each clamped to [0, 255], as
//!    torchvision's `adjust_brightness` / `adjust_contrast`. Unlike
//!    `ColorJitter`, the order of the two is fixed.
//! 3. **Gaussian blur**, separable, kernel radius `ceil(3 sigma)`, reflect
//!    padding at the borders (as torchvision's `gaussian_blur`).
//! 4. **Random erasing**: a rectangle is set to **0**. torchvision's
//!    `RandomErasing` defaults to `value=0` on a *normalised* tensor (i.e. the
//!    dataset mean); here erasing runs on the raw 8-bit image, so 0 means
//!    black, matching the out-of-bounds fill of the warp and the dark
//!    background of a radiograph.
//!
//! The pipeline works in `f32` between steps and rounds to `u8` once at the
//! end.
//!
//! Coordinates: pixel centres are at integer (x, y), y points down; the
//! centre of rotation is ((w-1)/2, (h-1)/2). A positive angle rotates
//! counter-clockwise as seen on screen (torchvision's convention). Shear is
//! along x: `x' = x + tan(shear) * y` (about the centre).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{GrayImage8, VisionError};

/// ImageNet per-channel mean (RGB), used by [`to_tensor_imagenet`].
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet per-channel standard deviation (RGB), used by
/// [`to_tensor_imagenet`].
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Ranges and probabilities of the random augmentations.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Probability of a horizontal flip, in [0, 1].
    pub hflip_p: f64,
    /// Rotation angle drawn uniformly from [-rotate_deg, +rotate_deg].
    pub rotate_deg: f64,
    /// Translation drawn uniformly from ± `translate_frac` of the width (x)
    /// and of the height (y), in [0, 1].
    pub translate_frac: f64,
    /// x-shear angle drawn uniformly from [-shear_deg, +shear_deg], below 89.
    pub shear_deg: f64,
    /// Brightness factor drawn from [max(0, 1 - b), 1 + b].
    pub brightness: f64,
    /// Contrast factor drawn from [max(0, 1 - c), 1 + c].
    pub contrast: f64,
    /// Probability of a Gaussian blur, in [0, 1].
    pub blur_p: f64,
    /// Smallest blur sigma (> 0).
    pub blur_sigma_min: f64,
    /// Largest blur sigma (≥ `blur_sigma_min`).
    pub blur_sigma_max: f64,
    /// Probability of random erasing, in [0, 1].
    pub erase_p: f64,
    /// Smallest erased area as a fraction of the image, in (0, 1].
    pub erase_scale_min: f64,
    /// Largest erased area as a fraction of the image, in
    /// [`erase_scale_min`, 1].
    pub erase_scale_max: f64,
    /// Smallest aspect ratio (height / width) of the erased rectangle (> 0).
    pub erase_ratio_min: f64,
    /// Largest aspect ratio (≥ `erase_ratio_min`); the ratio is drawn
    /// log-uniformly.
    pub erase_ratio_max: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            hflip_p: 0.5,
            rotate_deg: 15.0,
            translate_frac: 0.05,
            shear_deg: 5.0,
            brightness: 0.3,
            contrast: 0.3,
            blur_p: 0.2,
            blur_sigma_min: 0.1,
            blur_sigma_max: 2.0,
            erase_p: 0.1,
            erase_scale_min: 0.02,
            erase_scale_max: 0.33,
            erase_ratio_min: 0.3,
            erase_ratio_max: 3.3,
        }
    }
}

fn bad(field: &str, rule: &str, value: f64) -> VisionError {
    VisionError::InvalidParameter {
        detail: format!("AugmentConfig.{field} must be {rule}, got {value}"),
    }
}

fn check_range(field: &str, value: f64, lo: f64, hi: f64) -> Result<(), VisionError> {
    // NaN fails both comparisons and is rejected here.
    if value.is_finite() && value >= lo && value <= hi {
        Ok(())
    } else {
        Err(bad(field, &format!("finite and in [{lo}, {hi}]"), value))
    }
}

fn check_positive(field: &str, value: f64) -> Result<(), VisionError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(bad(field, "finite and > 0", value))
    }
}

impl AugmentConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), VisionError> {
        check_range("hflip_p", self.hflip_p, 0.0, 1.0)?;
        check_range("rotate_deg", self.rotate_deg, 0.0, 360.0)?;
        check_range("translate_frac", self.translate_frac, 0.0, 1.0)?;
        check_range("shear_deg", self.shear_deg, 0.0, 89.0)?;
        check_range("brightness", self.brightness, 0.0, 1e6)?;
        check_range("contrast", self.contrast, 0.0, 1e6)?;
        check_range("blur_p", self.blur_p, 0.0, 1.0)?;
        check_positive("blur_sigma_min", self.blur_sigma_min)?;
        check_range(
            "blur_sigma_max",
            self.blur_sigma_max,
            self.blur_sigma_min,
            1e3,
        )?;
        check_range("erase_p", self.erase_p, 0.0, 1.0)?;
        check_positive("erase_scale_min", self.erase_scale_min)?;
        check_range("erase_scale_min", self.erase_scale_min, 0.0, 1.0)?;
        check_range(
            "erase_scale_max",
            self.erase_scale_max,
            self.erase_scale_min,
            1.0,
        )?;
        check_positive("erase_ratio_min", self.erase_ratio_min)?;
        check_range(
            "erase_ratio_max",
            self.erase_ratio_max,
            self.erase_ratio_min,
            1e6,
        )?;
        Ok(())
    }
}

/// An axis-aligned rectangle of pixels, `x..x+width` × `y..y+height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EraseRect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width in pixels (≥ 1).
    pub width: u32,
    /// Height in pixels (≥ 1).
    pub height: u32,
}

/// One concrete draw of the augmentation: what [`apply_params`] applies.
#[derive(Debug, Clone, PartialEq)]
pub struct AugmentParams {
    /// Mirror left-right after the affine warp.
    pub hflip: bool,
    /// Rotation in degrees, counter-clockwise on screen, about the centre.
    pub angle_deg: f64,
    /// Translation in pixels along x (positive: right).
    pub translate_x: f64,
    /// Translation in pixels along y (positive: down).
    pub translate_y: f64,
    /// x-shear angle in degrees.
    pub shear_deg: f64,
    /// Brightness factor (1 = unchanged, 0 = black).
    pub brightness: f64,
    /// Contrast factor (1 = unchanged, 0 = flat at the mean).
    pub contrast: f64,
    /// Gaussian blur sigma, or `None` for no blur.
    pub blur_sigma: Option<f64>,
    /// Rectangle set to 0, or `None` for no erasing.
    pub erase: Option<EraseRect>,
}

impl AugmentParams {
    /// Parameters that leave an image unchanged.
    pub fn identity() -> Self {
        Self {
            hflip: false,
            angle_deg: 0.0,
            translate_x: 0.0,
            translate_y: 0.0,
            shear_deg: 0.0,
            brightness: 1.0,
            contrast: 1.0,
            blur_sigma: None,
            erase: None,
        }
    }

    fn validate(&self, width: u32, height: u32) -> Result<(), VisionError> {
        let fail = |field: &str, value: String| VisionError::InvalidParameter {
            detail: format!("AugmentParams.{field} is invalid: {value}"),
        };
        for (field, v) in [
            ("angle_deg", self.angle_deg),
            ("translate_x", self.translate_x),
            ("translate_y", self.translate_y),
        ] {
            if !v.is_finite() {
                return Err(fail(field, v.to_string()));
            }
        }
        if !(self.shear_deg.is_finite() && self.shear_deg.abs() <= 89.0) {
            return Err(fail("shear_deg", self.shear_deg.to_string()));
        }
        if !(self.brightness.is_finite() && self.brightness >= 0.0) {
            return Err(fail("brightness", self.brightness.to_string()));
        }
        if !(self.contrast.is_finite() && self.contrast >= 0.0) {
            return Err(fail("contrast", self.contrast.to_string()));
        }
        if let Some(s) = self.blur_sigma {
            if !(s.is_finite() && s > 0.0 && s <= 1e3) {
                return Err(fail("blur_sigma", s.to_string()));
            }
        }
        if let Some(r) = self.erase {
            let fits = r.width > 0
                && r.height > 0
                && u64::from(r.x) + u64::from(r.width) <= u64::from(width)
                && u64::from(r.y) + u64::from(r.height) <= u64::from(height);
            if !fits {
                return Err(fail("erase", format!("{r:?} outside {width}x{height}")));
            }
        }
        Ok(())
    }
}

/// Uniform in [lo, hi) (or exactly lo when lo == hi); never panics.
fn uniform(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// Uniform integer in 0..=max.
fn uniform_int(rng: &mut ChaCha8Rng, max: u32) -> u32 {
    rng.random_range(0..=max)
}

/// Draws the random parameters for a `width` × `height` image from
/// `config` with `ChaCha8Rng::seed_from_u64(seed)`.
///
/// The draws happen in a fixed order (flip, angle, translate x, translate y,
/// shear, brightness, contrast, blur, erase), so results are reproducible
/// across platforms. Erasing follows torchvision's `RandomErasing`: area
/// fraction uniform in [`erase_scale_min`, `erase_scale_max`], aspect ratio
/// log-uniform, sides rounded to whole pixels, up to 10 attempts to fit
/// strictly inside the image, else no erasing. Rounding the sides means the
/// erased area fraction can leave the scale range by a rounding margin.
///
/// [`erase_scale_min`]: AugmentConfig::erase_scale_min
/// [`erase_scale_max`]: AugmentConfig::erase_scale_max
pub fn draw_params(
    config: &AugmentConfig,
    width: u32,
    height: u32,
    seed: u64,
) -> Result<AugmentParams, VisionError> {
    config.validate()?;
    if width == 0 || height == 0 {
        return Err(VisionError::InvalidDimensions {
            detail: format!("zero-sized image {width}x{height}"),
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let hflip = rng.random::<f64>() < config.hflip_p;
    let angle_deg = uniform(&mut rng, -config.rotate_deg, config.rotate_deg);
    let tx_max = config.translate_frac * f64::from(width);
    let ty_max = config.translate_frac * f64::from(height);
    let translate_x = uniform(&mut rng, -tx_max, tx_max);
    let translate_y = uniform(&mut rng, -ty_max, ty_max);
    let shear_deg = uniform(&mut rng, -config.shear_deg, config.shear_deg);
    let brightness = uniform(
        &mut rng,
        (1.0 - config.brightness).max(0.0),
        1.0 + config.brightness,
    );
    let contrast = uniform(
        &mut rng,
        (1.0 - config.contrast).max(0.0),
        1.0 + config.contrast,
    );
    let blur_sigma = if rng.random::<f64>() < config.blur_p {
        Some(uniform(
            &mut rng,
            config.blur_sigma_min,
            config.blur_sigma_max,
        ))
    } else {
        None
    };
    let erase = if rng.random::<f64>() < config.erase_p {
        draw_erase(&mut rng, config, width, height)
    } else {
        None
    };
    Ok(AugmentParams {
        hflip,
        angle_deg,
        translate_x,
        translate_y,
        shear_deg,
        brightness,
        contrast,
        blur_sigma,
        erase,
    })
}

fn draw_erase(
    rng: &mut ChaCha8Rng,
    config: &AugmentConfig,
    width: u32,
    height: u32,
) -> Option<EraseRect> {
    let area = f64::from(width) * f64::from(height);
    let log_lo = config.erase_ratio_min.ln();
    let log_hi = config.erase_ratio_max.ln();
    for _ in 0..10 {
        let erase_area = area * uniform(rng, config.erase_scale_min, config.erase_scale_max);
        let ratio = uniform(rng, log_lo, log_hi).exp();
        let h = (erase_area * ratio).sqrt().round();
        let w = (erase_area / ratio).sqrt().round();
        // Strictly inside, as torchvision (`h < img_h and w < img_w`).
        if !(h >= 1.0 && w >= 1.0 && h < f64::from(height) && w < f64::from(width)) {
            continue;
        }
        // In range by the check above, so the casts are exact.
        let (h, w) = (h as u32, w as u32);
        let y = uniform_int(rng, height - h);
        let x = uniform_int(rng, width - w);
        return Some(EraseRect {
            x,
            y,
            width: w,
            height: h,
        });
    }
    None
}

/// Draws parameters with `seed` and applies them: deterministic for
/// (image, config, seed). See the module documentation for the order of
/// operations and the fill values.
pub fn augment(
    image: &GrayImage8,
    config: &AugmentConfig,
    seed: u64,
) -> Result<GrayImage8, VisionError> {
    image.validate()?;
    let params = draw_params(config, image.width, image.height, seed)?;
    apply_params(image, &params)
}

/// Applies known parameters (no randomness): warp + flip, brightness,
/// contrast, blur, erasing, then rounds to `u8`.
pub fn apply_params(image: &GrayImage8, params: &AugmentParams) -> Result<GrayImage8, VisionError> {
    image.validate()?;
    params.validate(image.width, image.height)?;
    let w = image.width as usize;
    let h = image.height as usize;
    let mut buf = warp(image, params);

    if params.brightness != 1.0 {
        let f = params.brightness as f32;
        for v in &mut buf {
            *v = (*v * f).clamp(0.0, 255.0);
        }
    }
    if params.contrast != 1.0 {
        let mean = buf.iter().map(|&v| f64::from(v)).sum::<f64>() / buf.len() as f64;
        let f = params.contrast;
        let offset = ((1.0 - f) * mean) as f32;
        let f = f as f32;
        for v in &mut buf {
            *v = (*v * f + offset).clamp(0.0, 255.0);
        }
    }
    if let Some(sigma) = params.blur_sigma {
        buf = gaussian_blur(&buf, w, h, sigma);
    }
    if let Some(r) = params.erase {
        for y in r.y as usize..(r.y + r.height) as usize {
            let row = y * w;
            for v in &mut buf[row + r.x as usize..row + (r.x + r.width) as usize] {
                *v = 0.0;
            }
        }
    }
    let pixels = buf.iter().map(|&v| round_to_u8(v)).collect();
    GrayImage8::new(image.width, image.height, pixels)
}

/// `v.round().clamp(0.0, 255.0) as u8`, without `round` (a library call on
/// baseline x86-64): for 0 ≤ v < 2^23 the fraction `v − trunc(v)` is exact,
/// so "fraction ≥ 0.5 rounds up" is exactly round-half-away-from-zero.
#[inline]
fn round_to_u8(v: f32) -> u8 {
    if v.is_nan() || v <= 0.0 {
        return 0;
    }
    if v >= 255.0 {
        return 255;
    }
    let t = v as u32; // truncation: a plain conversion instruction
    let up = u32::from(v - t as f32 >= 0.5);
    (t + up).min(255) as u8
}

/// The affine warp plus flip, as one inverse-mapping bilinear pass.
///
/// The source position is linear in the output column, so each row is
/// `(sx, sy) = start + ox · step` (f64 for the row, f32 per pixel: at most
/// a few 1e-5 px off the f64 formula for images up to 4096 px, i.e. a few
/// thousandths of a gray level). The columns whose four neighbours all lie
/// inside the image form one interval per row, found from those lines; it
/// is sampled without bounds or edge checks, the rest by the checked path
/// (neighbours outside read as 0).
fn warp(image: &GrayImage8, p: &AugmentParams) -> Vec<f32> {
    let w = image.width as usize;
    let h = image.height as usize;
    let is_identity =
        p.angle_deg == 0.0 && p.shear_deg == 0.0 && p.translate_x == 0.0 && p.translate_y == 0.0;
    if is_identity {
        let mut out: Vec<f32> = image.pixels.iter().map(|&v| f32::from(v)).collect();
        if p.hflip {
            for row in out.chunks_exact_mut(w) {
                row.reverse();
            }
        }
        return out;
    }
    let cx = (w as f64 - 1.0) / 2.0;
    let cy = (h as f64 - 1.0) / 2.0;
    let (sin, cos) = p.angle_deg.to_radians().sin_cos();
    let tan_shear = p.shear_deg.to_radians().tan();
    // Inverse map of an input column x on row oy: undo the flip, then
    // invert out = c + R·S·(in − c) + t, R = [[cos, sin], [−sin, cos]]
    // (screen CCW), S = [[1, tan], [0, 1]] (x-shear):
    //   q = Rᵀ·(x − cx − tx, oy − cy − ty),  s = (qx − tan·qy + cx, qy + cy).
    // d(s)/dx, and the flip turns x = w − 1 − ox into a negative slope.
    let dsx_dx = cos - tan_shear * sin;
    let dsy_dx = sin;
    let flip = if p.hflip { -1.0 } else { 1.0 };
    let (step_x, step_y) = (dsx_dx * flip, dsy_dx * flip);
    let first_x = if p.hflip { w as f64 - 1.0 } else { 0.0 };
    let mut out = vec![0f32; w * h];
    for (oy, out_row) in out.chunks_exact_mut(w).enumerate() {
        let dx = first_x - cx - p.translate_x;
        let dy = oy as f64 - cy - p.translate_y;
        let qx = cos * dx - sin * dy;
        let qy = sin * dx + cos * dy;
        let start_x = qx - tan_shear * qy + cx;
        let start_y = qy + cy;
        if !(start_x.is_finite() && start_y.is_finite()) {
            continue;
        }
        // Interior: 0 ≤ sx < w − 1 and 0 ≤ sy < h − 1, with margins.
        let (lo, hi) = interior_columns(start_x, step_x, w as f64 - 1.0, w)
            .and_then(|(a, b)| {
                let (c, d) = interior_columns(start_y, step_y, h as f64 - 1.0, w)?;
                let (lo, hi) = (a.max(c), b.min(d));
                (lo < hi).then_some((lo, hi))
            })
            .unwrap_or((0, 0));
        let (sx0, sy0) = (start_x as f32, start_y as f32);
        let (kx, ky) = (step_x as f32, step_y as f32);
        for (ox, o) in out_row.iter_mut().enumerate().take(lo) {
            *o = bilinear_checked(image, sx0 + kx * ox as f32, sy0 + ky * ox as f32);
        }
        sample_interior(image, &mut out_row[lo..hi], lo, (sx0, sy0), (kx, ky));
        for (ox, o) in out_row.iter_mut().enumerate().skip(hi) {
            *o = bilinear_checked(image, sx0 + kx * ox as f32, sy0 + ky * ox as f32);
        }
    }
    out
}

/// Columns `ox` in `[lo, hi)` with `MARGIN ≤ start + step·ox ≤ limit −
/// MARGIN`, less one column each side; `None` when there are none. The
/// margins keep f32 rounding of the position from ever reaching an edge.
fn interior_columns(start: f64, step: f64, limit: f64, w: usize) -> Option<(usize, usize)> {
    const MARGIN: f64 = 0.01;
    let (low, high) = (MARGIN, limit - MARGIN);
    let (mut lo, mut hi) = (0.0f64, w as f64);
    if step.abs() < 1e-9 {
        if !(start >= low && start <= high) {
            return None;
        }
    } else {
        let (a, b) = ((low - start) / step, (high - start) / step);
        let (enter, leave) = if step > 0.0 { (a, b) } else { (b, a) };
        lo = lo.max(enter.ceil() + 1.0);
        hi = hi.min(leave.floor());
    }
    if lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less) {
        return None;
    }
    Some((lo as usize, hi as usize))
}

/// Bilinear samples along one row segment whose every neighbour is inside
/// the image; `first` is the output column of `out[0]`.
fn sample_interior(
    image: &GrayImage8,
    out: &mut [f32],
    first: usize,
    (sx0, sy0): (f32, f32),
    (kx, ky): (f32, f32),
) {
    let w = image.width as usize;
    let pixels = &image.pixels[..];
    // Four columns at a time: the positions, weights and blends are lane-wise
    // (vectorised by the compiler); only the 16 pixel reads are scalar.
    let mut chunks = out.chunks_exact_mut(4);
    let mut ox0 = first;
    for chunk in &mut chunks {
        let mut sx = [0f32; 4];
        let mut sy = [0f32; 4];
        for lane in 0..4 {
            let ox = (ox0 + lane) as f32;
            sx[lane] = sx0 + kx * ox;
            sy[lane] = sy0 + ky * ox;
        }
        let mut x0 = [0usize; 4];
        let mut y0 = [0usize; 4];
        let mut fx = [0f32; 4];
        let mut fy = [0f32; 4];
        for lane in 0..4 {
            // Non-negative here, so truncation is the floor.
            x0[lane] = sx[lane] as usize;
            y0[lane] = sy[lane] as usize;
            fx[lane] = sx[lane] - x0[lane] as f32;
            fy[lane] = sy[lane] - y0[lane] as f32;
        }
        let (mut a, mut b, mut c, mut d) = ([0f32; 4], [0f32; 4], [0f32; 4], [0f32; 4]);
        for lane in 0..4 {
            let at = y0[lane] * w + x0[lane];
            let top = &pixels[at..at + 2];
            let bottom = &pixels[at + w..at + w + 2];
            a[lane] = f32::from(top[0]);
            b[lane] = f32::from(top[1]);
            c[lane] = f32::from(bottom[0]);
            d[lane] = f32::from(bottom[1]);
        }
        for lane in 0..4 {
            let upper = a[lane] + (b[lane] - a[lane]) * fx[lane];
            let lower = c[lane] + (d[lane] - c[lane]) * fx[lane];
            chunk[lane] = upper + (lower - upper) * fy[lane];
        }
        ox0 += 4;
    }
    for (i, o) in chunks.into_remainder().iter_mut().enumerate() {
        let ox = (ox0 + i) as f32;
        let sx = sx0 + kx * ox;
        let sy = sy0 + ky * ox;
        let (x0, y0) = (sx as usize, sy as usize);
        let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
        let at = y0 * w + x0;
        let (a, b) = (f32::from(pixels[at]), f32::from(pixels[at + 1]));
        let (c, d) = (f32::from(pixels[at + w]), f32::from(pixels[at + w + 1]));
        let upper = a + (b - a) * fx;
        let lower = c + (d - c) * fx;
        *o = upper + (lower - upper) * fy;
    }
}

/// Bilinear sample at (sx, sy); neighbours outside the image read as 0.
fn bilinear_checked(image: &GrayImage8, sx: f32, sy: f32) -> f32 {
    let w = image.width as i64;
    let h = image.height as i64;
    if !(sx.abs() < 1e9 && sy.abs() < 1e9) {
        return 0.0;
    }
    let x0f = sx.floor();
    let y0f = sy.floor();
    if x0f < -1.0 || y0f < -1.0 || x0f > w as f32 || y0f > h as f32 {
        return 0.0;
    }
    let fx = sx - x0f;
    let fy = sy - y0f;
    let (x0, y0) = (x0f as i64, y0f as i64);
    let px = |x: i64, y: i64| -> f32 {
        if x < 0 || y < 0 || x >= w || y >= h {
            0.0
        } else {
            f32::from(image.pixels[(y * w + x) as usize])
        }
    };
    let top = px(x0, y0) * (1.0 - fx) + px(x0 + 1, y0) * fx;
    let bottom = px(x0, y0 + 1) * (1.0 - fx) + px(x0 + 1, y0 + 1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// Reflect index into 0..n without repeating the edge (torchvision/numpy
/// "reflect").
fn reflect(i: i64, n: i64) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as usize
}

fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil() as i64;
    let weights: Vec<f64> = (-radius..=radius)
        .map(|i| (-0.5 * (i as f64 / sigma).powi(2)).exp())
        .collect();
    let sum: f64 = weights.iter().sum();
    weights.iter().map(|&v| (v / sum) as f32).collect()
}

fn gaussian_blur(src: &[f32], w: usize, h: usize, sigma: f64) -> Vec<f32> {
    let kernel = gaussian_kernel(sigma);
    let radius = (kernel.len() / 2) as i64;
    let r = radius as usize;
    // Where every tap is inside (no reflection): [r, n - r).
    let interior = |n: usize| r..n.saturating_sub(r).max(r);
    let mut tmp = vec![0f32; w * h];
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        let dst = &mut tmp[y * w..(y + 1) * w];
        for x in 0..w {
            let mut acc = 0f32;
            if interior(w).contains(&x) {
                for (&kw, &v) in kernel.iter().zip(&row[x - r..x + r + 1]) {
                    acc += kw * v;
                }
            } else {
                for (k, &kw) in kernel.iter().enumerate() {
                    acc += kw * row[reflect(x as i64 + k as i64 - radius, w as i64)];
                }
            }
            dst[x] = acc;
        }
    }
    let mut out = vec![0f32; w * h];
    for y in 0..h {
        let dst = &mut out[y * w..(y + 1) * w];
        if interior(h).contains(&y) {
            // Same taps in the same order as the general case, a row at a time.
            let mut acc = vec![0f32; w];
            for (k, &kw) in kernel.iter().enumerate() {
                let src_row = &tmp[(y + k - r) * w..(y + k - r + 1) * w];
                for (a, &v) in acc.iter_mut().zip(src_row) {
                    *a += kw * v;
                }
            }
            for (d, a) in dst.iter_mut().zip(acc) {
                *d = a.clamp(0.0, 255.0);
            }
        } else {
            for (x, d) in dst.iter_mut().enumerate() {
                let mut acc = 0f32;
                for (k, &kw) in kernel.iter().enumerate() {
                    acc += kw * tmp[reflect(y as i64 + k as i64 - radius, h as i64) * w + x];
                }
                *d = acc.clamp(0.0, 255.0);
            }
        }
    }
    out
}

/// Converts to a `3 × H × W` tensor, channel-major (CHW): the gray value is
/// replicated to R, G and B, scaled by 1/255 and normalised per channel with
/// [`IMAGENET_MEAN`] / [`IMAGENET_STD`]. Index: `c * H * W + y * W + x`.
pub fn to_tensor_imagenet(image: &GrayImage8) -> Vec<f32> {
    // Per-channel lookup table, computed in f64 and rounded once to f32.
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        let mean = f64::from(IMAGENET_MEAN[c]);
        let std = f64::from(IMAGENET_STD[c]);
        for (v, slot) in table.iter_mut().enumerate() {
            *slot = ((v as f64 / 255.0 - mean) / std) as f32;
        }
    }
    let mut out = Vec::with_capacity(image.pixels.len() * 3);
    for table in &lut {
        out.extend(image.pixels.iter().map(|&v| table[usize::from(v)]));
    }
    out
}

/// Test-time augmentation views, deterministic: original, horizontal flip,
/// rotation +7° and rotation −7° (same warp as [`apply_params`], 0 fill).
pub fn tta_views(image: &GrayImage8) -> Result<[GrayImage8; 4], VisionError> {
    image.validate()?;
    let flip = AugmentParams {
        hflip: true,
        ..AugmentParams::identity()
    };
    let rot = |angle_deg: f64| AugmentParams {
        angle_deg,
        ..AugmentParams::identity()
    };
    Ok([
        image.clone(),
        apply_params(image, &flip)?,
        apply_params(image, &rot(7.0))?,
        apply_params(image, &rot(-7.0))?,
    ])
}
