//! From record to pixels: anatomy → findings → positioning warp, exposure,
//! noise; and PNG encoding.

use rand::RngCore;

use crate::anatomy::{self, Acquisition};
use crate::canvas::Canvas;
use crate::pathology::{self, Mark};
use crate::record::SyntheticRecord;
use crate::seeds::{self, Domain};
use crate::SynthError;

/// An 8-bit grayscale image, rows top to bottom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayImage {
    pub width: u32,
    pub height: u32,
    /// `width * height` bytes, row-major.
    pub pixels: Vec<u8>,
}

/// What was drawn, for tests.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct Scene {
    pub anatomy: anatomy::Anatomy,
    pub acquisition: Acquisition,
    pub marks: Vec<Mark>,
}

/// `min_feature`: smallest size of the thin findings as a fraction of the
/// width (`SynthOptions::min_feature`; 0: their realistic sizes).
pub(crate) fn render_scene(
    seed: u64,
    size_px: u32,
    record: &SyntheticRecord,
    min_feature: f32,
) -> (GrayImage, Scene) {
    let n = size_px as usize;
    let (mut anatomy, acquisition) = anatomy::draw(seed, record);
    let mut findings = pathology::plan(seed, record.index, record.labels, min_feature);
    for finding in &mut findings {
        finding.modify(&mut anatomy);
    }
    // Whatever moved the diaphragm, the heart sits on it.
    anatomy.heart.seat(anatomy.dome_y[1]);
    let mut canvas = Canvas::new(n);
    let patient = u64::from(record.patient_id.saturating_sub(1));
    let mut markings = seeds::rng(seed, Domain::Patient, patient, seeds::PATIENT_MARKINGS);
    anatomy.paint(&mut canvas, &mut markings);
    let mut marks = Vec::new();
    for finding in &mut findings {
        finding.draw(&anatomy, &mut canvas, &mut marks);
    }
    let mut noise = seeds::rng(seed, Domain::Image, record.index as u64, seeds::IMAGE_NOISE);
    let pixels = expose(canvas, &acquisition, &mut noise);
    let image = GrayImage {
        width: size_px,
        height: size_px,
        pixels,
    };
    (
        image,
        Scene {
            anatomy,
            acquisition,
            marks,
        },
    )
}

const LUT_SIZE: usize = 4096;
const LUT_LO: f32 = -0.3;
const LUT_HI: f32 = 1.7;

/// Density → grey level for this exposure (gain, gamma, offset, haze), as a
/// table so there is no `powf` per pixel.
fn tone_table(a: &Acquisition) -> Vec<f32> {
    (0..LUT_SIZE)
        .map(|i| {
            let d = LUT_LO + (LUT_HI - LUT_LO) * i as f32 / (LUT_SIZE - 1) as f32;
            let mut t = a.offset + a.gain * d.max(0.0).powf(a.gamma);
            t = t * (1.0 - a.haze * 1.5) + a.haze;
            // Soft shoulder instead of hard clipping at white.
            if t > 0.8 {
                t = 0.8 + 0.2 * (1.0 - (-(t - 0.8) / 0.2).exp());
            }
            t * 255.0
        })
        .collect()
}

/// Composes the density, applies the positioning warp (inverse-mapped,
/// bilinear), exposure, heel gradient and noise.
fn expose(canvas: Canvas, a: &Acquisition, rng: &mut impl RngCore) -> Vec<u8> {
    let n = canvas.n;
    let Canvas {
        mut tissue,
        air,
        air_left,
        ..
    } = canvas;
    for ((d, air), left) in tissue.iter_mut().zip(&air).zip(&air_left) {
        *d -= air * left;
    }
    let density = tissue;
    let lut = tone_table(a);
    let lut_scale = (LUT_SIZE - 1) as f32 / (LUT_HI - LUT_LO);
    // Output (x, y) → anatomy: undo shift, rotation and scale about the centre.
    let nf = n as f32;
    let (s, c) = a.rotation.sin_cos();
    let k = 1.0 / a.scale;
    let (m00, m01, m10, m11) = (c * k, s * k, -s * k, c * k);
    let centre = nf * 0.5;
    let (sx, sy) = (a.shift.0 * nf, a.shift.1 * nf);
    // Irwin-Hall(4) of bytes: mean 510, sd 147.8; close enough to Gaussian
    // and far cheaper than Box-Muller per pixel.
    let noise_scale = a.noise / 147.8;
    let last = (n - 1) as f32;
    let mut noise_bytes = vec![0u8; 4 * n];
    let mut out = vec![0u8; n * n];
    for y in 0..n {
        rng.fill_bytes(&mut noise_bytes);
        let oy = y as f32 + 0.5 - centre - sy;
        let heel = 1.0 + a.heel * ((y as f32 + 0.5) / nf - 0.5);
        let ox0 = 0.5 - centre - sx;
        let mut ax = m00 * ox0 + m01 * oy + centre - 0.5;
        let mut ay = m10 * ox0 + m11 * oy + centre - 0.5;
        for (x, bytes) in noise_bytes.chunks_exact(4).enumerate() {
            let (fx, fy) = (ax.clamp(0.0, last), ay.clamp(0.0, last));
            let (ix, iy) = (fx as usize, fy as usize);
            let (tx, ty) = (fx - ix as f32, fy - iy as f32);
            let (ix1, iy1) = ((ix + 1).min(n - 1), (iy + 1).min(n - 1));
            let row0 = iy * n;
            let row1 = iy1 * n;
            let top = density[row0 + ix] + (density[row0 + ix1] - density[row0 + ix]) * tx;
            let bottom = density[row1 + ix] + (density[row1 + ix1] - density[row1 + ix]) * tx;
            let d = top + (bottom - top) * ty;
            let slot = ((d - LUT_LO) * lut_scale).clamp(0.0, (LUT_SIZE - 1) as f32) as usize;
            let sum = u32::from(bytes[0])
                + u32::from(bytes[1])
                + u32::from(bytes[2])
                + u32::from(bytes[3]);
            let noise = (sum as f32 - 510.0) * noise_scale;
            // `as u8` saturates; + 0.5 rounds (f32::round is a libm call on baseline x86-64).
            out[y * n + x] = (lut[slot] * heel + noise + 0.5).clamp(0.0, 255.0) as u8;
            ax += m00;
            ay += m10;
        }
    }
    out
}

/// Encodes an 8-bit grayscale PNG. Uses `Compression::Fast` (the png
/// crate's fdeflate path with adaptive row filters): several times faster
/// than the default for files ~10 % larger. The bytes are stable for a given
/// `png` crate version (pinned by Cargo.lock).
pub fn encode_png(image: &GrayImage) -> Result<Vec<u8>, SynthError> {
    let expected = image.width as usize * image.height as usize;
    if image.pixels.len() != expected || expected == 0 {
        return Err(SynthError::Png(format!(
            "{}x{} image has {} pixels",
            image.width,
            image.height,
            image.pixels.len()
        )));
    }
    let mut bytes = Vec::with_capacity(expected / 2 + 1024);
    let mut encoder = png::Encoder::new(&mut bytes, image.width, image.height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let png_error = |e: png::EncodingError| SynthError::Png(e.to_string());
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(&image.pixels).map_err(png_error)?;
    writer.finish().map_err(png_error)?;
    Ok(bytes)
}
