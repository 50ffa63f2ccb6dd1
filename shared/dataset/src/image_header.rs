//! Reads an image's format and size from its header, without decoding pixels.
//!
//! Ingest stores images as they came and only checks that each is a PNG or
//! JPEG with a sane size; decoding (and finding corrupt pixel data) is the
//! preprocess stage's job.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
    /// Raw 8-bit grayscale pixels, row-major (ready shards; the size is the
    /// shard's `chexvision.image_size_px`).
    Gray8,
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Gray8 => "gray8",
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
    #[error("not a PNG or JPEG image (starts with {0})")]
    UnknownFormat(String),
    #[error("truncated {0} header")]
    Truncated(ImageFormat),
    #[error("{format} header is corrupt: {detail}")]
    Corrupt {
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
