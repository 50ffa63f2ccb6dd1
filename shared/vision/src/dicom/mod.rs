//! DICOM Part 10 decoding to 8-bit grayscale (bright = dense tissue, as an
//! X-ray is normally displayed).
//!
//! # What is supported
//!
//! * Files with the 128-byte preamble and `DICM` (PS3.10 7.1); the file
//!   meta group is read for the transfer syntax.
//! * Transfer syntaxes: Implicit VR Little Endian (`1.2.840.10008.1.2`),
//!   Explicit VR Little Endian (`1.2.840.10008.1.2.1`), RLE Lossless
//!   (`1.2.840.10008.1.2.5`, decoded here, PS3.5 Annex G), 8-bit JPEG
//!   Baseline / Extended (`1.2.840.10008.1.2.4.50` and `.51`, decoded with
//!   the same JPEG decoder as plain JPEG files; a frame whose Photometric
//!   Interpretation is RGB is decoded without the YCbCr transform, as
//!   PS3.5 8.2.1 says it was coded), JPEG Lossless, process 14, 2 to 16
//!   bits (`1.2.840.10008.1.2.4.57` and `.70`, with `jpeg-decoder`),
//!   JPEG-LS lossless and near-lossless (`.4.80`, `.4.81`, with CharLS) and
//!   JPEG 2000 lossless only and lossy (`.4.90`, `.4.91`, with OpenJPEG; a
//!   bare codestream or one wrapped in JP2; the codestream's precision and
//!   signedness win over Bits Stored and Pixel Representation, as in
//!   pydicom). Any other transfer syntax (12-bit lossy JPEG, HTJ2K, JPEG
//!   XL, Deflated, Big Endian, video, ...) is
//!   [`VisionError::UnsupportedFormat`] naming its UID and name.
//! * MONOCHROME2, and MONOCHROME1 (inverted after the VOI step, so the
//!   output looks like MONOCHROME2).
//! * Bits Allocated 8 or 16, any Bits Stored up to that with its High Bit,
//!   Pixel Representation 0 (unsigned) or 1 (two's complement).
//! * Modality LUT as Rescale Slope / Intercept (`v = stored * slope +
//!   intercept`; slope 1 and intercept 0 when absent). A Modality LUT
//!   Sequence is not applied.
//! * VOI, in this order of preference:
//!   1. the first item of a VOI LUT Sequence (as pydicom's
//!      `apply_voi_lut(prefer_lut=True)`): index `floor(v) - first mapped`,
//!      clamped to the table, output `entry / (2^bits - 1) * 255`;
//!   2. the first Window Center / Window Width pair with VOI LUT Function
//!      `LINEAR` (the default; PS3.3 C.11.2.1.2.1), `LINEAR_EXACT`
//!      (C.11.2.1.3.2) or `SIGMOID` (C.11.2.1.3.1), to 0..255; a window
//!      narrower than the function allows (LINEAR: width < 1, others:
//!      width <= 0) is ignored;
//!   3. otherwise min–max: the frame's smallest rescaled value becomes 0
//!      and its largest 255 (a flat frame is all 0).
//!
//!   Every mapping rounds half up (`floor(y + 0.5)`).
//! * Multi-frame: the first frame is decoded (the Pixel Data must still
//!   hold all the frames it declares, for native transfer syntaxes).
//! * Colour (RGB, YBR_FULL, YBR_FULL_422, 8-bit; and the colour JPEG and
//!   JPEG 2000 photometric interpretations) becomes luma with the same
//!   formula as PNG/JPEG colour (Pillow's `convert("L")`; the Y plane for
//!   native YBR_FULL and YBR_FULL_422). No VOI is applied to colour.
//!   PALETTE COLOR and other interpretations, and native YBR_ICT, YBR_RCT
//!   and YBR_PARTIAL_420 (which exist only inside compressed streams), are
//!   `UnsupportedFormat`.
//! * Not read: per-frame functional groups (enhanced multi-frame windows
//!   and rescale), Presentation LUT Shape, Pixel Padding Value, overlays,
//!   float pixel data.
//!
//! # Safety against hostile input
//!
//! The file is parsed here, not with dicom-rs (`dicom-object` 0.10 sizes
//! and zero-fills a value buffer from the declared element length before
//! reading it: a 255-byte file declaring a 4 GiB element made it touch
//! 4.2 GB; and the RLE decoder of `dicom-transfer-syntax-registry` 0.10
//! slices fragments unchecked and panics on a 2-byte one). The header walk
//! here checks every declared length against the bytes that remain before
//! taking it, nests sequences at most [`MAX_DEPTH`] deep, keeps only the
//! few attributes it needs (the first of a repeated one), and reads the
//! pixel data from the input slice without copying; so memory stays
//! bounded by the input plus the decoded frame. Rows × Columns is checked
//! against [`DecodeLimits::max_pixels`] before any pixel buffer exists,
//! and a JPEG, JPEG-LS or JPEG 2000 frame must declare exactly Rows ×
//! Columns (and the sample count) in its header before it is decoded. Truncation and inconsistent lengths are `Corrupt` with a
//! message naming what is wrong. Unusual but harmless deviations are
//! tolerated: a missing Photometric Interpretation (MONOCHROME2 or RGB by
//! the sample count), odd lengths, trailing padding bytes in an RLE
//! segment, a VOI LUT Function other than the three known (LINEAR).
//!
//! # Layout
//!
//! `parse` walks the header; `values` reads attribute values and the
//! pixel layout they declare; `rle`, `jpeg`, `jpegls` and `jpeg2000`
//! decode encapsulated frames; `render` applies rescale and VOI and makes
//! the 8-bit image. [`dicom_header`] exposes the walk to the dataset crate,
//! which checks images at ingest with it.

mod jpeg;
mod jpeg2000;
mod jpegls;
mod parse;
mod render;
mod rle;
mod syntax;
mod values;

use crate::decode::check_pixels;
use crate::{DecodeLimits, GrayImage8, VisionError};

use jpeg::{decode_jpeg_frame, decode_jpeg_lossless_frame};
use jpeg2000::decode_jpeg2000_frame;
use jpegls::decode_jpegls_frame;
use parse::{parse, Fragments, PixelData};
use render::render;
use rle::decode_rle;
use syntax::Syntax;
use values::{native_frame, required_u16, text, Layout, Photometric};

const FORMAT: &str = "DICOM";
const PREAMBLE_LEN: usize = 128;
const MAGIC: &[u8; 4] = b"DICM";
/// Deepest nesting of sequences accepted in the header.
const MAX_DEPTH: u32 = 16;

// Tags, as (group << 16) | element.
const TRANSFER_SYNTAX_UID: u32 = 0x0002_0010;
const MODALITY: u32 = 0x0008_0060;
const BODY_PART_EXAMINED: u32 = 0x0018_0015;
const VIEW_POSITION: u32 = 0x0018_5101;
const SAMPLES_PER_PIXEL: u32 = 0x0028_0002;
const PHOTOMETRIC_INTERPRETATION: u32 = 0x0028_0004;
const PLANAR_CONFIGURATION: u32 = 0x0028_0006;
const NUMBER_OF_FRAMES: u32 = 0x0028_0008;
const ROWS: u32 = 0x0028_0010;
const COLUMNS: u32 = 0x0028_0011;
const BITS_ALLOCATED: u32 = 0x0028_0100;
const BITS_STORED: u32 = 0x0028_0101;
const HIGH_BIT: u32 = 0x0028_0102;
const PIXEL_REPRESENTATION: u32 = 0x0028_0103;
const WINDOW_CENTER: u32 = 0x0028_1050;
const WINDOW_WIDTH: u32 = 0x0028_1051;
const RESCALE_INTERCEPT: u32 = 0x0028_1052;
const RESCALE_SLOPE: u32 = 0x0028_1053;
const VOI_LUT_FUNCTION: u32 = 0x0028_1056;
const LUT_DESCRIPTOR: u32 = 0x0028_3002;
const LUT_DATA: u32 = 0x0028_3006;
const VOI_LUT_SEQUENCE: u32 = 0x0028_3010;
const FLOAT_PIXEL_DATA: u32 = 0x7FE0_0008;
const DOUBLE_FLOAT_PIXEL_DATA: u32 = 0x7FE0_0009;
const PIXEL_DATA: u32 = 0x7FE0_0010;
const ITEM: u32 = 0xFFFE_E000;
const ITEM_DELIMITATION: u32 = 0xFFFE_E00D;
const SEQUENCE_DELIMITATION: u32 = 0xFFFE_E0DD;

/// Top-level attributes kept by the header walk.
const IMAGE_ATTRIBUTES: &[u32] = &[
    MODALITY,
    BODY_PART_EXAMINED,
    VIEW_POSITION,
    SAMPLES_PER_PIXEL,
    PHOTOMETRIC_INTERPRETATION,
    PLANAR_CONFIGURATION,
    NUMBER_OF_FRAMES,
    ROWS,
    COLUMNS,
    BITS_ALLOCATED,
    BITS_STORED,
    HIGH_BIT,
    PIXEL_REPRESENTATION,
    WINDOW_CENTER,
    WINDOW_WIDTH,
    RESCALE_INTERCEPT,
    RESCALE_SLOPE,
    VOI_LUT_FUNCTION,
    VOI_LUT_SEQUENCE,
];
/// Attributes kept from the first VOI LUT Sequence item.
const VOI_LUT_ATTRIBUTES: &[u32] = &[LUT_DESCRIPTOR, LUT_DATA];

/// Transfer syntaxes this module decodes.
const SUPPORTED_SYNTAXES: &str = "Implicit VR Little Endian, Explicit VR Little Endian, \
     RLE Lossless, JPEG Baseline (Process 1), 8-bit JPEG Extended (Process 2 & 4), \
     JPEG Lossless (Process 14), JPEG-LS (lossless and near-lossless), \
     JPEG 2000 (lossless only and lossy)";

/// `DICM` at byte 128 (or the start of it, when the input ends there, so
/// a cut-off file is reported as a corrupt DICOM rather than unknown).
pub fn has_dicom_magic(bytes: &[u8]) -> bool {
    match bytes.get(PREAMBLE_LEN..) {
        Some(rest) if !rest.is_empty() => {
            let n = rest.len().min(MAGIC.len());
            rest.get(..n) == MAGIC.get(..n)
        }
        _ => false,
    }
}

/// What a DICOM Part 10 file's header declares about its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DicomHeader {
    /// Transfer Syntax UID (0002,0010), e.g. `1.2.840.10008.1.2.4.90`.
    pub transfer_syntax_uid: String,
    /// Columns (0028,0011).
    pub width: u32,
    /// Rows (0028,0010).
    pub height: u32,
}

/// Reads a DICOM Part 10 file's header with the decoder's own walk (the
/// same checks, the same transfer syntaxes) up to and over its Pixel Data,
/// without decoding any pixel: a file this accepts has a transfer syntax
/// the decoder supports, Rows and Columns, and Pixel Data present in full.
/// No size limit is applied here.
pub fn dicom_header(bytes: &[u8]) -> Result<DicomHeader, VisionError> {
    if !has_dicom_magic(bytes) {
        return Err(VisionError::UnsupportedFormat {
            detail: "not a DICOM Part 10 file (no DICM at byte 128)".to_owned(),
        });
    }
    let parsed = parse(bytes)?;
    if parsed.found.pixel.is_none() {
        return Err(corrupt(
            "no Pixel Data (7FE0,0010) element: truncated, or not an image",
        ));
    }
    let rows = required_u16(&parsed.found, ROWS)?;
    let columns = required_u16(&parsed.found, COLUMNS)?;
    if rows == 0 || columns == 0 {
        return Err(corrupt(format!(
            "zero-sized image: Rows {rows}, Columns {columns}"
        )));
    }
    Ok(DicomHeader {
        transfer_syntax_uid: parsed.uid,
        width: u32::from(columns),
        height: u32::from(rows),
    })
}

/// Decodes a DICOM Part 10 file (see the module documentation). The
/// caller has checked the byte limit.
pub(crate) fn decode_dicom(bytes: &[u8], limits: &DecodeLimits) -> Result<GrayImage8, VisionError> {
    let parsed = parse(bytes)?;
    let found = &parsed.found;

    // Size first: nothing below allocates before this check.
    let rows = required_u16(found, ROWS)?;
    let cols = required_u16(found, COLUMNS)?;
    if rows == 0 || cols == 0 {
        return Err(corrupt(format!(
            "zero-sized image: Rows {rows}, Columns {cols}"
        )));
    }
    let (width, height) = (u32::from(cols), u32::from(rows));
    check_pixels(width, height, limits)?;

    let layout = Layout::read(found, width, height)?;
    let pixel = found
        .pixel
        .as_ref()
        .ok_or_else(|| corrupt("no Pixel Data (7FE0,0010) element: truncated, or not an image"))?;

    match (parsed.syntax, pixel) {
        (Syntax::ImplicitLittle | Syntax::ExplicitLittle, PixelData::Native(data)) => {
            decode_native(&layout, found, parsed.syntax, data)
        }
        (Syntax::Rle, PixelData::Encapsulated(items)) => {
            let fragment = Fragments::new(items).nth(1).ok_or_else(|| {
                corrupt("RLE Pixel Data holds no fragment after the offset table")
            })?;
            let frame = decode_rle(&layout, fragment)?;
            // Decoded pixel-interleaved, whatever Planar Configuration says.
            let layout = Layout {
                planar: 0,
                ..layout
            };
            render(&layout, found, parsed.syntax, &frame)
        }
        (Syntax::Jpeg8, PixelData::Encapsulated(items)) => {
            decode_jpeg_frame(&layout, found, parsed.syntax, items, limits)
        }
        (Syntax::JpegLossless, PixelData::Encapsulated(items)) => {
            decode_jpeg_lossless_frame(&layout, found, parsed.syntax, items)
        }
        (Syntax::JpegLs, PixelData::Encapsulated(items)) => {
            decode_jpegls_frame(&layout, found, parsed.syntax, items)
        }
        (Syntax::Jpeg2000, PixelData::Encapsulated(items)) => {
            decode_jpeg2000_frame(&layout, found, parsed.syntax, items)
        }
        (_, PixelData::Native(_)) => Err(corrupt(format!(
            "transfer syntax {} needs encapsulated Pixel Data, but it has a defined length",
            parsed.uid
        ))),
        (_, PixelData::Encapsulated(_)) => Err(corrupt(format!(
            "Pixel Data is encapsulated, but transfer syntax {} is a native one",
            parsed.uid
        ))),
    }
}

/// Native (uncompressed) pixel data. YBR_FULL_422 holds two luma samples
/// and one Cb, Cr pair per two pixels (PS3.3 C.7.6.3.1.2), so its luma
/// plane is the grayscale image; the other YBR interpretations exist only
/// inside compressed streams.
fn decode_native(
    layout: &Layout,
    found: &parse::Found<'_>,
    syntax: Syntax,
    data: &[u8],
) -> Result<GrayImage8, VisionError> {
    match layout.photometric {
        Photometric::YbrFull422 => {
            if layout.planar != 0 {
                return Err(corrupt(
                    "YBR_FULL_422 pixel data with Planar Configuration 1 (the standard requires 0)",
                ));
            }
            if !layout.width.is_multiple_of(2) {
                return Err(corrupt(format!(
                    "YBR_FULL_422 pixel data with an odd number of Columns ({})",
                    layout.width
                )));
            }
            let frame = native_frame(
                &Layout {
                    samples: 2,
                    ..*layout
                },
                data,
            )?;
            // Y1 Y2 Cb Cr per pair of pixels: keep Y1 and Y2.
            let luma: Vec<u8> = frame
                .chunks_exact(4)
                .flat_map(|group| [group[0], group[1]])
                .collect();
            GrayImage8::new(layout.width, layout.height, luma)
        }
        Photometric::YbrOther => Err(unsupported(
            "native pixel data in YBR_ICT, YBR_RCT or YBR_PARTIAL_420 is not supported \
             (those exist only in JPEG 2000 and MPEG streams)",
        )),
        _ => {
            let frame = native_frame(layout, data)?;
            render(layout, found, syntax, frame)
        }
    }
}

fn corrupt(detail: impl Into<String>) -> VisionError {
    VisionError::Corrupt {
        format: FORMAT,
        detail: detail.into(),
    }
}

fn unsupported(detail: impl std::fmt::Display) -> VisionError {
    VisionError::UnsupportedFormat {
        detail: format!("DICOM {detail}"),
    }
}

fn fmt_tag(tag: u32) -> String {
    format!("({:04X},{:04X})", tag >> 16, tag & 0xFFFF)
}

/// "Rows (0028,0010)" for the attributes read here, the bare tag otherwise.
fn describe(tag: u32) -> String {
    let name = match tag {
        TRANSFER_SYNTAX_UID => "Transfer Syntax UID",
        MODALITY => "Modality",
        BODY_PART_EXAMINED => "Body Part Examined",
        VIEW_POSITION => "View Position",
        SAMPLES_PER_PIXEL => "Samples per Pixel",
        PHOTOMETRIC_INTERPRETATION => "Photometric Interpretation",
        PLANAR_CONFIGURATION => "Planar Configuration",
        NUMBER_OF_FRAMES => "Number of Frames",
        ROWS => "Rows",
        COLUMNS => "Columns",
        BITS_ALLOCATED => "Bits Allocated",
        BITS_STORED => "Bits Stored",
        HIGH_BIT => "High Bit",
        PIXEL_REPRESENTATION => "Pixel Representation",
        WINDOW_CENTER => "Window Center",
        WINDOW_WIDTH => "Window Width",
        RESCALE_INTERCEPT => "Rescale Intercept",
        RESCALE_SLOPE => "Rescale Slope",
        VOI_LUT_FUNCTION => "VOI LUT Function",
        LUT_DESCRIPTOR => "LUT Descriptor",
        LUT_DATA => "LUT Data",
        VOI_LUT_SEQUENCE => "VOI LUT Sequence",
        PIXEL_DATA => "Pixel Data",
        _ => return format!("element {}", fmt_tag(tag)),
    };
    format!("{name} {}", fmt_tag(tag))
}

/// What a DICOM file says about the acquisition, for checking that it is
/// a frontal chest radiograph. Patient attributes are never read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DicomView {
    /// Modality (0008,0060), e.g. `CR`, `DX`.
    pub modality: Option<String>,
    /// Body Part Examined (0018,0015), e.g. `CHEST`.
    pub body_part: Option<String>,
    /// View Position (0018,5101), e.g. `PA`, `AP`, `LL`.
    pub view_position: Option<String>,
}

/// The acquisition attributes of a DICOM Part 10 file; `None` when
/// `bytes` is not one or its header does not parse (decoding then
/// reports why).
pub fn dicom_view(bytes: &[u8]) -> Option<DicomView> {
    if !has_dicom_magic(bytes) || bytes.starts_with(b"\x89PNG") || bytes.starts_with(&[0xFF, 0xD8])
    {
        return None;
    }
    let parsed = parse(bytes).ok()?;
    let value = |tag: u32| {
        parsed
            .found
            .get(tag)
            .and_then(|(_, v)| text(tag, v).ok())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    Some(DicomView {
        modality: value(MODALITY),
        body_part: value(BODY_PART_EXAMINED),
        view_position: value(VIEW_POSITION),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_and_its_prefixes() {
        let mut bytes = vec![0u8; 128];
        assert!(!has_dicom_magic(&bytes));
        bytes.extend_from_slice(b"DI");
        assert!(has_dicom_magic(&bytes));
        bytes.extend_from_slice(b"CM");
        assert!(has_dicom_magic(&bytes));
        bytes[129] = b'X';
        assert!(!has_dicom_magic(&bytes));
    }
}
