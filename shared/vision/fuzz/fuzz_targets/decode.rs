//! Any bytes into the decode path, then resize and CLAHE on what decodes:
//! every outcome must be a value or a typed error, never a panic, and the
//! limits must hold (small ones here, so the fuzzer explores instead of
//! allocating).
#![no_main]

use chexvision_vision::{clahe, decode_gray8, resize_gray8, DecodeLimits, ResizeFilter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_pixels: 4_000_000,
        max_bytes: 1 << 20,
    };
    if let Ok(image) = decode_gray8(data, &limits) {
        assert!(u64::from(image.width) * u64::from(image.height) <= limits.max_pixels);
        assert_eq!(
            image.pixels.len() as u64,
            u64::from(image.width) * u64::from(image.height)
        );
        if let Ok(small) = resize_gray8(&image, 17, 23, ResizeFilter::Bilinear) {
            let _ = clahe(&small, 2.0, (8, 8));
        }
    }
});
