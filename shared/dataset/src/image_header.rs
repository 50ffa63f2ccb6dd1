//! Reads an image's format and size from its header, without decoding pixels.
//!
//! Ingest stores images as they came and only checks that each is a PNG,
//! JPEG or DICOM file with a sane size; decoding (and finding corrupt pixel
//! data or an unsupported DICOM transfer syntax) is the preprocess stage's
//! job.
//!
//! For DICOM (Part 10: preamble, `DICM`, file meta group) the header is
//! read with the vision crate's own walk ([`chexvision_vision::dicom_header`]):
//! the same element checks and the same transfer syntaxes as the decoder,
//! so what ingest accepts is what preprocess can decode, short of corrupt
//! pixel data. A file in a transfer syntax the decoder does not support
//! (explicit VR big endian, deflated, HTJ2K, ...) is refused here, naming
//! the syntax.

use std::fmt;

use chexvision_vision::{dicom_header, has_dicom_magic, VisionError};

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
    Corrupt { format: ImageFormat, detail: String },
    #[error("unsupported {format} file: {detail}")]
    Unsupported { format: ImageFormat, detail: String },
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
            detail: "first chunk is not IHDR".into(),
        });
    }
    if be_u32(bytes, 8) != Some(13) {
        return Err(ImageHeaderError::Corrupt {
            format,
            detail: "IHDR length is not 13".into(),
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
                    detail: "expected a marker".into(),
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
                    detail: "no frame header before the image data".into(),
                })
            }
            // Stand-alone markers carry no length.
            0x01 | 0xd0..=0xd7 => at += 2,
            _ => {
                let length = be_u16(bytes, at + 2).ok_or(truncated.clone())?;
                if length < 2 {
                    return Err(ImageHeaderError::Corrupt {
                        format,
                        detail: "segment length below 2".into(),
                    });
                }
                at += 2 + usize::from(length);
            }
        }
    }
}

fn probe_dicom(bytes: &[u8]) -> Result<ImageInfo, ImageHeaderError> {
    let format = ImageFormat::Dicom;
    match dicom_header(bytes) {
        Ok(header) => Ok(ImageInfo {
            format,
            width: header.width,
            height: header.height,
        }),
        Err(VisionError::UnsupportedFormat { detail }) => {
            Err(ImageHeaderError::Unsupported { format, detail })
        }
        Err(VisionError::Corrupt { detail, .. }) => {
            Err(ImageHeaderError::Corrupt { format, detail })
        }
        Err(other) => Err(ImageHeaderError::Corrupt {
            format,
            detail: other.to_string(),
        }),
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
        for ts in [
            "1.2.840.10008.1.2.1",
            // Encapsulated syntaxes are explicit VR little endian; the
            // probe does not decode, so the pixel data does not matter.
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.4.80",
        ] {
            let info = probe_image(&dcm_explicit(ts, 2500, 2048, false)).unwrap();
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

    /// Ingest refuses what the decoder cannot read, with the decoder's
    /// reason: one header walk serves both (before, ingest accepted
    /// big-endian files that preprocess then refused).
    #[test]
    fn ingest_and_the_decoder_agree_on_dicom() {
        let limits = chexvision_vision::DecodeLimits::default();
        let big_endian = dcm_explicit("1.2.840.10008.1.2.2", 4, 4, true);
        let deflated = dcm_file("1.2.840.10008.1.2.1.99", &[0x78, 0x9c, 3, 0]);
        for (file, syntax) in [
            (&big_endian, "Explicit VR Big Endian"),
            (&deflated, "Deflated Explicit VR Little Endian"),
        ] {
            let probed = probe_image(file).unwrap_err();
            let decoded = chexvision_vision::decode_gray8(file, &limits).unwrap_err();
            match (&probed, &decoded) {
                (
                    ImageHeaderError::Unsupported { detail, .. },
                    VisionError::UnsupportedFormat { detail: decoder },
                ) => {
                    assert_eq!(detail, decoder);
                    assert!(detail.contains(syntax), "{detail}");
                }
                other => panic!("{syntax}: {other:?}"),
            }
        }
        // A file both accept: the decoder decodes the size ingest read.
        let mut ds = dcm_el((0x28, 2), b"US", &1u16.to_le_bytes(), false);
        ds.extend(dcm_el((0x28, 4), b"CS", b"MONOCHROME2 ", false));
        ds.extend(dcm_el((0x28, 0x10), b"US", &2u16.to_le_bytes(), false));
        ds.extend(dcm_el((0x28, 0x11), b"US", &4u16.to_le_bytes(), false));
        ds.extend(dcm_el((0x28, 0x100), b"US", &16u16.to_le_bytes(), false));
        ds.extend(dcm_el((0x28, 0x101), b"US", &12u16.to_le_bytes(), false));
        ds.extend(dcm_el((0x7fe0, 0x10), b"OW", &[7; 16], false));
        let good = dcm_file("1.2.840.10008.1.2.1", &ds);
        let info = probe_image(&good).unwrap();
        let image = chexvision_vision::decode_gray8(&good, &limits).unwrap();
        assert_eq!((info.width, info.height), (image.width, image.height));
    }

    #[test]
    fn names_what_is_wrong_with_dicom() {
        let good = dcm_explicit("1.2.840.10008.1.2.1", 100, 100, false);
        for cut in [130, good.len() - 30] {
            assert!(matches!(
                probe_image(&good[..cut]),
                Err(ImageHeaderError::Corrupt { format: ImageFormat::Dicom, detail })
                    if detail.contains("truncated")
            ));
        }
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
