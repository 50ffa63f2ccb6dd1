//! Helpers shared by the integration tests (not every test uses all).
#![allow(dead_code)]

use std::path::PathBuf;

use chexvision_vision::{decode_gray8, DecodeLimits, GrayImage8};

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

pub fn load(name: &str) -> GrayImage8 {
    let path = fixture_path(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "read {}: {e} (run scripts/make_vision_fixtures.py)",
            path.display()
        )
    });
    decode_gray8(&bytes, &DecodeLimits::default())
        .unwrap_or_else(|e| panic!("decode {}: {e}", path.display()))
}

/// (max abs error, mean abs error, share of pixels within ±1).
pub fn compare(a: &GrayImage8, b: &GrayImage8) -> (u8, f64, f64) {
    assert_eq!((a.width, a.height), (b.width, b.height), "sizes differ");
    let mut max = 0u8;
    let mut sum = 0u64;
    let mut within1 = 0usize;
    for (&x, &y) in a.pixels.iter().zip(&b.pixels) {
        let d = x.abs_diff(y);
        max = max.max(d);
        sum += u64::from(d);
        if d <= 1 {
            within1 += 1;
        }
    }
    let n = a.pixels.len() as f64;
    (max, sum as f64 / n, within1 as f64 / n)
}
