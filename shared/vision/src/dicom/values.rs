//! Attribute values, and the image layout they declare.

use super::parse::Found;
use super::{
    corrupt, describe, unsupported, BITS_ALLOCATED, BITS_STORED, HIGH_BIT, NUMBER_OF_FRAMES,
    PHOTOMETRIC_INTERPRETATION, PIXEL_REPRESENTATION, PLANAR_CONFIGURATION, SAMPLES_PER_PIXEL,
};
use crate::VisionError;

/// A value as text, without padding (spaces, NULs).
pub(super) fn text(tag: u32, value: &[u8]) -> Result<&str, VisionError> {
    std::str::from_utf8(value)
        .map(|s| s.trim_matches(|c: char| c == ' ' || c == '\0'))
        .map_err(|_| corrupt(format!("{} is not text", describe(tag))))
}

pub(super) fn u16_value(found: &Found<'_>, tag: u32) -> Result<Option<u16>, VisionError> {
    match found.get(tag) {
        None => Ok(None),
        Some((_, [])) => Ok(None),
        Some((_, value)) => value
            .get(..2)
            .and_then(|b| b.try_into().ok())
            .map(|b| Some(u16::from_le_bytes(b)))
            .ok_or_else(|| {
                corrupt(format!(
                    "{} holds {} byte(s), not a 16-bit value",
                    describe(tag),
                    value.len()
                ))
            }),
    }
}

pub(super) fn required_u16(found: &Found<'_>, tag: u32) -> Result<u16, VisionError> {
    u16_value(found, tag)?.ok_or_else(|| corrupt(format!("missing {}", describe(tag))))
}

/// The values of a DS (decimal string), in order; empty when absent.
pub(super) fn decimals(found: &Found<'_>, tag: u32) -> Result<Vec<f64>, VisionError> {
    let Some((_, value)) = found.get(tag) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for part in text(tag, value)?.split('\\') {
        let part = part.trim_matches(|c: char| c == ' ' || c == '\0');
        if part.is_empty() {
            continue;
        }
        match part.parse::<f64>() {
            Ok(v) if v.is_finite() => out.push(v),
            _ => {
                return Err(corrupt(format!(
                    "{} value {part:?} is not a finite number",
                    describe(tag)
                )))
            }
        }
    }
    Ok(out)
}

/// The first value of an IS (integer string).
pub(super) fn integer(found: &Found<'_>, tag: u32) -> Result<Option<i64>, VisionError> {
    let Some((_, value)) = found.get(tag) else {
        return Ok(None);
    };
    let first = text(tag, value)?.split('\\').next().unwrap_or("").trim();
    if first.is_empty() {
        return Ok(None);
    }
    first.parse::<i64>().map(Some).map_err(|_| {
        corrupt(format!(
            "{} value {first:?} is not an integer",
            describe(tag)
        ))
    })
}

/// The first value of a CS (code string), upper-cased.
pub(super) fn code_string(found: &Found<'_>, tag: u32) -> Result<Option<String>, VisionError> {
    let Some((_, value)) = found.get(tag) else {
        return Ok(None);
    };
    let first = text(tag, value)?.split('\\').next().unwrap_or("").trim();
    Ok((!first.is_empty()).then(|| first.to_ascii_uppercase()))
}

// ---------------------------------------------------------------------------
// Image layout

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Photometric {
    Monochrome1,
    Monochrome2,
    Rgb,
    YbrFull,
    /// Only as JPEG (the decoder returns RGB).
    YbrFull422,
    /// Only as JPEG.
    YbrOther,
}

impl Photometric {
    pub(super) fn is_monochrome(self) -> bool {
        matches!(self, Self::Monochrome1 | Self::Monochrome2)
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) samples: u16,
    pub(super) planar: u16,
    pub(super) photometric: Photometric,
    pub(super) bits_allocated: u16,
    pub(super) bits_stored: u16,
    pub(super) high_bit: u16,
    pub(super) signed: bool,
    pub(super) frames: u64,
}

impl Layout {
    pub(super) fn read(found: &Found<'_>, width: u32, height: u32) -> Result<Self, VisionError> {
        let samples = u16_value(found, SAMPLES_PER_PIXEL)?.unwrap_or(1);
        let photometric = match code_string(found, PHOTOMETRIC_INTERPRETATION)?.as_deref() {
            Some("MONOCHROME1") => Photometric::Monochrome1,
            Some("MONOCHROME2") => Photometric::Monochrome2,
            Some("RGB") => Photometric::Rgb,
            Some("YBR_FULL") => Photometric::YbrFull,
            Some("YBR_FULL_422") => Photometric::YbrFull422,
            Some("YBR_ICT" | "YBR_RCT" | "YBR_PARTIAL_420") => Photometric::YbrOther,
            // Absent (required, but be lenient): by the sample count.
            None if samples == 1 => Photometric::Monochrome2,
            None if samples == 3 => Photometric::Rgb,
            Some(other) => {
                return Err(unsupported(format!(
                    "photometric interpretation {other} is not supported \
                     (MONOCHROME1, MONOCHROME2, RGB, YBR_FULL are)"
                )))
            }
            None => {
                return Err(corrupt(format!(
                "missing Photometric Interpretation (0028,0004) with {samples} samples per pixel"
            )))
            }
        };
        let want_samples = if photometric.is_monochrome() { 1 } else { 3 };
        if samples != want_samples {
            return Err(corrupt(format!(
                "Samples per Pixel is {samples}, but {photometric:?} has {want_samples}"
            )));
        }
        let bits_allocated = required_u16(found, BITS_ALLOCATED)?;
        if bits_allocated != 8 && bits_allocated != 16 {
            return Err(unsupported(format!(
                "Bits Allocated {bits_allocated} is not supported (8 and 16 are)"
            )));
        }
        if !photometric.is_monochrome() && bits_allocated != 8 {
            return Err(unsupported(format!(
                "{photometric:?} with Bits Allocated {bits_allocated} is not supported (8 is)"
            )));
        }
        let bits_stored = u16_value(found, BITS_STORED)?.unwrap_or(bits_allocated);
        if bits_stored == 0 || bits_stored > bits_allocated {
            return Err(corrupt(format!(
                "Bits Stored {bits_stored} with Bits Allocated {bits_allocated}"
            )));
        }
        let high_bit = u16_value(found, HIGH_BIT)?.unwrap_or(bits_stored - 1);
        if high_bit >= bits_allocated || high_bit + 1 < bits_stored {
            return Err(corrupt(format!(
                "High Bit {high_bit} with Bits Stored {bits_stored} and Bits Allocated {bits_allocated}"
            )));
        }
        let signed = match u16_value(found, PIXEL_REPRESENTATION)?.unwrap_or(0) {
            0 => false,
            1 => true,
            other => return Err(corrupt(format!("Pixel Representation is {other} (0 or 1)"))),
        };
        let frames = match integer(found, NUMBER_OF_FRAMES)? {
            None => 1,
            Some(n) if n >= 1 => n as u64,
            Some(n) => return Err(corrupt(format!("Number of Frames is {n}"))),
        };
        let planar = u16_value(found, PLANAR_CONFIGURATION)?.unwrap_or(0);
        Ok(Self {
            width,
            height,
            samples,
            planar,
            photometric,
            bits_allocated,
            bits_stored,
            high_bit,
            signed,
            frames,
        })
    }

    pub(super) fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    pub(super) fn bytes_per_sample(&self) -> u64 {
        u64::from(self.bits_allocated / 8)
    }

    /// Bytes of one native frame; fits easily in u64 (65535² × 3 × 2).
    pub(super) fn frame_bytes(&self) -> u64 {
        self.pixels() * u64::from(self.samples) * self.bytes_per_sample()
    }
}

pub(super) fn to_usize(n: u64) -> Result<usize, VisionError> {
    usize::try_from(n).map_err(|_| corrupt(format!("{n} bytes do not fit in memory")))
}

/// The first frame of native pixel data, after checking that the data holds
/// every frame the header declares.
pub(super) fn native_frame<'a>(layout: &Layout, data: &'a [u8]) -> Result<&'a [u8], VisionError> {
    let frame = layout.frame_bytes();
    let need = frame.checked_mul(layout.frames);
    if need.is_none_or(|need| (data.len() as u64) < need) {
        return Err(corrupt(format!(
            "Pixel Data holds {} bytes, but Rows × Columns × frames × samples × bytes per sample \
             = {} × {} × {} × {} × {} = {} bytes",
            data.len(),
            layout.height,
            layout.width,
            layout.frames,
            layout.samples,
            layout.bytes_per_sample(),
            need.map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string())
        )));
    }
    data.get(..to_usize(frame)?)
        .ok_or_else(|| corrupt("internal: frame bounds"))
}
