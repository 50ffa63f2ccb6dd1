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

/// A 12-bit image in a 16-bit grey PNG, written three ways exporters do:
/// scaled to 16 bits with an `sBIT` of 12 (as the PNG specification
/// says), unscaled (0..4095) without `sBIT`, and unscaled with `sBIT` 12.
/// Each must decode to the same 8-bit image the fixture script computes
/// (scripts/make_png16_fixtures.py), using the 12-bit range: a plain
/// `>> 8` would leave the unscaled ones at most 16 grey levels.
#[test]
fn twelve_bit_grey_pngs_keep_their_contrast() -> Result<(), VisionError> {
    for name in ["gray16_sbit12", "gray16_raw12", "gray16_raw12_sbit12"] {
        let got = decode_fixture(&format!("png16/{name}.png"))?;
        let want = load(&format!("png16/{name}.expected.png"));
        assert_eq!((got.width, got.height), (64, 48), "{name}");
        let (max, mean, _) = compare(&got, &want);
        assert_eq!(max, 0, "{name}: max abs error {max}, mean {mean}");
        let mut levels = got.pixels.clone();
        levels.sort_unstable();
        levels.dedup();
        assert!(levels.len() > 200, "{name}: {} grey levels", levels.len());
    }
    Ok(())
}
