//! Reads an image's format and size from its header, without decoding pixels.
//!
//! Ingest stores images as they came and only checks that each is a PNG,
//! JPEG or DICOM file with a sane size; decoding (and finding corrupt pixel
//! data or an unsupported DICOM transfer syntax) is the preprocess stage's
//! job.
//!
//! For DICOM (Part 10: preamble, `DICM`, file meta group) the header is
//! walked, element by element, to Rows (0028,0010) and Columns (0028,0011)
//! and on to the Pixel Data element, stepping over sequences of undefined
//! length; no value other than the transfer syntax, Rows and Columns is
//! read. Implicit and explicit VR little endian, explicit VR big endian and
//! every encapsulated transfer syntax can be probed; a deflated data set
//! cannot (`Unsupported`).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
    /// Raw 8-bit grayscale pixels, row-major (ready shards; the size is the
    /// shard's `chexvision.image_size_px`).
    Gray8,
    /// A DICOM Part 10 file, as it came.
    Dicom,
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Gray8 => "gray8",
            ImageFormat::Dicom => "dicom",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageHeaderError {
    #[error("empty file")]
    Empty,
    #[error("not a PNG, JPEG or DICOM image (starts with {0})")]
    UnknownFormat(String),
    #[error("truncated {0} header")]
    Truncated(ImageFormat),
    #[error("{format} header is corrupt: {detail}")]
    Corrupt {
        format: ImageFormat,
        detail: &'static str,
    },
    #[error("unsupported {format} file: {detail}")]
    Unsupported {
        format: ImageFormat,
        detail: &'static str,
    },
    #[error("{format} header says {width}×{height} pixels")]
    BadSize {
        format: ImageFormat,
        width: u32,
        height: u32,
    },
}

/// Largest edge accepted, in pixels (NIH images are 1024–3000 px).
pub const MAX_EDGE: u32 = 16_384;

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

pub fn probe_image(bytes: &[u8]) -> Result<ImageInfo, ImageHeaderError> {
    if bytes.is_empty() {
        return Err(ImageHeaderError::Empty);
    }
    let info = if bytes.starts_with(&PNG_SIGNATURE) {
        probe_png(bytes)?
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        probe_jpeg(bytes)?
    } else if has_dicom_magic(bytes) {
        probe_dicom(bytes)?
    } else {
        let start: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        return Err(ImageHeaderError::UnknownFormat(start.join(" ")));
    };
    if info.width == 0 || info.height == 0 || info.width > MAX_EDGE || info.height > MAX_EDGE {
        return Err(ImageHeaderError::BadSize {
            format: info.format,
            width: info.width,
            height: info.height,
        });
    }
    Ok(info)
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let slice = bytes.get(at..at + 4)?;
    Some(u32::from_be_bytes([slice[0], slice[1], slice[2], slice[3]]))
}

fn be_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let slice = bytes.get(at..at + 2)?;
    Some(u16::from_be_bytes([slice[0], slice[1]]))
}

fn probe_png(bytes: &[u8]) -> Result<ImageInfo, ImageHeaderError> {
    let format = ImageFormat::Png;
    // Signature, then the IHDR chunk: length 13, "IHDR", width, height, ...
    let truncated = ImageHeaderError::Truncated(format);
    if bytes.get(12..16).ok_or(truncated.clone())? != b"IHDR" {
        return Err(ImageHeaderError::Corrupt {
            format,
            detail: "first chunk is not IHDR",
        });
    }
    if be_u32(bytes, 8) != Some(13) {
        return Err(ImageHeaderError::Corrupt {
            format,
            detail: "IHDR length is not 13",
        });
    }
    let width = be_u32(bytes, 16).ok_or(truncated.clone())?;
    let height = be_u32(bytes, 20).ok_or(truncated.clone())?;
    // Bytes 24..29 are depth, colour type and methods; 29..33 the CRC. A file
    // that stops inside IHDR is truncated; one that stops right after it has
    // no pixel data at all.
    if bytes.len() < 33 + 12 {
        return Err(truncated);
    }
    Ok(ImageInfo {
        format,
        width,
        height,
    })
}

fn probe_jpeg(bytes: &[u8]) -> Result<ImageInfo, ImageHeaderError> {
    let format = ImageFormat::Jpeg;
    let truncated = ImageHeaderError::Truncated(format);
    let mut at = 2;
    loop {
        // Markers may be padded with 0xff bytes.
        while bytes.get(at) == Some(&0xff) && bytes.get(at + 1) == Some(&0xff) {
            at += 1;
        }
        if bytes.get(at) != Some(&0xff) {
            return Err(if at >= bytes.len() {
                truncated
            } else {
                ImageHeaderError::Corrupt {
                    format,
                    detail: "expected a marker",
                }
            });
        }
        let marker = *bytes.get(at + 1).ok_or(truncated.clone())?;
        match marker {
            // Start of frame (baseline, progressive, lossless...): the size.
            0xc0..=0xc3 | 0xc5..=0xc7 | 0xc9..=0xcb | 0xcd..=0xcf => {
                let height = be_u16(bytes, at + 5).ok_or(truncated.clone())?;
                let width = be_u16(bytes, at + 7).ok_or(truncated)?;
                return Ok(ImageInfo {
                    format,
                    width: u32::from(width),
                    height: u32::from(height),
                });
            }
            0xd9 | 0xda => {
                return Err(ImageHeaderError::Corrupt {
                    format,
                    detail: "no frame header before the image data",
                })
            }
            // Stand-alone markers carry no length.
            0x01 | 0xd0..=0xd7 => at += 2,
            _ => {
                let length = be_u16(bytes, at + 2).ok_or(truncated.clone())?;
                if length < 2 {
                    return Err(ImageHeaderError::Corrupt {
                        format,
                        detail: "segment length below 2",
                    });
                }
                at += 2 + usize::from(length);
            }
        }
    }
}

const DICOM_PREAMBLE: usize = 128;

/// `DICM` at byte 128, or its start when the input ends there (a cut-off
/// DICOM file, reported as truncated).
fn has_dicom_magic(bytes: &[u8]) -> bool {
    match bytes.get(DICOM_PREAMBLE..) {
        Some(rest) if !rest.is_empty() => {
            let n = rest.len().min(4);
            rest.get(..n) == b"DICM".get(..n)
        }
        _ => false,
    }
}

/// Deepest nesting of sequences stepped over.
const DICOM_MAX_DEPTH: u32 = 16;
const DICOM_ROWS: u32 = 0x0028_0010;
const DICOM_COLUMNS: u32 = 0x0028_0011;
const DICOM_PIXEL_DATA: u32 = 0x7fe0_0010;
const DICOM_ITEM: u32 = 0xfffe_e000;
const DICOM_ITEM_END: u32 = 0xfffe_e00d;
const DICOM_SEQUENCE_END: u32 = 0xfffe_e0dd;

/// Element-by-element reader of a DICOM header.
struct DicomReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    big_endian: bool,
    explicit: bool,
}

struct DicomElement {
    tag: u32,
    vr: Option<[u8; 2]>,
    /// `None`: undefined length.
    len: Option<u32>,
}

const DICOM_TRUNCATED: ImageHeaderError = ImageHeaderError::Truncated(ImageFormat::Dicom);

fn dicom_corrupt(detail: &'static str) -> ImageHeaderError {
    ImageHeaderError::Corrupt {
        format: ImageFormat::Dicom,
        detail,
    }
}

impl<'a> DicomReader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ImageHeaderError> {
        let end = self.pos.checked_add(n).ok_or(DICOM_TRUNCATED)?;
        let slice = self.bytes.get(self.pos..end).ok_or(DICOM_TRUNCATED)?;
        self.pos = end;
        Ok(slice)
    }

    fn u16(&mut self) -> Result<u16, ImageHeaderError> {
        let big_endian = self.big_endian;
        let b = self.take(2)?;
        let b = [b[0], b[1]];
        Ok(if big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    fn u32(&mut self) -> Result<u32, ImageHeaderError> {
        let big_endian = self.big_endian;
        let b = self.take(4)?;
        let b = [b[0], b[1], b[2], b[3]];
        Ok(if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn element(&mut self) -> Result<DicomElement, ImageHeaderError> {
        let group = self.u16()?;
        let tag = (u32::from(group) << 16) | u32::from(self.u16()?);
        let (vr, len) = if group == 0xfffe || !self.explicit {
            (None, self.u32()?)
        } else {
            let b = self.take(2)?;
            let vr = [b[0], b[1]];
            if !vr.iter().all(u8::is_ascii_uppercase) {
                return Err(dicom_corrupt("element without a valid VR"));
            }
            let long = matches!(
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
            );
            let len = if long {
                self.take(2)?;
                self.u32()?
            } else {
                u32::from(self.u16()?)
            };
            (Some(vr), len)
        };
        Ok(DicomElement {
            tag,
            vr,
            len: (len != u32::MAX).then_some(len),
        })
    }

    /// After the header of an undefined-length sequence: its items, up to
    /// the sequence delimitation item.
    fn skip_sequence(&mut self, depth: u32) -> Result<(), ImageHeaderError> {
        if depth > DICOM_MAX_DEPTH {
            return Err(dicom_corrupt("sequences nested too deep"));
        }
        loop {
            let item = self.element()?;
            match (item.tag, item.len) {
                (DICOM_SEQUENCE_END, _) => return Ok(()),
                (DICOM_ITEM, Some(len)) => {
                    self.take(len as usize)?;
                }
                (DICOM_ITEM, None) => loop {
                    let e = self.element()?;
                    match (e.tag, e.len) {
                        (DICOM_ITEM_END, _) => break,
                        (_, Some(len)) => {
                            self.take(len as usize)?;
                        }
                        (_, None) => self.skip_undefined(&e, depth + 1)?,
                    }
                },
                _ => return Err(dicom_corrupt("sequence holds something other than items")),
            }
        }
    }

    /// Steps over an element of undefined length (a sequence; UN holds
    /// implicit VR little-endian content).
    fn skip_undefined(&mut self, e: &DicomElement, depth: u32) -> Result<(), ImageHeaderError> {
        match e.vr {
            Some(vr) if &vr == b"UN" => {
                let (explicit, big_endian) = (self.explicit, self.big_endian);
                (self.explicit, self.big_endian) = (false, false);
                let result = self.skip_sequence(depth);
                (self.explicit, self.big_endian) = (explicit, big_endian);
                result
            }
            Some(vr) if &vr != b"SQ" => Err(dicom_corrupt("undefined length on a non-sequence")),
            _ => self.skip_sequence(depth),
        }
    }
}

fn probe_dicom(bytes: &[u8]) -> Result<ImageInfo, ImageHeaderError> {
    let format = ImageFormat::Dicom;
    if bytes.get(DICOM_PREAMBLE..DICOM_PREAMBLE + 4) != Some(b"DICM".as_slice()) {
        return Err(DICOM_TRUNCATED);
    }
    let mut r = DicomReader {
        bytes,
        pos: DICOM_PREAMBLE + 4,
        big_endian: false,
        explicit: true,
    };
    // File meta group: explicit VR little endian, group 0002.
    let mut transfer_syntax = None;
    while bytes.get(r.pos..r.pos + 2) == Some([2, 0].as_slice()) {
        let e = r.element()?;
        let len = e
            .len
            .ok_or(dicom_corrupt("file meta element of undefined length"))?;
        let value = r.take(len as usize)?;
        if e.tag == 0x0002_0010 {
            transfer_syntax = Some(value);
        }
    }
    let uid = transfer_syntax.ok_or(dicom_corrupt("no transfer syntax in the file meta"))?;
    let uid = std::str::from_utf8(uid)
        .map_err(|_| dicom_corrupt("transfer syntax UID is not text"))?
        .trim_end_matches(['\0', ' ']);
    match uid {
        "1.2.840.10008.1.2" => r.explicit = false,
        "1.2.840.10008.1.2.2" => r.big_endian = true,
        "1.2.840.10008.1.2.1.99" => {
            return Err(ImageHeaderError::Unsupported {
                format,
                detail:
                    "deflated data set (1.2.840.10008.1.2.1.99): Rows and Columns cannot be read",
            })
        }
        // Every other transfer syntax is explicit VR little endian.
        _ => {}
    }

    let (mut rows, mut columns) = (None, None);
    loop {
        if r.pos == bytes.len() {
            return Err(dicom_corrupt(
                "no Pixel Data element: not an image, or truncated",
            ));
        }
        let e = r.element()?;
        if e.tag == DICOM_PIXEL_DATA {
            // Present in full: native samples, or encapsulated fragments
            // up to the sequence delimitation item.
            match e.len {
                Some(len) => r.take(len as usize).map(|_| ())?,
                None => r.skip_sequence(1)?,
            }
            break;
        }
        match e.len {
            Some(len) => {
                let value = r.take(len as usize)?;
                if e.tag == DICOM_ROWS || e.tag == DICOM_COLUMNS {
                    let v = match value {
                        [a, b, ..] if r.big_endian => u16::from_be_bytes([*a, *b]),
                        [a, b, ..] => u16::from_le_bytes([*a, *b]),
                        _ => return Err(dicom_corrupt("Rows or Columns is not a 16-bit value")),
                    };
                    let slot = if e.tag == DICOM_ROWS {
                        &mut rows
                    } else {
                        &mut columns
                    };
                    slot.get_or_insert(u32::from(v));
                }
            }
            None => r.skip_undefined(&e, 1)?,
        }
    }
    match (columns, rows) {
        (Some(width), Some(height)) => Ok(ImageInfo {
            format,
            width,
            height,
        }),
        _ => Err(dicom_corrupt("no Rows or Columns before the Pixel Data")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = PNG_SIGNATURE.to_vec();
        bytes.extend_from_slice(&13u32.to_be_bytes());
        bytes.extend_from_slice(b"IHDR");
        bytes.extend_from_slice(&width.to_be_bytes());
        bytes.extend_from_slice(&height.to_be_bytes());
        bytes.extend_from_slice(&[8, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0; 4]); // CRC (not checked here)
        bytes.extend_from_slice(&[0; 12]); // an IDAT would follow
        bytes
    }

    fn jpeg_header(width: u16, height: u16) -> Vec<u8> {
        let mut bytes = vec![0xff, 0xd8];
        // An APP0 segment of 16 bytes, then SOF0.
        bytes.extend_from_slice(&[0xff, 0xe0, 0, 16]);
        bytes.extend_from_slice(&[0; 14]);
        bytes.extend_from_slice(&[0xff, 0xc0, 0, 11, 8]);
        bytes.extend_from_slice(&height.to_be_bytes());
        bytes.extend_from_slice(&width.to_be_bytes());
        bytes.extend_from_slice(&[1, 1, 0x11, 0]);
        bytes
    }

    /// An explicit VR element (little endian, or big endian when `be`).
    fn dcm_el(tag: (u16, u16), vr: &[u8; 2], value: &[u8], be: bool) -> Vec<u8> {
        let u16b = |v: u16| if be { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut out = Vec::new();
        out.extend_from_slice(&u16b(tag.0));
        out.extend_from_slice(&u16b(tag.1));
        out.extend_from_slice(vr);
        if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN") {
            out.extend_from_slice(&[0, 0]);
            let len = value.len() as u32;
            out.extend_from_slice(&if be {
                len.to_be_bytes()
            } else {
                len.to_le_bytes()
            });
        } else {
            out.extend_from_slice(&u16b(value.len() as u16));
        }
        out.extend_from_slice(value);
        out
    }

    /// An implicit VR little-endian element.
    fn dcm_implicit(tag: (u16, u16), value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    /// (FFFE,eeee) with a length, little endian.
    fn dcm_item(element: u16, len: u32) -> Vec<u8> {
        let mut out = vec![0xfe, 0xff];
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out
    }

    fn dcm_file(transfer_syntax: &str, dataset: &[u8]) -> Vec<u8> {
        let mut uid = transfer_syntax.as_bytes().to_vec();
        if uid.len() % 2 == 1 {
            uid.push(0);
        }
        let mut bytes = vec![0; 128];
        bytes.extend_from_slice(b"DICM");
        bytes.extend(dcm_el((2, 0), b"UL", &26u32.to_le_bytes(), false));
        bytes.extend(dcm_el((2, 1), b"OB", &[0, 1], false));
        bytes.extend(dcm_el((2, 0x10), b"UI", &uid, false));
        bytes.extend_from_slice(dataset);
        bytes
    }

    /// Explicit VR: an undefined-length sequence (with a nested one) before
    /// Rows and Columns, then 16 bytes of pixel data.
    fn dcm_explicit(ts: &str, rows: u16, columns: u16, be: bool) -> Vec<u8> {
        let u16b = |v: u16| if be { v.to_be_bytes() } else { v.to_le_bytes() };
        let item = |e: u16, len: u32| {
            let mut out = Vec::new();
            out.extend_from_slice(&u16b(0xfffe));
            out.extend_from_slice(&u16b(e));
            out.extend_from_slice(&if be {
                len.to_be_bytes()
            } else {
                len.to_le_bytes()
            });
            out
        };
        let mut ds = dcm_el((8, 0x60), b"CS", b"DX", be);
        let mut sq = dcm_el((8, 0x1140), b"SQ", &[], be);
        let n = sq.len();
        sq[n - 4..].copy_from_slice(&[0xff; 4]); // undefined length
        ds.extend(sq);
        ds.extend(item(0xe000, u32::MAX));
        let mut inner = dcm_el((8, 0x1199), b"SQ", &[], be);
        let n = inner.len();
        inner[n - 4..].copy_from_slice(&[0xff; 4]);
        ds.extend(inner);
        ds.extend(item(0xe000, 4));
        ds.extend_from_slice(&[0; 4]);
        ds.extend(item(0xe0dd, 0));
        ds.extend(dcm_el((8, 0x1150), b"UI", b"1.2.3\0", be));
        ds.extend(item(0xe00d, 0));
        ds.extend(item(0xe0dd, 0));
        ds.extend(dcm_el((0x28, 0x10), b"US", &u16b(rows), be));
        ds.extend(dcm_el((0x28, 0x11), b"US", &u16b(columns), be));
        ds.extend(dcm_el((0x7fe0, 0x10), b"OW", &[0; 16], be));
        dcm_file(ts, &ds)
    }

    #[test]
    fn reads_dicom_sizes() {
        for (ts, be) in [
            ("1.2.840.10008.1.2.1", false),
            ("1.2.840.10008.1.2.2", true),
            // Encapsulated syntaxes are explicit VR little endian; the
            // probe does not decode, so JPEG 2000 is fine here.
            ("1.2.840.10008.1.2.4.90", false),
        ] {
            let info = probe_image(&dcm_explicit(ts, 2500, 2048, be)).unwrap();
            assert_eq!(
                (info.format, info.width, info.height),
                (ImageFormat::Dicom, 2048, 2500),
                "{ts}"
            );
        }
        let mut ds = dcm_implicit((8, 0x60), b"DX");
        ds.extend(dcm_implicit((8, 0x1140), &[]));
        let n = ds.len();
        ds[n - 4..].copy_from_slice(&[0xff; 4]); // undefined-length sequence
        ds.extend(dcm_item(0xe000, 10));
        ds.extend_from_slice(&[0; 10]);
        ds.extend(dcm_item(0xe0dd, 0));
        ds.extend(dcm_implicit((0x28, 0x10), &1024u16.to_le_bytes()));
        ds.extend(dcm_implicit((0x28, 0x11), &768u16.to_le_bytes()));
        ds.extend(dcm_implicit((0x7fe0, 0x10), &[0; 8]));
        let info = probe_image(&dcm_file("1.2.840.10008.1.2", &ds)).unwrap();
        assert_eq!((info.width, info.height), (768, 1024));
        assert_eq!(ImageFormat::Dicom.to_string(), "dicom");
    }

    #[test]
    fn reads_pydicom_written_files() {
        // Files written by pydicom for the vision crate's tests
        // (scripts/make_dicom_fixtures.py).
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../vision/tests/fixtures/dicom");
        for (name, size) in [
            ("mono2_u16_minmax_implicit.dcm", (64, 48)),
            ("mono2_u16_voi_lut.dcm", (64, 48)),
            ("mono2_u16_rle.dcm", (64, 48)),
            ("mono2_u16_multiframe.dcm", (40, 30)),
            ("unsupported_jpeg2000.dcm", (64, 48)),
        ] {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            let info = probe_image(&bytes).unwrap();
            assert_eq!(
                (info.format, info.width, info.height),
                (ImageFormat::Dicom, size.0, size.1)
            );
            // Cut anywhere after the magic: truncated or corrupt, never a
            // panic, never a size.
            for cut in 129..bytes.len() {
                if let Ok(info) = probe_image(&bytes[..cut]) {
                    panic!("{name} cut at {cut}: {info:?}");
                }
            }
        }
    }

    #[test]
    fn names_what_is_wrong_with_dicom() {
        let good = dcm_explicit("1.2.840.10008.1.2.1", 100, 100, false);
        assert_eq!(
            probe_image(&good[..130]),
            Err(ImageHeaderError::Truncated(ImageFormat::Dicom))
        );
        assert_eq!(
            probe_image(&good[..good.len() - 30]),
            Err(ImageHeaderError::Truncated(ImageFormat::Dicom))
        );
        assert!(matches!(
            probe_image(&dcm_explicit("1.2.840.10008.1.2.1", 50_000, 50_000, false)),
            Err(ImageHeaderError::BadSize { width: 50_000, .. })
        ));
        assert!(matches!(
            probe_image(&dcm_file("1.2.840.10008.1.2.1.99", &[0x78, 0x9c, 3, 0])),
            Err(ImageHeaderError::Unsupported { .. })
        ));
        let no_pixels = dcm_file(
            "1.2.840.10008.1.2.1",
            &dcm_el((0x28, 0x10), b"US", &[4, 0], false),
        );
        assert!(matches!(
            probe_image(&no_pixels),
            Err(ImageHeaderError::Corrupt { detail, .. }) if detail.contains("Pixel Data")
        ));
        // Sequences nested past the limit.
        let mut deep = Vec::new();
        for _ in 0..40 {
            let mut sq = dcm_el((8, 0x1140), b"SQ", &[], false);
            let n = sq.len();
            sq[n - 4..].copy_from_slice(&[0xff; 4]);
            deep.extend(sq);
            deep.extend(dcm_item(0xe000, u32::MAX));
        }
        assert!(matches!(
            probe_image(&dcm_file("1.2.840.10008.1.2.1", &deep)),
            Err(ImageHeaderError::Corrupt { .. })
        ));
    }

    #[test]
    fn reads_png_and_jpeg_sizes() {
        let png = probe_image(&png_header(1024, 900)).unwrap();
        assert_eq!(
            (png.format, png.width, png.height),
            (ImageFormat::Png, 1024, 900)
        );
        let jpeg = probe_image(&jpeg_header(320, 300)).unwrap();
        assert_eq!(
            (jpeg.format, jpeg.width, jpeg.height),
            (ImageFormat::Jpeg, 320, 300)
        );
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(probe_image(&[]), Err(ImageHeaderError::Empty));
        assert!(matches!(
            probe_image(b"GIF89a.."),
            Err(ImageHeaderError::UnknownFormat(start)) if start.starts_with("47 49 46")
        ));
        assert_eq!(
            probe_image(&png_header(1024, 1024)[..20]),
            Err(ImageHeaderError::Truncated(ImageFormat::Png))
        );
        assert!(matches!(
            probe_image(&png_header(50_000, 50_000)),
            Err(ImageHeaderError::BadSize { width: 50_000, .. })
        ));
        assert!(matches!(
            probe_image(&png_header(0, 10)),
            Err(ImageHeaderError::BadSize { width: 0, .. })
        ));
        let mut not_ihdr = png_header(10, 10);
        not_ihdr[12..16].copy_from_slice(b"IDAT");
        assert!(matches!(
            probe_image(&not_ihdr),
            Err(ImageHeaderError::Corrupt { .. })
        ));
        assert_eq!(
            probe_image(&jpeg_header(10, 10)[..8]),
            Err(ImageHeaderError::Truncated(ImageFormat::Jpeg))
        );
        assert!(matches!(
            probe_image(&[0xff, 0xd8, 0xff, 0xda, 0, 2]),
            Err(ImageHeaderError::Corrupt { .. })
        ));
    }
}
