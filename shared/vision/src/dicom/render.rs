//! Pixel pipeline.

use super::parse::{walk, Cursor, Found, Until};
use super::syntax::Syntax;
use super::values::{code_string, decimals, to_usize, Layout, Photometric};
use super::{
    corrupt, LUT_DATA, LUT_DESCRIPTOR, RESCALE_INTERCEPT, RESCALE_SLOPE, VOI_LUT_ATTRIBUTES,
    VOI_LUT_FUNCTION, WINDOW_CENTER, WINDOW_WIDTH,
};
use crate::decode::luma;
use crate::{GrayImage8, VisionError};

/// The VOI transform chosen for a monochrome image.
#[derive(Debug, Clone, PartialEq)]
enum Voi {
    Lut {
        first: i64,
        bits: u32,
        entries: Vec<u16>,
    },
    Window {
        center: f64,
        width: f64,
        function: WindowFunction,
    },
    MinMax,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WindowFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

/// `floor(y + 0.5)` clamped to 0..=255.
fn round_u8(y: f64) -> u8 {
    let v = (y + 0.5).floor();
    if v.is_nan() {
        0
    } else {
        v.clamp(0.0, 255.0) as u8
    }
}

/// The window functions of PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.2
/// (LINEAR_EXACT) and C.11.2.1.3.1 (SIGMOID), with y in 0..=255.
fn window(x: f64, center: f64, width: f64, function: WindowFunction) -> f64 {
    const Y_MAX: f64 = 255.0;
    match function {
        WindowFunction::Linear => {
            let (c, w) = (center - 0.5, width - 1.0);
            if x <= c - w / 2.0 {
                0.0
            } else if x > c + w / 2.0 {
                Y_MAX
            } else {
                ((x - c) / w + 0.5) * Y_MAX
            }
        }
        WindowFunction::LinearExact => {
            if x <= center - width / 2.0 {
                0.0
            } else if x > center + width / 2.0 {
                Y_MAX
            } else {
                ((x - center) / width + 0.5) * Y_MAX
            }
        }
        WindowFunction::Sigmoid => Y_MAX / (1.0 + (-4.0 * (x - center) / width).exp()),
    }
}

fn read_voi(found: &Found<'_>, explicit: bool, signed: bool) -> Result<Voi, VisionError> {
    if let Some(item) = &found.voi_lut_item {
        let mut c = Cursor::new(item.buf, item.base);
        let mut lut = Found::default();
        walk(
            &mut c,
            explicit,
            1,
            Until::End,
            VOI_LUT_ATTRIBUTES,
            Some(&mut lut),
        )?;
        return read_voi_lut(&lut, signed);
    }
    let centers = decimals(found, WINDOW_CENTER)?;
    let widths = decimals(found, WINDOW_WIDTH)?;
    if let (Some(&center), Some(&width)) = (centers.first(), widths.first()) {
        let function = match code_string(found, VOI_LUT_FUNCTION)?.as_deref() {
            Some("LINEAR_EXACT") => WindowFunction::LinearExact,
            Some("SIGMOID") => WindowFunction::Sigmoid,
            // LINEAR, absent, or unknown: the default function.
            _ => WindowFunction::Linear,
        };
        let valid = match function {
            WindowFunction::Linear => width >= 1.0,
            WindowFunction::LinearExact | WindowFunction::Sigmoid => width > 0.0,
        };
        if valid {
            return Ok(Voi::Window {
                center,
                width,
                function,
            });
        }
    }
    Ok(Voi::MinMax)
}

fn read_voi_lut(lut: &Found<'_>, pixel_signed: bool) -> Result<Voi, VisionError> {
    let (vr, descriptor) = lut
        .get(LUT_DESCRIPTOR)
        .ok_or_else(|| corrupt("VOI LUT Sequence item has no LUT Descriptor (0028,3002)"))?;
    let (_, data) = lut
        .get(LUT_DATA)
        .ok_or_else(|| corrupt("VOI LUT Sequence item has no LUT Data (0028,3006)"))?;
    let d: [u8; 6] = descriptor
        .get(..6)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            corrupt(format!(
                "LUT Descriptor (0028,3002) holds {} bytes, not three 16-bit values",
                descriptor.len()
            ))
        })?;
    let [n0, n1, f0, f1, b0, b1] = d;
    let entries = match u16::from_le_bytes([n0, n1]) {
        0 => 65_536usize,
        n => usize::from(n),
    };
    // The first mapped value is SS when the VR says so; in implicit VR it
    // follows Pixel Representation (as pydicom resolves "US or SS").
    let first_signed = match vr {
        Some(vr) => &vr == b"SS",
        None => pixel_signed,
    };
    let first_raw = u16::from_le_bytes([f0, f1]);
    let first = if first_signed {
        i64::from(first_raw as i16)
    } else {
        i64::from(first_raw)
    };
    let bits = u32::from(u16::from_le_bytes([b0, b1]));
    if !(1..=16).contains(&bits) {
        return Err(corrupt(format!(
            "LUT Descriptor declares {bits} bits per entry (1 to 16)"
        )));
    }
    let table: Vec<u16> = if data.len() >= entries * 2 {
        data.chunks_exact(2)
            .take(entries)
            .map(|w| w.try_into().map_or(0, u16::from_le_bytes))
            .collect()
    } else if bits <= 8 && data.len() >= entries {
        // Some writers store 8-bit entries one per byte.
        data.iter().take(entries).map(|&b| u16::from(b)).collect()
    } else {
        return Err(corrupt(format!(
            "LUT Data (0028,3006) holds {} bytes; the LUT Descriptor declares {entries} entries",
            data.len()
        )));
    };
    Ok(Voi::Lut {
        first,
        bits,
        entries: table,
    })
}

/// Stored sample codes (`bits_stored` bits, not yet sign-extended) of the
/// first `count` pixels, passed to `f` in order.
fn for_each_code(layout: &Layout, data: &[u8], count: usize, mut f: impl FnMut(usize)) {
    let shift = u32::from(layout.high_bit + 1 - layout.bits_stored);
    let mask = (1u32 << layout.bits_stored) - 1;
    if layout.bits_allocated == 8 {
        for &b in data.iter().take(count) {
            f(((u32::from(b) >> shift) & mask) as usize);
        }
    } else {
        for w in data.chunks_exact(2).take(count) {
            let word = w.try_into().map_or(0, u16::from_le_bytes);
            f(((u32::from(word) >> shift) & mask) as usize);
        }
    }
}

/// Stored value of a code: two's complement over `bits_stored` bits when
/// signed.
fn code_value(code: usize, bits_stored: u16, signed: bool) -> i64 {
    let code = code as i64;
    if signed && code >> (bits_stored - 1) & 1 == 1 {
        code - (1i64 << bits_stored)
    } else {
        code
    }
}

pub(super) fn render(
    layout: &Layout,
    found: &Found<'_>,
    syntax: Syntax,
    frame: &[u8],
) -> Result<GrayImage8, VisionError> {
    let pixels = to_usize(layout.pixels())?;
    let need = to_usize(layout.frame_bytes())?;
    if frame.len() < need {
        return Err(corrupt(format!(
            "frame holds {} bytes, {need} needed",
            frame.len()
        )));
    }
    let out = if layout.photometric.is_monochrome() {
        render_monochrome(layout, found, syntax, frame, pixels)?
    } else {
        render_colour(layout, frame, pixels)
    };
    GrayImage8::new(layout.width, layout.height, out)
}

fn render_colour(layout: &Layout, frame: &[u8], pixels: usize) -> Vec<u8> {
    let planar = layout.planar == 1;
    let channel = |c: usize| -> Box<dyn Iterator<Item = u8> + '_> {
        if planar {
            Box::new(frame.iter().skip(c * pixels).take(pixels).copied())
        } else {
            Box::new(frame.iter().skip(c).step_by(3).take(pixels).copied())
        }
    };
    if layout.photometric == Photometric::YbrFull {
        // Y of YBR_FULL is the ITU-R 601 luma already.
        return channel(0).collect();
    }
    channel(0)
        .zip(channel(1))
        .zip(channel(2))
        .map(|((r, g), b)| luma(r, g, b))
        .collect()
}

fn render_monochrome(
    layout: &Layout,
    found: &Found<'_>,
    syntax: Syntax,
    frame: &[u8],
    pixels: usize,
) -> Result<Vec<u8>, VisionError> {
    let slope = decimals(found, RESCALE_SLOPE)?
        .first()
        .copied()
        .unwrap_or(1.0);
    let intercept = decimals(found, RESCALE_INTERCEPT)?
        .first()
        .copied()
        .unwrap_or(0.0);
    let voi = read_voi(found, syntax.explicit_vr(), layout.signed)?;
    let (bits_stored, signed) = (layout.bits_stored, layout.signed);
    let modality = |code: usize| code_value(code, bits_stored, signed) as f64 * slope + intercept;

    // Min–max needs the frame's range of rescaled values.
    let (mut lo, mut hi) = (0.0, 0.0);
    if voi == Voi::MinMax {
        let (mut min, mut max) = (i64::MAX, i64::MIN);
        for_each_code(layout, frame, pixels, |code| {
            let v = code_value(code, bits_stored, signed);
            min = min.min(v);
            max = max.max(v);
        });
        let (a, b) = (
            min as f64 * slope + intercept,
            max as f64 * slope + intercept,
        );
        (lo, hi) = (a.min(b), a.max(b));
    }

    let invert = layout.photometric == Photometric::Monochrome1;
    let level = |code: usize| -> u8 {
        let x = modality(code);
        let level = match &voi {
            Voi::Lut {
                first,
                bits,
                entries,
            } => {
                let last = entries.len().saturating_sub(1);
                let index = (x.floor() - *first as f64).clamp(0.0, last as f64) as usize;
                let top = f64::from((1u32 << bits) - 1);
                let entry = f64::from(entries.get(index).copied().unwrap_or(0)).min(top);
                round_u8(entry / top * 255.0)
            }
            Voi::Window {
                center,
                width,
                function,
            } => round_u8(window(x, *center, *width, *function)),
            Voi::MinMax => {
                if hi > lo {
                    round_u8((x - lo) / (hi - lo) * 255.0)
                } else {
                    0
                }
            }
        };
        if invert {
            255 - level
        } else {
            level
        }
    };

    let mut out = Vec::with_capacity(pixels);
    let codes = 1usize << layout.bits_stored;
    if pixels >= codes {
        // One output level per possible stored code (at most 65,536).
        let table: Vec<u8> = (0..codes).map(level).collect();
        for_each_code(layout, frame, pixels, |code| {
            out.push(table.get(code).copied().unwrap_or(0));
        });
    } else {
        for_each_code(layout, frame, pixels, |code| out.push(level(code)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_window_follows_the_standard() {
        // PS3.3 C.11.2.1.2.1 notes: c=2048, w=4096 maps 0 and below to the
        // minimum and above 4095 to the maximum.
        let f = WindowFunction::Linear;
        assert_eq!(window(0.0, 2048.0, 4096.0, f), 0.0);
        assert_eq!(window(4096.0, 2048.0, 4096.0, f), 255.0);
        assert_eq!(round_u8(window(2047.5, 2048.0, 4096.0, f)), 128);
        // c=0, w=1: a step at -0.5.
        assert_eq!(window(-0.5, 0.0, 1.0, f), 0.0);
        assert_eq!(window(-0.4, 0.0, 1.0, f), 255.0);
        let e = WindowFunction::LinearExact;
        assert_eq!(window(-10.0, 0.0, 20.0, e), 0.0);
        assert_eq!(window(0.0, 0.0, 20.0, e), 127.5);
        let s = WindowFunction::Sigmoid;
        assert_eq!(window(40.0, 40.0, 400.0, s), 127.5);
    }

    #[test]
    fn signed_codes() {
        assert_eq!(code_value(0x0FFF, 12, true), -1);
        assert_eq!(code_value(0x0800, 12, true), -2048);
        assert_eq!(code_value(0x07FF, 12, true), 2047);
        assert_eq!(code_value(0x0FFF, 12, false), 4095);
    }
}
