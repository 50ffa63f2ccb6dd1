//! PNG, JPEG and DICOM decoding to 8-bit grayscale, with size limits
//! checked from the header before any pixel buffer is allocated. DICOM has
//! its own module, `dicom`; this one sniffs the format and holds
//! the PNG/JPEG path (which DICOM's JPEG transfer syntaxes reuse).

use std::io::Cursor;

use image::{DynamicImage, ImageError, ImageFormat, ImageReader};

use crate::{GrayImage8, VisionError};

/// Bounds on what [`decode_gray8`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Most pixels (width × height) an image may declare. Default 50,000,000.
    pub max_pixels: u64,
    /// Most input bytes. Default 64 MiB.
    pub max_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 50_000_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Decodes a PNG (8/16-bit gray, gray+alpha, RGB, RGBA, palette), a JPEG
/// or a DICOM Part 10 file into 8-bit grayscale.
///
/// DICOM (`DICM` at byte 128) goes to the `dicom` module: transfer
/// syntaxes, rescale, VOI (LUT, window, min–max) and MONOCHROME1 as the
/// crate documentation summarises (details in that module's source). For
/// PNG and JPEG:
///
/// * 16-bit grayscale keeps its contrast when it uses fewer than 16 bits,
///   as exports of 12-bit detectors often do (the mapping is in
///   docs/architecture.md, "16-bit grey PNG"); other
///   16-bit samples (colour) become 8-bit by `>> 8`.
/// * Colour becomes luma as Pillow's `convert("L")` does (ITU-R 601-2:
///   `(R*19595 + G*38470 + B*7471 + 0x8000) >> 16`, i.e. R*0.299 +
///   G*0.587 + B*0.114 rounded).
/// * Alpha is ignored (not composited).
/// * Bytes after a complete PNG (after IEND) are ignored, as Pillow does.
/// * A JPEG with no end-of-image marker after its last scan is `Corrupt`
///   (truncated), as Pillow refuses it by default.
///
/// The byte limit is checked first, then the dimensions read from the
/// header; only then are pixels decoded.
pub fn decode_gray8(bytes: &[u8], limits: &DecodeLimits) -> Result<GrayImage8, VisionError> {
    if bytes.is_empty() {
        return Err(VisionError::Empty);
    }
    let len = bytes.len() as u64;
    if len > limits.max_bytes {
        return Err(VisionError::TooManyBytes {
            len,
            max_bytes: limits.max_bytes,
        });
    }
    // PNG/JPEG signatures first: a valid PNG or JPEG is never sent to the
    // DICOM path, whatever its byte 128 holds.
    let png_or_jpeg = bytes.starts_with(b"\x89PNG") || bytes.starts_with(&[0xFF, 0xD8]);
    if !png_or_jpeg && crate::dicom::has_dicom_magic(bytes) {
        return crate::dicom::decode_dicom(bytes, limits);
    }
    let format = sniff_format(bytes)?;
    let dynamic = decode_dynamic(bytes, format, limits)?;
    match dynamic {
        DynamicImage::ImageLuma16(gray) => {
            let (width, height) = gray.dimensions();
            let pixels = gray16_to_8(gray.as_raw(), png_significant_gray_bits(bytes));
            GrayImage8::new(width, height, pixels)
        }
        DynamicImage::ImageLumaA16(gray) => {
            let (width, height) = gray.dimensions();
            let values: Vec<u16> = gray.pixels().map(|p| p.0[0]).collect();
            let pixels = gray16_to_8(&values, png_significant_gray_bits(bytes));
            GrayImage8::new(width, height, pixels)
        }
        other => to_gray8(other),
    }
}

/// 16-bit grayscale to 8 bits, keeping the contrast of images that use
/// fewer than 16 bits. With `b` significant bits the top value `2^b - 1`
/// becomes 255 and every value `v` becomes `floor(v * 255 / (2^b - 1) +
/// 0.5)`, where:
///
/// * with a PNG `sBIT` chunk of `b` < 16 bits: if every sample fits in `b`
///   bits the values were stored unscaled (as many exporters write them)
///   and are mapped as they are; otherwise they were scaled to 16 bits as
///   the PNG specification says, and `v >> (16 - b)` is mapped;
/// * without one (or with `sBIT` 16): `b` is the bit length of the largest
///   sample, at least 8 (a 12-bit image whose brightest pixel is 3,900
///   has `b` = 12). When `b` is 16 the mapping is `v >> 8`, Pillow's, so
///   full-range 16-bit images decode as before.
///
/// So a 12-bit image written into a 16-bit PNG keeps its 4,096 levels'
/// contrast instead of falling to the 16 grey levels a plain `>> 8`
/// leaves it.
pub(crate) fn gray16_to_8(values: &[u16], significant_bits: Option<u8>) -> Vec<u8> {
    let max = values.iter().copied().max().unwrap_or(0);
    let used_bits = (16 - max.leading_zeros()).max(8);
    let (bits, shift) = match significant_bits {
        Some(b @ 1..=15) if u32::from(max) < (1u32 << b) => (u32::from(b), 0),
        Some(b @ 1..=15) => (u32::from(b), 16 - u32::from(b)),
        _ if used_bits == 16 => return values.iter().map(|&v| hi(v)).collect(),
        _ => (used_bits, 0),
    };
    let top = (1u32 << bits) - 1;
    // One output level per possible input value (at most 65,536), so large
    // images pay a table lookup per pixel.
    let table: Vec<u8> = (0..=top)
        .map(|v| ((v * 255 * 2 + top) / (2 * top)).min(255) as u8)
        .collect();
    values
        .iter()
        .map(|&v| {
            table
                .get((u32::from(v) >> shift) as usize)
                .copied()
                .unwrap_or(255)
        })
        .collect()
}

/// The grey channel's significant bits from a PNG's `sBIT` chunk (before
/// the first `IDAT`), if it has one.
fn png_significant_gray_bits(bytes: &[u8]) -> Option<u8> {
    let mut at = PNG_SIGNATURE.len();
    loop {
        let len = u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        let kind = bytes.get(at + 4..at + 8)?;
        match kind {
            b"sBIT" => return bytes.get(at + 8).copied(),
            b"IDAT" | b"IEND" => return None,
            _ => at = at.checked_add(12)?.checked_add(len)?,
        }
    }
}

/// PNG or JPEG bytes → `DynamicImage`, with the header checks and decoder
/// limits described at [`decode_gray8`]. The byte limit is the caller's.
pub(crate) fn decode_dynamic(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> Result<DynamicImage, VisionError> {
    let name = format_name(format);

    // PNG: read IHDR ourselves, so an over-large header is refused whatever
    // follows it (the PNG decoder wants to see IDAT before it reports sizes).
    if let Some((width, height)) = png_ihdr_dims(bytes) {
        check_pixels(width, height, limits)?;
    }
    // JPEG: no end-of-image marker after the last scan means truncated.
    // zune-jpeg would otherwise fill the missing part with grey.
    if format == ImageFormat::Jpeg && !jpeg_has_eoi_after_last_sos(bytes) {
        return Err(VisionError::Corrupt {
            format: name,
            detail: "truncated or incomplete: no end-of-image marker after a start-of-scan".into(),
        });
    }

    // Header only: no pixel buffer yet.
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| map_image_error(name, e, None))?;
    if width == 0 || height == 0 {
        return Err(VisionError::Corrupt {
            format: name,
            detail: format!("header declares zero-sized image {width}x{height}"),
        });
    }
    check_pixels(width, height, limits)?;
    let pixels = u64::from(width) * u64::from(height);

    // Decode under limits that match the header, as a second guard: at most
    // 8 bytes a pixel (RGBA16) for the output plus as much again for the
    // decoder's own buffers.
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(width);
    decoder_limits.max_image_height = Some(height);
    decoder_limits.max_alloc = Some(pixels.saturating_mul(16).saturating_add(1 << 20));
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(decoder_limits);
    reader
        .decode()
        .map_err(|e| map_image_error(name, e, Some((width, height, limits.max_pixels))))
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// PNG or JPEG by signature (DICOM is recognised before this is called);
/// anything else is `UnsupportedFormat`, named where `image` recognises it.
fn sniff_format(bytes: &[u8]) -> Result<ImageFormat, VisionError> {
    // Short prefixes count too, so a cut-off signature is `Corrupt`, not
    // "unsupported".
    if bytes.starts_with(b"\x89PNG") {
        return Ok(ImageFormat::Png);
    }
    if bytes.starts_with(&[0xFF, 0xD8]) {
        return Ok(ImageFormat::Jpeg);
    }
    Err(VisionError::UnsupportedFormat {
        detail: match image::guess_format(bytes) {
            Ok(other) => format!("{other:?} (only PNG, JPEG and DICOM are supported)"),
            Err(_) => "unrecognised signature (only PNG, JPEG and DICOM are supported)".into(),
        },
    })
}

/// Width and height from a PNG's IHDR, when the first chunk is one.
fn png_ihdr_dims(bytes: &[u8]) -> Option<(u32, u32)> {
    if !bytes.starts_with(PNG_SIGNATURE) || bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(bytes.get(16..20)?.try_into().ok()?);
    let h = u32::from_be_bytes(bytes.get(20..24)?.try_into().ok()?);
    Some((w, h))
}

/// In entropy-coded data 0xFF is always followed by 0x00 or a restart
/// marker, so the last `FF DA` (start of scan) belongs to the main image's
/// last scan; a complete file has `FF D9` (end of image) after it.
pub(crate) fn jpeg_has_eoi_after_last_sos(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(pos) => bytes
            .get(pos..)
            .is_some_and(|tail| tail.windows(2).any(|w| w == [0xFF, 0xD9])),
        None => false,
    }
}

pub(crate) fn check_pixels(
    width: u32,
    height: u32,
    limits: &DecodeLimits,
) -> Result<(), VisionError> {
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(VisionError::TooLarge {
            width,
            height,
            max_pixels: limits.max_pixels,
        });
    }
    Ok(())
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        _ => "image",
    }
}

fn map_image_error(
    format: &'static str,
    err: ImageError,
    dims: Option<(u32, u32, u64)>,
) -> VisionError {
    match err {
        ImageError::Limits(e) => match dims {
            Some((width, height, max_pixels)) => VisionError::TooLarge {
                width,
                height,
                max_pixels,
            },
            None => VisionError::Corrupt {
                format,
                detail: format!("decoder limit reached: {e}"),
            },
        },
        ImageError::Unsupported(e) => VisionError::UnsupportedFormat {
            detail: format!("{format}: {e}"),
        },
        ImageError::Decoding(e) => VisionError::Corrupt {
            format,
            detail: e.to_string(),
        },
        ImageError::IoError(e) => VisionError::Corrupt {
            format,
            detail: format!("truncated or unreadable: {e}"),
        },
        other => VisionError::Corrupt {
            format,
            detail: other.to_string(),
        },
    }
}

/// Pillow's `L24`: ITU-R 601-2 luma in 16-bit fixed point, rounded.
#[inline]
pub(crate) fn luma(r: u8, g: u8, b: u8) -> u8 {
    let l = (u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16;
    // Max is (255 * 65536 + 0x8000) >> 16 = 255.
    l.min(255) as u8
}

#[inline]
fn hi(v: u16) -> u8 {
    (v >> 8) as u8
}

pub(crate) fn to_gray8(img: DynamicImage) -> Result<GrayImage8, VisionError> {
    let (width, height) = (img.width(), img.height());
    let pixels: Vec<u8> = match img {
        DynamicImage::ImageLuma8(b) => b.into_raw(),
        DynamicImage::ImageLumaA8(b) => b.pixels().map(|p| p.0[0]).collect(),
        DynamicImage::ImageRgb8(b) => b.pixels().map(|p| luma(p.0[0], p.0[1], p.0[2])).collect(),
        DynamicImage::ImageRgba8(b) => b.pixels().map(|p| luma(p.0[0], p.0[1], p.0[2])).collect(),
        DynamicImage::ImageLuma16(b) => b.pixels().map(|p| hi(p.0[0])).collect(),
        DynamicImage::ImageLumaA16(b) => b.pixels().map(|p| hi(p.0[0])).collect(),
        DynamicImage::ImageRgb16(b) => b
            .pixels()
            .map(|p| luma(hi(p.0[0]), hi(p.0[1]), hi(p.0[2])))
            .collect(),
        DynamicImage::ImageRgba16(b) => b
            .pixels()
            .map(|p| luma(hi(p.0[0]), hi(p.0[1]), hi(p.0[2])))
            .collect(),
        other => {
            return Err(VisionError::UnsupportedFormat {
                detail: format!("pixel layout {:?}", other.color()),
            })
        }
    };
    GrayImage8::new(width, height, pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luma_matches_pillow_corners() {
        assert_eq!(luma(0, 0, 0), 0);
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
    }

    #[test]
    fn defaults() {
        let d = DecodeLimits::default();
        assert_eq!(d.max_pixels, 50_000_000);
        assert_eq!(d.max_bytes, 64 << 20);
    }
}
