//! CheXVision image pipeline: PNG/JPEG decoding with limits, resizing and
//! CLAHE, all on 8-bit grayscale.
//!
//! * [`decode_gray8`]: PNG/JPEG → [`GrayImage8`], rejecting over-large
//!   inputs from the header before allocating pixels.
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
//! | PNG → gray (RGB, RGBA, palette, gray+alpha, 16-bit gray/RGB) | Pillow `convert("L")` | 0 | 0 |
//! | JPEG → gray (baseline gray/RGB 4:2:0, progressive) | Pillow (libjpeg) | 2 | 0.022 |
//!
//! Resize cases: three X-ray-like inputs (256×256, 250×203, 64×97) to
//! 64×64 and 97×80, plus a 64×97 → 96×140 upscale. CLAHE cases: 256×256,
//! 250×203, 64×97, 97×64 (sizes not divisible by 8 included).
//!
//! Not here yet: DICOM decoding.

mod augment;
mod clahe;
mod decode;
mod error;
mod gray;
mod resize;

pub use augment::{
    apply_params, augment, draw_params, to_tensor_imagenet, tta_views, AugmentConfig,
    AugmentParams, EraseRect, IMAGENET_MEAN, IMAGENET_STD,
};
pub use clahe::clahe;
pub use decode::{decode_gray8, DecodeLimits};
pub use error::VisionError;
pub use gray::GrayImage8;
pub use resize::{resize_gray8, ResizeFilter};
