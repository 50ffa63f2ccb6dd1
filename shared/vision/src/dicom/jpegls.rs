//! JPEG-LS (PS3.5 A.4.3: `1.2.840.10008.1.2.4.80` lossless and `.81`
//! near-lossless), decoded with CharLS (`charls-sys`, built from its
//! vendored C++ sources).
//!
//! The frame header (SOF55) is read here first and must declare Rows ×
//! Columns and the DICOM sample count before CharLS sees the stream; CharLS
//! then checks its own header and the output buffer's size again.

use std::ffi::{c_void, CStr};
use std::ptr::NonNull;

use charls_sys as charls;

use super::jpeg::{find_marker, jpeg_frame_header, JpegFrameHeader};
use super::parse::{first_frame, Found};
use super::render::render;
use super::syntax::Syntax;
use super::values::{to_usize, Layout};
use super::{corrupt, unsupported};
use crate::{GrayImage8, VisionError};

/// JPEG-LS start of frame (ITU-T T.87 C.2.2).
const SOF55: u8 = 0xF7;

pub(super) fn decode_jpegls_frame(
    layout: &Layout,
    found: &Found<'_>,
    syntax: Syntax,
    items: &[u8],
) -> Result<GrayImage8, VisionError> {
    let stream = first_frame(items);
    if !stream.starts_with(&[0xFF, 0xD8]) {
        return Err(corrupt(
            "the first Pixel Data fragment is not a JPEG-LS stream (no start-of-image marker)",
        ));
    }
    let header = jpeg_frame_header(&stream).ok_or_else(|| {
        corrupt("JPEG-LS frame: no frame header (start-of-frame marker) before the first scan")
    })?;
    check_header(&header, layout)?;
    let bytes_per_sample: u64 = if header.precision > 8 { 2 } else { 1 };
    if bytes_per_sample * 8 > u64::from(layout.bits_allocated) {
        return Err(corrupt(format!(
            "JPEG-LS samples of {} bits do not fit Bits Allocated {}",
            header.precision, layout.bits_allocated
        )));
    }
    let expected = layout.pixels() * u64::from(layout.samples) * bytes_per_sample;
    let decoded = Decoder::new()?.decode(&stream, to_usize(expected)?)?;

    // CharLS gives the samples as coded: one byte each up to 8 bits, else
    // native-endian 16-bit words; several components by pixel, except when
    // each was coded in its own scan (interleave mode none: by plane).
    let mut frame_layout = Layout {
        bits_allocated: if bytes_per_sample == 2 { 16 } else { 8 },
        bits_stored: u16::from(header.precision).min(layout.bits_stored),
        planar: u16::from(layout.samples > 1 && first_scan_components(&stream) == Some(1)),
        ..*layout
    };
    frame_layout.high_bit = frame_layout.bits_stored - 1;
    #[allow(unused_mut)] // mutated on big-endian targets only
    let mut frame = decoded;
    #[cfg(target_endian = "big")]
    if bytes_per_sample == 2 {
        for pair in frame.chunks_exact_mut(2) {
            pair.swap(0, 1);
        }
    }
    render(&frame_layout, found, syntax, &frame)
}

fn check_header(header: &JpegFrameHeader, layout: &Layout) -> Result<(), VisionError> {
    if header.marker != SOF55 {
        return Err(corrupt(format!(
            "JPEG-LS frame: start-of-frame marker FF{:02X} is not JPEG-LS's FFF7",
            header.marker
        )));
    }
    if !(2..=16).contains(&header.precision) {
        return Err(corrupt(format!(
            "JPEG-LS frame declares {}-bit samples (2 to 16)",
            header.precision
        )));
    }
    if (header.width, header.height) != (layout.width, layout.height) {
        return Err(corrupt(format!(
            "JPEG-LS frame header declares {}x{}, but Rows × Columns is {}x{}",
            header.width, header.height, layout.width, layout.height
        )));
    }
    if u16::from(header.components) != layout.samples {
        return Err(corrupt(format!(
            "JPEG-LS frame has {} component(s), but Samples per Pixel is {}",
            header.components, layout.samples
        )));
    }
    Ok(())
}

/// How many components the first scan codes (`Ns` of the first SOS).
fn first_scan_components(jpeg: &[u8]) -> Option<u8> {
    let (_, at) = find_marker(jpeg, |m| m == 0xDA)?;
    jpeg.get(at + 4).copied()
}

/// A CharLS decoder, destroyed on drop.
struct Decoder(NonNull<charls::charls_jpegls_decoder>);

impl Decoder {
    fn new() -> Result<Self, VisionError> {
        // SAFETY: a plain constructor; null is checked.
        NonNull::new(unsafe { charls::charls_jpegls_decoder_create() })
            .map(Self)
            .ok_or_else(|| corrupt("JPEG-LS: CharLS could not create a decoder"))
    }

    /// Decodes `stream`, which must decode to exactly `expected` bytes.
    fn decode(&self, stream: &[u8], expected: usize) -> Result<Vec<u8>, VisionError> {
        let d = self.0.as_ptr();
        // SAFETY: `stream` outlives every call below, which only read it.
        check(unsafe {
            charls::charls_jpegls_decoder_set_source_buffer(
                d,
                stream.as_ptr().cast::<c_void>(),
                stream.len(),
            )
        })?;
        check(unsafe { charls::charls_jpegls_decoder_read_header(d) })?;
        let mut size = 0usize;
        check(unsafe { charls::charls_jpegls_decoder_get_destination_size(d, 0, &mut size) })?;
        if size != expected {
            return Err(corrupt(format!(
                "JPEG-LS frame decodes to {size} bytes; the DICOM header describes {expected}"
            )));
        }
        let mut out = vec![0u8; size];
        // SAFETY: `out` has room for exactly `size` bytes.
        check(unsafe {
            charls::charls_jpegls_decoder_decode_to_buffer(
                d,
                out.as_mut_ptr().cast::<c_void>(),
                size,
                0,
            )
        })?;
        Ok(out)
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        unsafe { charls::charls_jpegls_decoder_destroy(self.0.as_ptr()) };
    }
}

/// CharLS's error code as an error that says what it means.
fn check(code: charls::charls_jpegls_errc) -> Result<(), VisionError> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: CharLS returns a static NUL-terminated message for any code.
    let message = unsafe {
        let text = charls::charls_get_error_message(code);
        if text.is_null() {
            String::from("unknown error")
        } else {
            CStr::from_ptr(text).to_string_lossy().into_owned()
        }
    };
    // Valid JPEG-LS that CharLS does not implement is unsupported; every
    // other code means malformed data.
    let not_implemented = [
        charls::charls_jpegls_errc_parameter_value_not_supported,
        charls::charls_jpegls_errc_bit_depth_for_transform_not_supported,
        charls::charls_jpegls_errc_color_transform_not_supported,
        charls::charls_jpegls_errc_encoding_not_supported,
        charls::charls_jpegls_errc_jpegls_preset_extended_parameter_type_not_supported,
    ];
    let detail = format!("JPEG-LS frame: {message} (CharLS error {code})");
    if not_implemented.contains(&code) {
        Err(unsupported(detail))
    } else {
        Err(corrupt(detail))
    }
}
