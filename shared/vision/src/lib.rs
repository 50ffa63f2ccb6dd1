//! CheXVision image pipeline: PNG/JPEG/DICOM decoding with limits, resizing
//! and CLAHE, all on 8-bit grayscale.
//!
//! * [`decode_gray8`]: PNG/JPEG/DICOM → [`GrayImage8`], rejecting
//!   over-large inputs from the header before allocating pixels.
//! * [`resize_gray8`]: Pillow-compatible convolution resize.
//! * [`clahe`]: OpenCV-compatible CLAHE.
//! * [`augment`]: seeded training augmentations (one affine warp, colour
//!   jitter, blur, erasing), [`to_tensor_imagenet`] and [`tta_views`].
//!
//! Measured parity (tests/parity.rs, fixtures from
//! `scripts/make_vision_fixtures.py`):
//!
//! | operation | reference | max abs error | worst per-image mean abs error |
//! |---|---|---|---|
//! | resize Bilinear | Pillow `BILINEAR` | 1 | 0.166 |
//! | resize Bicubic | Pillow `BICUBIC` | 1 | 0.182 |
//! | resize Lanczos3 | Pillow `LANCZOS` | 2 | 0.241 |
//! | resize Area | Pillow `BOX` | 16 (0.18 % of pixels in 250×203 → 97×80, box-edge ties; else ≤ 1) | 0.150 |
//! | CLAHE (2.0, 8×8) | OpenCV 5.0.0 (opencv-python-headless) `createCLAHE().apply` | 0 | 0 (100 % of pixels identical) |
//! | PNG → gray (RGB, RGBA, palette, gray+alpha, full-range 16-bit gray/RGB) | Pillow `convert("L")` | 0 | 0 |
//! | 16-bit gray PNG using 12 bits (scaled with `sBIT`, unscaled with and without) | the mapping in docs/architecture.md, computed by `scripts/make_png16_fixtures.py` | 0 | 0 |
//! | JPEG → gray (baseline gray/RGB 4:2:0, progressive) | Pillow (libjpeg) | 2 | 0.022 |
//! | DICOM native / RLE / JPEG Lossless → gray (rescale, windows, VOI LUT, min–max, MONOCHROME1, colour) | numpy, PS3.3 formulas | 0 | 0 |
//! | DICOM JPEG Baseline → gray (also RGB stored without colour transform) | Pillow (libjpeg), then the same VOI | 1 | 0.009 |
//! | DICOM JPEG 2000 / JPEG-LS lossless → gray (12-bit, signed with rescale, 8-bit, colour with the reversible transform) | numpy, the values written | 0 | 0 |
//! | DICOM JPEG 2000 lossy / JPEG-LS near-lossless → gray | pydicom's plugins (OpenJPEG, CharLS), then the same VOI | 0 | 0 |
//!
//! Resize cases: three X-ray-like inputs (256×256, 250×203, 64×97) to
//! 64×64 and 97×80, plus a 64×97 → 96×140 upscale. CLAHE cases: 256×256,
//! 250×203, 64×97, 97×64 (sizes not divisible by 8 included).
//!
//! DICOM (Part 10 files, `DICM` at byte 128) goes through the same
//! [`decode_gray8`]: Implicit/Explicit VR Little Endian, RLE Lossless,
//! 8-bit JPEG Baseline/Extended, JPEG Lossless (process 14), JPEG-LS
//! (CharLS) and JPEG 2000 (OpenJPEG); MONOCHROME1/2 with 8 or 16 bits
//! allocated, signed or not; Rescale Slope/Intercept; a VOI LUT Sequence,
//! else Window Center/Width (LINEAR, LINEAR_EXACT, SIGMOID), else min–max;
//! the first frame of a multi-frame object; colour as luma. Other transfer
//! syntaxes (12-bit lossy JPEG, HTJ2K, Deflated, Big Endian, ...) are
//! `UnsupportedFormat` naming the UID. [`dicom_header`] reads a file's
//! header with the same walk without decoding (ingest's check). Details, and why the header is parsed here (allocation bounded by
//! the input, no panics), are in the `dicom` module's source
//! documentation. The DICOM rows of the table above are from
//! tests/dicom.rs, with fixtures and numpy references from
//! `scripts/make_dicom_fixtures.py`.

mod augment;
mod clahe;
mod decode;
mod dicom;
mod error;
mod gray;
mod resize;

pub use augment::{
    apply_params, augment, draw_params, to_tensor_imagenet, tta_views, AugmentConfig,
    AugmentParams, EraseRect, IMAGENET_MEAN, IMAGENET_STD,
};
pub use clahe::clahe;
pub use decode::{decode_gray8, DecodeLimits};
pub use dicom::{dicom_header, dicom_view, has_dicom_magic, DicomHeader, DicomView};
pub use error::VisionError;
pub use gray::GrayImage8;
pub use resize::{resize_gray8, ResizeFilter};
