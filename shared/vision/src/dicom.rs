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
//!   the same JPEG decoder as plain JPEG files) and JPEG Lossless, process
//!   14, 2 to 16 bits (`1.2.840.10008.1.2.4.57` and `.70`, with
//!   `jpeg-decoder`). Any other transfer syntax (12-bit lossy JPEG,
//!   JPEG-LS, JPEG 2000, HTJ2K, JPEG XL, Deflated, Big Endian, video, ...)
//!   is [`VisionError::UnsupportedFormat`] naming its UID and name.
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
//! * Colour (RGB, YBR_FULL, 8-bit; and the colour JPEG photometric
//!   interpretations) becomes luma with the same formula as PNG/JPEG
//!   colour (Pillow's `convert("L")`; the Y plane for YBR_FULL). No VOI is
//!   applied to colour. PALETTE COLOR and other interpretations are
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
//! and a JPEG frame must declare exactly Rows × Columns before it is
//! decoded. Truncation and inconsistent lengths are `Corrupt` with a
//! message naming what is wrong. Unusual but harmless deviations are
//! tolerated: a missing Photometric Interpretation (MONOCHROME2 or RGB by
//! the sample count), odd lengths, trailing padding bytes in an RLE
//! segment, a VOI LUT Function other than the three known (LINEAR).

use image::{DynamicImage, ImageFormat};

use crate::decode::{check_pixels, decode_dynamic, jpeg_has_eoi_after_last_sos, luma, to_gray8};
use crate::{DecodeLimits, GrayImage8, VisionError};

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
     JPEG Lossless (Process 14)";

/// `DICM` at byte 128 (or the start of it, when the input ends there, so
/// a cut-off file is reported as a corrupt DICOM rather than unknown).
pub(crate) fn has_dicom_magic(bytes: &[u8]) -> bool {
    match bytes.get(PREAMBLE_LEN..) {
        Some(rest) if !rest.is_empty() => {
            let n = rest.len().min(MAGIC.len());
            rest.get(..n) == MAGIC.get(..n)
        }
        _ => false,
    }
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
            let frame = native_frame(&layout, data)?;
            render(&layout, found, parsed.syntax, frame)
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

// ---------------------------------------------------------------------------
// Transfer syntaxes

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    ImplicitLittle,
    ExplicitLittle,
    Rle,
    /// JPEG Baseline and Extended, 8-bit samples.
    Jpeg8,
    /// JPEG Lossless, Non-Hierarchical (Process 14), any predictor.
    JpegLossless,
}

impl Syntax {
    fn for_uid(uid: &str) -> Result<Self, VisionError> {
        match uid {
            "1.2.840.10008.1.2" => Ok(Self::ImplicitLittle),
            "1.2.840.10008.1.2.1" => Ok(Self::ExplicitLittle),
            "1.2.840.10008.1.2.5" => Ok(Self::Rle),
            "1.2.840.10008.1.2.4.50" | "1.2.840.10008.1.2.4.51" => Ok(Self::Jpeg8),
            "1.2.840.10008.1.2.4.57" | "1.2.840.10008.1.2.4.70" => Ok(Self::JpegLossless),
            other => Err(unsupported(format!(
                "transfer syntax {other} ({}) is not supported (supported: {SUPPORTED_SYNTAXES})",
                transfer_syntax_name(other)
            ))),
        }
    }

    fn explicit_vr(self) -> bool {
        self != Self::ImplicitLittle
    }
}

/// The name PS3.6 Table A-1 gives a transfer syntax UID.
pub(crate) fn transfer_syntax_name(uid: &str) -> &'static str {
    match uid {
        "1.2.840.10008.1.2" => "Implicit VR Little Endian",
        "1.2.840.10008.1.2.1" => "Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.98" => "Encapsulated Uncompressed Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.99" => "Deflated Explicit VR Little Endian",
        "1.2.840.10008.1.2.2" => "Explicit VR Big Endian (retired)",
        "1.2.840.10008.1.2.4.50" => "JPEG Baseline (Process 1)",
        "1.2.840.10008.1.2.4.51" => "JPEG Extended (Process 2 & 4)",
        "1.2.840.10008.1.2.4.57" => "JPEG Lossless, Non-Hierarchical (Process 14)",
        "1.2.840.10008.1.2.4.70" => {
            "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])"
        }
        "1.2.840.10008.1.2.4.80" => "JPEG-LS Lossless Image Compression",
        "1.2.840.10008.1.2.4.81" => "JPEG-LS Lossy (Near-Lossless) Image Compression",
        "1.2.840.10008.1.2.4.90" => "JPEG 2000 Image Compression (Lossless Only)",
        "1.2.840.10008.1.2.4.91" => "JPEG 2000 Image Compression",
        "1.2.840.10008.1.2.4.92" => {
            "JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only)"
        }
        "1.2.840.10008.1.2.4.93" => "JPEG 2000 Part 2 Multi-component Image Compression",
        "1.2.840.10008.1.2.4.94" => "JPIP Referenced",
        "1.2.840.10008.1.2.4.95" => "JPIP Referenced Deflate",
        "1.2.840.10008.1.2.4.100" | "1.2.840.10008.1.2.4.100.1" => {
            "MPEG2 Main Profile / Main Level"
        }
        "1.2.840.10008.1.2.4.101" | "1.2.840.10008.1.2.4.101.1" => {
            "MPEG2 Main Profile / High Level"
        }
        "1.2.840.10008.1.2.4.102" | "1.2.840.10008.1.2.4.102.1" => {
            "MPEG-4 AVC/H.264 High Profile / Level 4.1"
        }
        "1.2.840.10008.1.2.4.103" | "1.2.840.10008.1.2.4.103.1" => {
            "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1"
        }
        "1.2.840.10008.1.2.4.104" | "1.2.840.10008.1.2.4.104.1" => {
            "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video"
        }
        "1.2.840.10008.1.2.4.105" | "1.2.840.10008.1.2.4.105.1" => {
            "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video"
        }
        "1.2.840.10008.1.2.4.106" | "1.2.840.10008.1.2.4.106.1" => {
            "MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2"
        }
        "1.2.840.10008.1.2.4.107" => "HEVC/H.265 Main Profile / Level 5.1",
        "1.2.840.10008.1.2.4.108" => "HEVC/H.265 Main 10 Profile / Level 5.1",
        "1.2.840.10008.1.2.4.110" => "JPEG XL Lossless",
        "1.2.840.10008.1.2.4.111" => "JPEG XL JPEG Recompression",
        "1.2.840.10008.1.2.4.112" => "JPEG XL",
        "1.2.840.10008.1.2.4.201" => "High-Throughput JPEG 2000 Image Compression (Lossless Only)",
        "1.2.840.10008.1.2.4.202" => {
            "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)"
        }
        "1.2.840.10008.1.2.4.203" => "High-Throughput JPEG 2000 Image Compression",
        "1.2.840.10008.1.2.5" => "RLE Lossless",
        "1.2.840.10008.1.2.6.1" => "RFC 2557 MIME encapsulation (retired)",
        "1.2.840.10008.1.2.6.2" => "XML Encoding (retired)",
        "1.2.840.10008.1.2.7.1" => "SMPTE ST 2110-20 Uncompressed Progressive Active Video",
        "1.2.840.10008.1.2.7.2" => "SMPTE ST 2110-20 Uncompressed Interlaced Active Video",
        "1.2.840.10008.1.2.7.3" => "SMPTE ST 2110-30 PCM Digital Audio",
        "1.2.840.10008.1.2.8.1" => "Deflated Image Frame Compression",
        _ => "unknown transfer syntax",
    }
}

// ---------------------------------------------------------------------------
// Header walk

/// Reads little-endian values from `buf`; `base` is `buf`'s offset in the
/// file, for messages.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    fn offset(&self) -> usize {
        self.base.saturating_add(self.pos)
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let slice = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn peek_u16(&self) -> Option<u16> {
        let end = self.pos.checked_add(2)?;
        Some(u16::from_le_bytes(
            self.buf.get(self.pos..end)?.try_into().ok()?,
        ))
    }

    /// A cursor over `self.buf[start..end]`.
    fn sub(&self, start: usize, end: usize) -> Option<Cursor<'a>> {
        Some(Cursor::new(
            self.buf.get(start..end)?,
            self.base.saturating_add(start),
        ))
    }
}

struct ElementHeader {
    tag: u32,
    /// `None` in implicit VR and for items and delimiters.
    vr: Option<[u8; 2]>,
    /// `None` when undefined (0xFFFFFFFF).
    len: Option<u32>,
    /// Offset of the header in the file.
    at: usize,
}

/// VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
fn has_long_length(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    )
}

fn read_header(c: &mut Cursor<'_>, explicit: bool) -> Result<ElementHeader, VisionError> {
    let at = c.offset();
    let truncated = || {
        corrupt(format!(
            "truncated: the file ends inside the element header at byte {at}"
        ))
    };
    let group = c.u16().ok_or_else(truncated)?;
    let element = c.u16().ok_or_else(truncated)?;
    let tag = (u32::from(group) << 16) | u32::from(element);
    let (vr, len) = if group == 0xFFFE || !explicit {
        (None, c.u32().ok_or_else(truncated)?)
    } else {
        let vr: [u8; 2] = c
            .take(2)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(truncated)?;
        if !vr.iter().all(u8::is_ascii_uppercase) {
            return Err(corrupt(format!(
                "{} at byte {at} has no valid VR (bytes {:02X} {:02X})",
                describe(tag),
                vr[0],
                vr[1]
            )));
        }
        let len = if has_long_length(vr) {
            c.take(2).ok_or_else(truncated)?;
            c.u32().ok_or_else(truncated)?
        } else {
            u32::from(c.u16().ok_or_else(truncated)?)
        };
        (Some(vr), len)
    };
    Ok(ElementHeader {
        tag,
        vr,
        len: (len != u32::MAX).then_some(len),
        at,
    })
}

/// Where a walk over elements stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// The end of the cursor (a defined-length item).
    End,
    /// An item delimitation item (an undefined-length item).
    ItemDelimitation,
    /// The top-level Pixel Data element, or the end of the file.
    PixelData,
}

enum PixelData<'a> {
    /// Defined length: the samples themselves.
    Native(&'a [u8]),
    /// Undefined length: the items (basic offset table, then fragments),
    /// headers included, without the sequence delimitation item.
    Encapsulated(&'a [u8]),
}

/// A kept element: tag, VR (explicit VR only) and value.
type Kept<'a> = (u32, Option<[u8; 2]>, &'a [u8]);

/// What a walk kept.
#[derive(Default)]
struct Found<'a> {
    values: Vec<Kept<'a>>,
    /// Contents of the first VOI LUT Sequence item.
    voi_lut_item: Option<Cursor<'a>>,
    pixel: Option<PixelData<'a>>,
}

impl<'a> Found<'a> {
    fn get(&self, tag: u32) -> Option<(Option<[u8; 2]>, &'a [u8])> {
        self.values
            .iter()
            .find(|(t, _, _)| *t == tag)
            .map(|(_, vr, value)| (*vr, *value))
    }
}

/// Walks a data set's elements, checking each declared length against what
/// remains, and keeps the `wanted` ones in `found` (`None`: just skip).
fn walk<'a>(
    c: &mut Cursor<'a>,
    explicit: bool,
    depth: u32,
    until: Until,
    wanted: &[u32],
    mut found: Option<&mut Found<'a>>,
) -> Result<(), VisionError> {
    loop {
        if c.remaining() == 0 {
            return match until {
                Until::ItemDelimitation => Err(corrupt(format!(
                    "truncated: a sequence item of undefined length has no item delimitation \
                     (data ends at byte {})",
                    c.offset()
                ))),
                Until::End | Until::PixelData => Ok(()),
            };
        }
        let h = read_header(c, explicit)?;
        if h.tag == ITEM_DELIMITATION && until == Until::ItemDelimitation {
            return Ok(());
        }
        if h.tag >> 16 == 0xFFFE {
            return Err(corrupt(format!(
                "unexpected item or delimitation tag {} at byte {}",
                fmt_tag(h.tag),
                h.at
            )));
        }
        if until == Until::PixelData {
            match h.tag {
                PIXEL_DATA => {
                    let pixel = read_pixel_data(c, &h)?;
                    if let Some(found) = found {
                        found.pixel = Some(pixel);
                    }
                    return Ok(());
                }
                FLOAT_PIXEL_DATA | DOUBLE_FLOAT_PIXEL_DATA => {
                    return Err(unsupported(format!(
                        "float pixel data {} is not supported",
                        fmt_tag(h.tag)
                    )));
                }
                _ => {}
            }
        }
        let keep = wanted.contains(&h.tag);
        match h.len {
            Some(len) => {
                let start = c.pos;
                let value = c.take(len as usize).ok_or_else(|| {
                    corrupt(format!(
                        "{} at byte {} declares {len} bytes, but only {} remain: truncated or corrupt",
                        describe(h.tag),
                        h.at,
                        c.remaining()
                    ))
                })?;
                if let (true, Some(found)) = (keep, found.as_deref_mut()) {
                    let is_sequence = h.vr.is_none() || h.vr == Some(*b"SQ");
                    if h.tag == VOI_LUT_SEQUENCE && is_sequence {
                        if depth >= MAX_DEPTH {
                            return Err(too_deep(h.at));
                        }
                        let mut inner = c
                            .sub(start, c.pos)
                            .ok_or_else(|| corrupt("internal: sequence bounds"))?;
                        found.voi_lut_item = items(&mut inner, explicit, depth + 1, false)?;
                    } else if h.tag != VOI_LUT_SEQUENCE && found.get(h.tag).is_none() {
                        // Of a repeated attribute the first counts (and a
                        // file repeating one cannot grow this list).
                        found.values.push((h.tag, h.vr, value));
                    }
                }
            }
            None => {
                // Undefined length: a sequence. SQ in explicit VR; UN holds
                // implicit VR little-endian content (PS3.5 6.2.2); in
                // implicit VR any element.
                let inner_explicit = match h.vr {
                    None => false,
                    Some(vr) if &vr == b"SQ" => explicit,
                    Some(vr) if &vr == b"UN" => false,
                    Some(vr) => {
                        return Err(corrupt(format!(
                            "{} at byte {} has an undefined length with VR {}",
                            describe(h.tag),
                            h.at,
                            String::from_utf8_lossy(&vr)
                        )))
                    }
                };
                if depth >= MAX_DEPTH {
                    return Err(too_deep(h.at));
                }
                let first = items(c, inner_explicit, depth + 1, true)?;
                if let (true, Some(found)) =
                    (keep && h.tag == VOI_LUT_SEQUENCE, found.as_deref_mut())
                {
                    found.voi_lut_item = first;
                }
            }
        }
    }
}

fn too_deep(at: usize) -> VisionError {
    corrupt(format!(
        "sequences nested more than {MAX_DEPTH} deep at byte {at}"
    ))
}

/// Walks a sequence's items, to the cursor's end or (when `delimited`) to
/// the sequence delimitation item; returns the first item's contents.
fn items<'a>(
    c: &mut Cursor<'a>,
    explicit: bool,
    depth: u32,
    delimited: bool,
) -> Result<Option<Cursor<'a>>, VisionError> {
    let mut first = None;
    loop {
        if c.remaining() == 0 {
            if delimited {
                return Err(corrupt(format!(
                    "truncated: a sequence of undefined length has no sequence delimitation \
                     (data ends at byte {})",
                    c.offset()
                )));
            }
            return Ok(first);
        }
        let h = read_header(c, explicit)?;
        match h.tag {
            SEQUENCE_DELIMITATION if delimited => return Ok(first),
            ITEM => {
                let content = match h.len {
                    Some(len) => {
                        let start = c.pos;
                        c.take(len as usize).ok_or_else(|| {
                            corrupt(format!(
                                "sequence item at byte {} declares {len} bytes, but only {} remain",
                                h.at,
                                c.remaining()
                            ))
                        })?;
                        c.sub(start, c.pos)
                    }
                    None => {
                        let start = c.pos;
                        walk(c, explicit, depth, Until::ItemDelimitation, &[], None)?;
                        // Without the 8-byte item delimitation item.
                        c.sub(start, c.pos.saturating_sub(8).max(start))
                    }
                };
                if first.is_none() {
                    first = content;
                }
            }
            other => {
                return Err(corrupt(format!(
                    "expected a sequence item at byte {}, found {}",
                    h.at,
                    fmt_tag(other)
                )))
            }
        }
    }
}

fn read_pixel_data<'a>(
    c: &mut Cursor<'a>,
    h: &ElementHeader,
) -> Result<PixelData<'a>, VisionError> {
    if let Some(len) = h.len {
        return c.take(len as usize).map(PixelData::Native).ok_or_else(|| {
            corrupt(format!(
                "Pixel Data (7FE0,0010) declares {len} bytes, but only {} remain: truncated",
                c.remaining()
            ))
        });
    }
    // Encapsulated: items of defined length (basic offset table, then
    // fragments) up to the sequence delimitation item.
    let start = c.pos;
    loop {
        if c.remaining() == 0 {
            return Err(corrupt(
                "truncated: encapsulated Pixel Data has no sequence delimitation item",
            ));
        }
        let item_start = c.pos;
        let ih = read_header(c, false)?;
        match (ih.tag, ih.len) {
            (ITEM, Some(len)) => {
                c.take(len as usize).ok_or_else(|| {
                    corrupt(format!(
                        "Pixel Data fragment at byte {} declares {len} bytes, but only {} remain: \
                         truncated",
                        ih.at,
                        c.remaining()
                    ))
                })?;
            }
            (ITEM, None) => {
                return Err(corrupt(format!(
                    "Pixel Data fragment at byte {} has an undefined length",
                    ih.at
                )))
            }
            (SEQUENCE_DELIMITATION, _) => {
                let items = c
                    .buf
                    .get(start..item_start)
                    .ok_or_else(|| corrupt("internal: pixel data bounds"))?;
                return Ok(PixelData::Encapsulated(items));
            }
            (other, _) => {
                return Err(corrupt(format!(
                    "expected a Pixel Data item at byte {}, found {}",
                    ih.at,
                    fmt_tag(other)
                )))
            }
        }
    }
}

/// The items of encapsulated Pixel Data (already checked by
/// [`read_pixel_data`]): the basic offset table, then the fragments.
struct Fragments<'a> {
    rest: &'a [u8],
}

impl<'a> Fragments<'a> {
    fn new(items: &'a [u8]) -> Self {
        Self { rest: items }
    }
}

impl<'a> Iterator for Fragments<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.rest.get(4..8)?.try_into().ok()?) as usize;
        let end = len.checked_add(8)?;
        let fragment = self.rest.get(8..end)?;
        self.rest = self.rest.get(end..)?;
        Some(fragment)
    }
}

struct Parsed<'a> {
    syntax: Syntax,
    uid: String,
    found: Found<'a>,
}

fn parse(bytes: &[u8]) -> Result<Parsed<'_>, VisionError> {
    if bytes.get(PREAMBLE_LEN..PREAMBLE_LEN + MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err(corrupt("truncated: the file ends inside the DICM prefix"));
    }
    let mut c = Cursor::new(bytes, 0);
    c.pos = PREAMBLE_LEN + MAGIC.len();

    // File meta group: always explicit VR little endian, group 0002.
    let mut uid = None;
    while c.peek_u16() == Some(0x0002) {
        let h = read_header(&mut c, true)?;
        let len = h.len.ok_or_else(|| {
            corrupt(format!(
                "file meta element {} has an undefined length",
                fmt_tag(h.tag)
            ))
        })?;
        let value = c.take(len as usize).ok_or_else(|| {
            corrupt(format!(
                "file meta element {} declares {len} bytes, but only {} remain: truncated",
                fmt_tag(h.tag),
                c.remaining()
            ))
        })?;
        if h.tag == TRANSFER_SYNTAX_UID {
            uid = Some(value);
        }
    }
    let uid = uid.ok_or_else(|| {
        corrupt(
            "the file meta group has no Transfer Syntax UID (0002,0010): truncated or not Part 10",
        )
    })?;
    let uid = text(TRANSFER_SYNTAX_UID, uid)?.to_owned();
    let syntax = Syntax::for_uid(&uid)?;

    let mut found = Found::default();
    walk(
        &mut c,
        syntax.explicit_vr(),
        0,
        Until::PixelData,
        IMAGE_ATTRIBUTES,
        Some(&mut found),
    )?;
    Ok(Parsed { syntax, uid, found })
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

// ---------------------------------------------------------------------------
// Attribute values

/// A value as text, without padding (spaces, NULs).
fn text(tag: u32, value: &[u8]) -> Result<&str, VisionError> {
    std::str::from_utf8(value)
        .map(|s| s.trim_matches(|c: char| c == ' ' || c == '\0'))
        .map_err(|_| corrupt(format!("{} is not text", describe(tag))))
}

fn u16_value(found: &Found<'_>, tag: u32) -> Result<Option<u16>, VisionError> {
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

fn required_u16(found: &Found<'_>, tag: u32) -> Result<u16, VisionError> {
    u16_value(found, tag)?.ok_or_else(|| corrupt(format!("missing {}", describe(tag))))
}

/// The values of a DS (decimal string), in order; empty when absent.
fn decimals(found: &Found<'_>, tag: u32) -> Result<Vec<f64>, VisionError> {
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
fn integer(found: &Found<'_>, tag: u32) -> Result<Option<i64>, VisionError> {
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
fn code_string(found: &Found<'_>, tag: u32) -> Result<Option<String>, VisionError> {
    let Some((_, value)) = found.get(tag) else {
        return Ok(None);
    };
    let first = text(tag, value)?.split('\\').next().unwrap_or("").trim();
    Ok((!first.is_empty()).then(|| first.to_ascii_uppercase()))
}

// ---------------------------------------------------------------------------
// Image layout

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Photometric {
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
    fn is_monochrome(self) -> bool {
        matches!(self, Self::Monochrome1 | Self::Monochrome2)
    }
}

#[derive(Debug, Clone, Copy)]
struct Layout {
    width: u32,
    height: u32,
    samples: u16,
    planar: u16,
    photometric: Photometric,
    bits_allocated: u16,
    bits_stored: u16,
    high_bit: u16,
    signed: bool,
    frames: u64,
}

impl Layout {
    fn read(found: &Found<'_>, width: u32, height: u32) -> Result<Self, VisionError> {
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

    fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    fn bytes_per_sample(&self) -> u64 {
        u64::from(self.bits_allocated / 8)
    }

    /// Bytes of one native frame; fits easily in u64 (65535² × 3 × 2).
    fn frame_bytes(&self) -> u64 {
        self.pixels() * u64::from(self.samples) * self.bytes_per_sample()
    }
}

fn to_usize(n: u64) -> Result<usize, VisionError> {
    usize::try_from(n).map_err(|_| corrupt(format!("{n} bytes do not fit in memory")))
}

/// The first frame of native pixel data, after checking that the data holds
/// every frame the header declares.
fn native_frame<'a>(layout: &Layout, data: &'a [u8]) -> Result<&'a [u8], VisionError> {
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

// ---------------------------------------------------------------------------
// RLE Lossless (PS3.5 Annex G)

/// Decodes one RLE fragment (one frame) into native little-endian samples,
/// pixel-interleaved (planar configuration 0).
fn decode_rle(layout: &Layout, fragment: &[u8]) -> Result<Vec<u8>, VisionError> {
    let header = fragment.get(..64).ok_or_else(|| {
        corrupt(format!(
            "RLE fragment of {} bytes is shorter than its 64-byte header",
            fragment.len()
        ))
    })?;
    let word = |i: usize| -> u32 {
        header
            .get(i * 4..i * 4 + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    };
    let bytes_per_sample = layout.bits_allocated as usize / 8;
    let samples = usize::from(layout.samples);
    let segments = samples * bytes_per_sample;
    if word(0) as usize != segments {
        return Err(corrupt(format!(
            "RLE header declares {} segments; {} sample(s) of {} byte(s) need {segments}",
            word(0),
            samples,
            bytes_per_sample
        )));
    }
    let pixels = to_usize(layout.pixels())?;
    let segment = |k: usize| -> Result<&[u8], VisionError> {
        let start = word(k + 1) as usize;
        let end = if k + 1 < segments {
            word(k + 2) as usize
        } else {
            fragment.len()
        };
        let bytes = fragment
            .get(start..end)
            .filter(|_| start >= 64)
            .ok_or_else(|| {
                corrupt(format!(
                    "RLE segment {k} spans bytes {start}..{end} of a {}-byte fragment",
                    fragment.len()
                ))
            })?;
        // Two bytes of PackBits make at most 128: a segment too short to
        // fill the frame is refused before the frame is allocated.
        if (bytes.len() as u64).saturating_mul(64) < pixels as u64 {
            return Err(corrupt(format!(
                "RLE segment {k} of {} bytes cannot hold {} × {} pixels",
                bytes.len(),
                layout.height,
                layout.width
            )));
        }
        Ok(bytes)
    };
    for k in 0..segments {
        segment(k)?;
    }
    let stride = segments;
    let mut out = vec![0u8; to_usize(layout.frame_bytes())?];
    for k in 0..segments {
        let segment = segment(k)?;
        // Segments go most significant byte first, sample by sample; the
        // output is little endian.
        let sample = k / bytes_per_sample;
        let byte = bytes_per_sample - 1 - k % bytes_per_sample;
        let first = sample * bytes_per_sample + byte;
        let written = unpack_bits(segment, &mut out, first, stride, pixels);
        if written < pixels {
            return Err(corrupt(format!(
                "RLE segment {k} decodes to {written} bytes; {} × {} pixels need {pixels}",
                layout.height, layout.width
            )));
        }
    }
    Ok(out)
}

/// PackBits (PS3.5 G.3.1) from `src` into `out[first + i * stride]` for
/// `i < count`; returns how many bytes were written. Bytes beyond `count`
/// (padding) are ignored.
fn unpack_bits(src: &[u8], out: &mut [u8], first: usize, stride: usize, count: usize) -> usize {
    let mut written = 0usize;
    let mut i = 0usize;
    let mut put = |b: u8, written: &mut usize| {
        if let Some(slot) = out.get_mut(first + *written * stride) {
            *slot = b;
        }
        *written += 1;
    };
    while written < count {
        let Some(&header) = src.get(i) else { break };
        i += 1;
        let n = header as i8;
        if n >= 0 {
            let run = n as usize + 1;
            let Some(literal) = src.get(i..i + run) else {
                break;
            };
            i += run;
            for &b in literal.iter().take(count - written) {
                put(b, &mut written);
            }
        } else if n != -128 {
            let run = (1 - i32::from(n)) as usize;
            let Some(&b) = src.get(i) else { break };
            i += 1;
            for _ in 0..run.min(count - written) {
                put(b, &mut written);
            }
        }
    }
    written
}

// ---------------------------------------------------------------------------
// JPEG

/// The first frame's JPEG stream: fragments after the offset table up to
/// and including the one ending with an end-of-image marker (a frame may
/// span fragments; each fragment may carry one pad byte).
fn jpeg_first_frame(items: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for fragment in Fragments::new(items).skip(1) {
        out.extend_from_slice(fragment);
        if fragment.ends_with(&[0xFF, 0xD9]) || fragment.ends_with(&[0xFF, 0xD9, 0x00]) {
            break;
        }
    }
    out
}

/// What a JPEG frame header (its first start-of-frame marker) declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct JpegFrameHeader {
    precision: u8,
    width: u32,
    height: u32,
}

/// The first start-of-frame marker's header, if one comes before the
/// first scan.
fn jpeg_frame_header(jpeg: &[u8]) -> Option<JpegFrameHeader> {
    let mut at = 2usize;
    loop {
        if jpeg.get(at) != Some(&0xFF) {
            return None;
        }
        let marker = *jpeg.get(at + 1)?;
        match marker {
            0xFF => at += 1,
            0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                // FFCn, length (2), precision (1), lines (2), samples per line (2).
                let field = |offset: usize| -> Option<u32> {
                    Some(u32::from(u16::from_be_bytes(
                        jpeg.get(at + offset..at + offset + 2)?.try_into().ok()?,
                    )))
                };
                return Some(JpegFrameHeader {
                    precision: *jpeg.get(at + 4)?,
                    height: field(5)?,
                    width: field(7)?,
                });
            }
            0xD8 | 0x01 | 0xD0..=0xD7 => at += 2,
            0xD9 | 0xDA => return None,
            _ => {
                let len = u16::from_be_bytes(jpeg.get(at + 2..at + 4)?.try_into().ok()?);
                at = at.checked_add(2 + usize::from(len))?;
            }
        }
    }
}

fn decode_jpeg_frame(
    layout: &Layout,
    found: &Found<'_>,
    syntax: Syntax,
    items: &[u8],
    limits: &DecodeLimits,
) -> Result<GrayImage8, VisionError> {
    let jpeg = jpeg_first_frame(items);
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

/// JPEG Lossless (process 14) with `jpeg-decoder`: the frame header is read
/// first and must match Rows × Columns (already within the pixel limit)
/// before any sample buffer is allocated.
fn decode_jpeg_lossless_frame(
    layout: &Layout,
    found: &Found<'_>,
    syntax: Syntax,
    items: &[u8],
) -> Result<GrayImage8, VisionError> {
    let jpeg = jpeg_first_frame(items);
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

// ---------------------------------------------------------------------------
// Pixel pipeline

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

fn render(
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
    fn packbits_runs_and_literals() {
        // Literal of 3, run of 4 x 0xAA, no-op, literal of 1.
        let src = [2, 1, 2, 3, 0xFD, 0xAA, 0x80, 0, 9];
        let mut out = vec![0u8; 8];
        assert_eq!(unpack_bits(&src, &mut out, 0, 1, 8), 8);
        assert_eq!(out, [1, 2, 3, 0xAA, 0xAA, 0xAA, 0xAA, 9]);
        // Strided, short input.
        let mut out = vec![0u8; 6];
        assert_eq!(unpack_bits(&[0xFF, 7], &mut out, 1, 2, 3), 2);
        assert_eq!(out, [0, 7, 0, 7, 0, 0]);
    }

    #[test]
    fn signed_codes() {
        assert_eq!(code_value(0x0FFF, 12, true), -1);
        assert_eq!(code_value(0x0800, 12, true), -2048);
        assert_eq!(code_value(0x07FF, 12, true), 2047);
        assert_eq!(code_value(0x0FFF, 12, false), 4095);
    }

    #[test]
    fn names_transfer_syntaxes() {
        assert_eq!(
            transfer_syntax_name("1.2.840.10008.1.2.4.90"),
            "JPEG 2000 Image Compression (Lossless Only)"
        );
        assert_eq!(transfer_syntax_name("1.2.3"), "unknown transfer syntax");
        let err = Syntax::for_uid("1.2.840.10008.1.2.4.80").unwrap_err();
        assert!(
            err.to_string()
                .contains("1.2.840.10008.1.2.4.80 (JPEG-LS Lossless Image Compression)"),
            "{err}"
        );
        assert_eq!(
            Syntax::for_uid("1.2.840.10008.1.2.4.70"),
            Ok(Syntax::JpegLossless)
        );
    }
}
