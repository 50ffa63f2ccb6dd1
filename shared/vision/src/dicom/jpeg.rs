//! JPEG: Baseline and Extended (8-bit, through the `image` crate, or
//! `jpeg-decoder` for RGB without colour transform) and Lossless (process
//! 14, `jpeg-decoder`).

use image::{DynamicImage, ImageFormat};

use super::parse::{first_frame, Found};
use super::render::render;
use super::syntax::Syntax;
use super::values::{to_usize, Layout, Photometric};
use super::{corrupt, unsupported};
use crate::decode::{decode_dynamic, jpeg_has_eoi_after_last_sos, to_gray8};
use crate::{DecodeLimits, GrayImage8, VisionError};

/// What a JPEG or JPEG-LS frame header (its first start-of-frame marker)
/// declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct JpegFrameHeader {
    /// The `n` of the FFn marker: C0–CF for JPEG, F7 for JPEG-LS.
    pub(super) marker: u8,
    pub(super) precision: u8,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) components: u8,
}

/// The first marker `wanted` accepts, walking the segments from after SOI
/// up to the first scan: the marker and its offset. Stops (`None`) at end
/// of image, at a scan `wanted` does not accept, or at malformed bytes.
pub(super) fn find_marker(jpeg: &[u8], wanted: impl Fn(u8) -> bool) -> Option<(u8, usize)> {
    let mut at = 2usize;
    loop {
        if jpeg.get(at) != Some(&0xFF) {
            return None;
        }
        let marker = *jpeg.get(at + 1)?;
        match marker {
            0xFF => at += 1,
            m if wanted(m) => return Some((m, at)),
            0xD8 | 0x01 | 0xD0..=0xD7 => at += 2,
            0xD9 | 0xDA => return None,
            _ => {
                let len = u16::from_be_bytes(jpeg.get(at + 2..at + 4)?.try_into().ok()?);
                at = at.checked_add(2 + usize::from(len))?;
            }
        }
    }
}

/// The first start-of-frame marker's header (JPEG's SOF0–SOF15 or
/// JPEG-LS's SOF55), if one comes before the first scan.
pub(super) fn jpeg_frame_header(jpeg: &[u8]) -> Option<JpegFrameHeader> {
    let (marker, at) = find_marker(
        jpeg,
        |m| matches!(m, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF | 0xF7),
    )?;
    // FFCn, length (2), precision (1), lines (2), samples per line (2),
    // components (1).
    let field = |offset: usize| -> Option<u32> {
        Some(u32::from(u16::from_be_bytes(
            jpeg.get(at + offset..at + offset + 2)?.try_into().ok()?,
        )))
    };
    Some(JpegFrameHeader {
        marker,
        precision: *jpeg.get(at + 4)?,
        height: field(5)?,
        width: field(7)?,
        components: *jpeg.get(at + 9)?,
    })
}

pub(super) fn decode_jpeg_frame(
    layout: &Layout,
    found: &Found<'_>,
    syntax: Syntax,
    items: &[u8],
    limits: &DecodeLimits,
) -> Result<GrayImage8, VisionError> {
    let jpeg = first_frame(items);
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        return Err(corrupt(
            "the first Pixel Data fragment is not a JPEG stream (no start-of-image marker)",
        ));
    }
    // The frame header is checked before anything is decoded: a few bytes
    // declaring a frame far larger than Rows × Columns would otherwise cost
    // the decoder's buffers for the declared size before the mismatch shows.
    let header = jpeg_frame_header(&jpeg).ok_or_else(|| {
        corrupt("JPEG frame: no frame header (start-of-frame marker) before the first scan")
    })?;
    if header.precision != 8 {
        return Err(unsupported(format!(
            "JPEG frame with {}-bit samples is not supported (8-bit is)",
            header.precision
        )));
    }
    if (header.width, header.height) != (layout.width, layout.height) {
        return Err(corrupt(format!(
            "JPEG frame header declares {}x{}, but Rows × Columns is {}x{}",
            header.width, header.height, layout.width, layout.height
        )));
    }
    if layout.photometric == Photometric::Rgb {
        return decode_rgb_without_transform(layout, found, syntax, &jpeg);
    }
    let dynamic = decode_dynamic(&jpeg, ImageFormat::Jpeg, limits).map_err(|e| match e {
        VisionError::Corrupt { detail, .. } => corrupt(format!("JPEG frame: {detail}")),
        VisionError::UnsupportedFormat { detail } => unsupported(format!("JPEG frame: {detail}")),
        other => other,
    })?;
    if (dynamic.width(), dynamic.height()) != (layout.width, layout.height) {
        return Err(corrupt(format!(
            "JPEG frame is {}x{}, but Rows × Columns is {}x{}",
            dynamic.width(),
            dynamic.height(),
            layout.width,
            layout.height
        )));
    }
    match dynamic {
        DynamicImage::ImageLuma8(gray) if layout.photometric.is_monochrome() => {
            // The decoded samples are the stored values, 8 bits each.
            let jpeg_layout = Layout {
                bits_allocated: 8,
                bits_stored: 8,
                high_bit: 7,
                samples: 1,
                planar: 0,
                ..*layout
            };
            render(&jpeg_layout, found, syntax, gray.as_raw())
        }
        other => to_gray8(other),
    }
}

/// A JPEG frame whose Photometric Interpretation is RGB holds R, G and B
/// as coded, with no YCbCr transform (PS3.5 8.2.1), whatever its markers
/// suggest; decoders that follow JFIF would convert it, so `jpeg-decoder`
/// is told the components are RGB. The frame header was checked against
/// Rows × Columns.
fn decode_rgb_without_transform(
    layout: &Layout,
    found: &Found<'_>,
    syntax: Syntax,
    jpeg: &[u8],
) -> Result<GrayImage8, VisionError> {
    let mut decoder = jpeg_decoder::Decoder::new(jpeg);
    // `RGB` interleaves the three components as coded (`None` would leave
    // each line's components one after the other).
    decoder.set_color_transform(jpeg_decoder::ColorTransform::RGB);
    decoder.set_max_decoding_buffer_size(to_usize(layout.pixels() * 3)?);
    let samples = decoder.decode().map_err(|e| match e {
        jpeg_decoder::Error::Unsupported(feature) => {
            unsupported(format!("JPEG frame: unsupported {feature:?}"))
        }
        other => corrupt(format!("JPEG frame: {other}")),
    })?;
    let info = decoder
        .info()
        .ok_or_else(|| corrupt("JPEG frame has no frame header"))?;
    if info.pixel_format != jpeg_decoder::PixelFormat::RGB24 {
        return Err(corrupt(format!(
            "JPEG frame of {:?}, but Photometric Interpretation is RGB",
            info.pixel_format
        )));
    }
    let rgb = Layout {
        planar: 0,
        ..*layout
    };
    render(&rgb, found, syntax, &samples)
}

/// JPEG Lossless (process 14) with `jpeg-decoder`: the frame header is read
/// first and must match Rows × Columns (already within the pixel limit)
/// before any sample buffer is allocated.
pub(super) fn decode_jpeg_lossless_frame(
    layout: &Layout,
    found: &Found<'_>,
    syntax: Syntax,
    items: &[u8],
) -> Result<GrayImage8, VisionError> {
    let jpeg = first_frame(items);
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        return Err(corrupt(
            "the first Pixel Data fragment is not a JPEG stream (no start-of-image marker)",
        ));
    }
    if !jpeg_has_eoi_after_last_sos(&jpeg) {
        return Err(corrupt(
            "JPEG Lossless frame: truncated or incomplete, no end-of-image marker after a start-of-scan",
        ));
    }
    let map_error = |e: jpeg_decoder::Error| match e {
        jpeg_decoder::Error::Unsupported(feature) => {
            unsupported(format!("JPEG Lossless frame: unsupported {feature:?}"))
        }
        other => corrupt(format!("JPEG Lossless frame: {other}")),
    };
    let mut decoder = jpeg_decoder::Decoder::new(jpeg.as_slice());
    decoder.read_info().map_err(map_error)?;
    let info = decoder
        .info()
        .ok_or_else(|| corrupt("JPEG Lossless frame has no frame header"))?;
    if (u32::from(info.width), u32::from(info.height)) != (layout.width, layout.height) {
        return Err(corrupt(format!(
            "JPEG Lossless frame is {}x{}, but Rows × Columns is {}x{}",
            info.width, info.height, layout.width, layout.height
        )));
    }
    let components = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 | jpeg_decoder::PixelFormat::L16 => 1,
        jpeg_decoder::PixelFormat::RGB24 => 3,
        jpeg_decoder::PixelFormat::CMYK32 => 4,
    };
    decoder.set_max_decoding_buffer_size(to_usize(layout.pixels() * components)?);
    #[allow(unused_mut)] // mutated on big-endian targets only
    let mut samples = decoder.decode().map_err(map_error)?;
    let mono = layout.photometric.is_monochrome();
    let frame_layout = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 if mono => Layout {
            bits_allocated: 8,
            bits_stored: layout.bits_stored.min(8),
            high_bit: layout.bits_stored.min(8) - 1,
            ..*layout
        },
        jpeg_decoder::PixelFormat::L16 if mono => {
            // jpeg-decoder gives native-endian 16-bit samples.
            #[cfg(target_endian = "big")]
            for pair in samples.chunks_exact_mut(2) {
                pair.swap(0, 1);
            }
            Layout {
                bits_allocated: 16,
                high_bit: layout.bits_stored - 1,
                ..*layout
            }
        }
        jpeg_decoder::PixelFormat::RGB24
            if !mono && samples.len() as u64 == layout.pixels() * 3 =>
        {
            Layout {
                planar: 0,
                ..*layout
            }
        }
        other => {
            return Err(unsupported(format!(
                "JPEG Lossless frame of {other:?} for {:?} is not supported",
                layout.photometric
            )))
        }
    };
    render(&frame_layout, found, syntax, &samples)
}
