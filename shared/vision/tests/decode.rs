//! Decoding of every accepted PNG layout and of JPEG, against the 8-bit
//! grayscale that Pillow's `convert("L")` makes of the same file.

mod common;

use chexvision_vision::{decode_gray8, DecodeLimits, VisionError};
use common::{compare, fixture_path, load};

fn decode_fixture(name: &str) -> Result<chexvision_vision::GrayImage8, VisionError> {
    let bytes = std::fs::read(fixture_path(name))
        .unwrap_or_else(|e| panic!("read {name}: {e} (run scripts/make_vision_fixtures.py)"));
    decode_gray8(&bytes, &DecodeLimits::default())
}

#[test]
fn png_layouts_match_pillow_exactly() -> Result<(), VisionError> {
    for name in [
        "dec_rgb",
        "dec_rgba",
        "dec_palette",
        "dec_graya",
        "dec_gray16",
        "dec_rgb16",
    ] {
        let got = decode_fixture(&format!("{name}.png"))?;
        let want = load(&format!("{name}_L.png"));
        assert_eq!((got.width, got.height), (40, 30), "{name}");
        let (max, mean, _) = compare(&got, &want);
        assert_eq!(max, 0, "{name}: max abs error {max}, mean {mean}");
    }
    Ok(())
}

#[test]
fn jpeg_close_to_pillow() -> Result<(), VisionError> {
    // Different JPEG decoders (zune-jpeg here, libjpeg in Pillow) may differ
    // by a level or so in IDCT rounding and chroma upsampling.
    for (name, reference) in [
        ("dec_gray.jpg", "dec_gray_jpg_L.png"),
        ("dec_rgb.jpg", "dec_rgb_jpg_L.png"),
        ("dec_gray_progressive.jpg", "dec_gray_progressive_jpg_L.png"),
    ] {
        let got = decode_fixture(name)?;
        let want = load(reference);
        let (max, mean, within1) = compare(&got, &want);
        println!("jpeg {name}: max {max}, mean {mean:.4}, within ±1 {within1:.4}");
        assert!(mean <= 1.0, "{name}: mean abs error {mean}");
    }
    Ok(())
}

#[test]
fn limits_are_checked_on_valid_images() -> Result<(), VisionError> {
    let bytes = std::fs::read(fixture_path("xray_a.png"))
        .unwrap_or_else(|e| panic!("read xray_a.png: {e}"));
    let tight_pixels = DecodeLimits {
        max_pixels: 256 * 256 - 1,
        ..DecodeLimits::default()
    };
    assert_eq!(
        decode_gray8(&bytes, &tight_pixels),
        Err(VisionError::TooLarge {
            width: 256,
            height: 256,
            max_pixels: 256 * 256 - 1
        })
    );
    let exact = DecodeLimits {
        max_pixels: 256 * 256,
        max_bytes: bytes.len() as u64,
    };
    assert_eq!(decode_gray8(&bytes, &exact)?.pixels.len(), 256 * 256);
    let tight_bytes = DecodeLimits {
        max_bytes: bytes.len() as u64 - 1,
        ..DecodeLimits::default()
    };
    assert!(matches!(
        decode_gray8(&bytes, &tight_bytes),
        Err(VisionError::TooManyBytes { .. })
    ));
    Ok(())
}
