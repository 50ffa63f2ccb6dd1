//! The crate's error type.

use thiserror::Error;

/// Everything that can go wrong in the vision pipeline.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum VisionError {
    /// The input held no bytes at all.
    #[error("empty input: no image bytes")]
    Empty,
    /// The input is larger than `DecodeLimits::max_bytes`.
    #[error("input is {len} bytes, over the limit of {max_bytes} bytes")]
    TooManyBytes {
        /// Length of the input.
        len: u64,
        /// The limit it broke.
        max_bytes: u64,
    },
    /// The header declares more pixels than `DecodeLimits::max_pixels`.
    #[error("image of {width}x{height} pixels is over the limit of {max_pixels} pixels")]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit it broke.
        max_pixels: u64,
    },
    /// A PNG, JPEG or DICOM file that is truncated or corrupt.
    #[error("corrupt {format} image: {detail}")]
    Corrupt {
        /// "PNG", "JPEG" or "DICOM".
        format: &'static str,
        /// What the decoder reported.
        detail: String,
    },
    /// Not a PNG, JPEG or DICOM file, or a variant the decoder cannot
    /// handle (e.g. a DICOM transfer syntax, named with its UID).
    #[error("unsupported image format: {detail}")]
    UnsupportedFormat {
        /// What was recognised, if anything.
        detail: String,
    },
    /// Width, height or pixel buffer do not fit together, or a zero size.
    #[error("invalid image dimensions: {detail}")]
    InvalidDimensions {
        /// What is wrong.
        detail: String,
    },
    /// A parameter out of its range (e.g. a negative CLAHE clip limit).
    #[error("invalid parameter: {detail}")]
    InvalidParameter {
        /// What is wrong.
        detail: String,
    },
    /// The resize backend failed.
    #[error("resize failed: {detail}")]
    Resize {
        /// What fast_image_resize reported.
        detail: String,
    },
}
