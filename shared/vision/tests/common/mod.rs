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

// ---------------------------------------------------------------------------
// Hand-made DICOM Part 10 files (explicit VR little endian unless the
// transfer syntax says otherwise; the callers pick the VRs).

pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

fn has_long_length(vr: &[u8; 2]) -> bool {
    matches!(
        vr,
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
    )
}

/// One explicit VR little-endian element with a defined length.
pub fn dcm_element(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(vr);
    if has_long_length(vr) {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(value);
    out
}

/// An explicit VR element header with an arbitrary (long-form) length and
/// no value.
pub fn dcm_header(group: u16, element: u16, vr: &[u8; 2], len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(vr);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out
}

/// An item or delimitation tag (FFFE,xxxx) with its length.
pub fn dcm_item(element: u16, len: u32) -> Vec<u8> {
    let mut out = vec![0xFE, 0xFF];
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out
}

pub fn dcm_us(group: u16, element: u16, v: u16) -> Vec<u8> {
    dcm_element(group, element, b"US", &v.to_le_bytes())
}

/// A text value padded to an even length with a space (or NUL for UIDs).
pub fn dcm_text(group: u16, element: u16, vr: &[u8; 2], s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(if vr == b"UI" { 0 } else { b' ' });
    }
    dcm_element(group, element, vr, &v)
}

/// Preamble, `DICM`, a file meta group naming `transfer_syntax`, then
/// `dataset` as given.
pub fn dcm_file(transfer_syntax: &str, dataset: &[u8]) -> Vec<u8> {
    let mut meta = Vec::new();
    meta.extend(dcm_element(0x0002, 0x0001, b"OB", &[0, 1]));
    meta.extend(dcm_text(0x0002, 0x0002, b"UI", "1.2.840.10008.5.1.4.1.1.7"));
    meta.extend(dcm_text(0x0002, 0x0003, b"UI", "2.25.42"));
    meta.extend(dcm_text(0x0002, 0x0010, b"UI", transfer_syntax));
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    out.extend(dcm_element(
        0x0002,
        0x0000,
        b"UL",
        &(meta.len() as u32).to_le_bytes(),
    ));
    out.extend(meta);
    out.extend_from_slice(dataset);
    out
}

/// The image attributes of an 8-bit MONOCHROME2 image, explicit VR.
pub fn dcm_mono8_attributes(rows: u16, cols: u16) -> Vec<u8> {
    let mut ds = Vec::new();
    ds.extend(dcm_us(0x0028, 0x0002, 1));
    ds.extend(dcm_text(0x0028, 0x0004, b"CS", "MONOCHROME2"));
    ds.extend(dcm_us(0x0028, 0x0010, rows));
    ds.extend(dcm_us(0x0028, 0x0011, cols));
    ds.extend(dcm_us(0x0028, 0x0100, 8));
    ds.extend(dcm_us(0x0028, 0x0101, 8));
    ds.extend(dcm_us(0x0028, 0x0102, 7));
    ds.extend(dcm_us(0x0028, 0x0103, 0));
    ds
}

/// A valid 8-bit MONOCHROME2 DICOM of `rows` x `cols` with `pixels` as
/// its Pixel Data (explicit VR little endian).
pub fn tiny_dicom(rows: u16, cols: u16, pixels: &[u8]) -> Vec<u8> {
    let mut ds = dcm_mono8_attributes(rows, cols);
    ds.extend(dcm_element(0x7FE0, 0x0010, b"OB", pixels));
    dcm_file(EXPLICIT_VR_LE, &ds)
}
