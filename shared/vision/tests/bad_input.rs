//! Hostile and corrupt inputs: each row names the error variant it must
//! give. None may panic.
//!
//! Decisions documented here:
//! * A complete PNG followed by trailing garbage decodes (bytes after IEND
//!   are ignored, as Pillow and libpng do).
//! * A truncated JPEG is an error (`Corrupt`), not a partly grey image.
//! * A DICOM file is recognised by `DICM` at byte 128 (or its start, when
//!   the input ends there); past that, truncation anywhere is `Corrupt`,
//!   and an element length beyond the end of the input is `Corrupt` before
//!   anything of that length is allocated.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use chexvision_vision::{decode_gray8, DecodeLimits, VisionError};
use common::{
    dcm_file, dcm_header, dcm_mono8_attributes, fixture_path, tiny_dicom, EXPLICIT_VR_LE,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Ok,
    Empty,
    TooManyBytes,
    TooLarge,
    Corrupt,
    Unsupported,
}

fn kind(r: &Result<chexvision_vision::GrayImage8, VisionError>) -> Expect {
    match r {
        Ok(_) => Expect::Ok,
        Err(VisionError::Empty) => Expect::Empty,
        Err(VisionError::TooManyBytes { .. }) => Expect::TooManyBytes,
        Err(VisionError::TooLarge { .. }) => Expect::TooLarge,
        Err(VisionError::Corrupt { .. }) => Expect::Corrupt,
        Err(VisionError::UnsupportedFormat { .. }) => Expect::Unsupported,
        Err(other) => panic!("unexpected variant {other:?}"),
    }
}

const PNG_SIG: &[u8] = b"\x89PNG\r\n\x1a\n";

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc_in = kind.to_vec();
    crc_in.extend_from_slice(data);
    out.extend_from_slice(&crc32(&crc_in).to_be_bytes());
    out
}

fn ihdr(width: u32, height: u32, depth: u8, colour: u8) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&width.to_be_bytes());
    d.extend_from_slice(&height.to_be_bytes());
    d.extend_from_slice(&[depth, colour, 0, 0, 0]);
    chunk(b"IHDR", &d)
}

/// zlib stream of `data` as one stored (uncompressed) deflate block.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01, 0x01];
    let len = data.len() as u16;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

/// A valid 8-bit grayscale PNG of `w` x `h` built by hand.
fn tiny_png(w: u32, h: u32) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0); // filter: none
        raw.extend((0..w).map(|x| ((x * 16 + y * 8) % 256) as u8));
    }
    let mut out = PNG_SIG.to_vec();
    out.extend(ihdr(w, h, 8, 0));
    out.extend(chunk(b"IDAT", &zlib_stored(&raw)));
    out.extend(chunk(b"IEND", &[]));
    out
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

fn pseudo_random(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 56) as u8
        })
        .collect()
}

/// The JPEG fixture with the SOF0 height and width fields replaced.
fn jpeg_with_sof_dims(height: u16, width: u16) -> Vec<u8> {
    let mut jpg = fixture("dec_gray.jpg");
    let pos = jpg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .unwrap_or_else(|| panic!("fixture has no SOF0"));
    // FF C0, length (2), precision (1), height (2), width (2).
    jpg[pos + 5..pos + 7].copy_from_slice(&height.to_be_bytes());
    jpg[pos + 7..pos + 9].copy_from_slice(&width.to_be_bytes());
    jpg
}

/// 8-bit monochrome attributes for `rows` x `cols`, then encapsulated
/// Pixel Data whose one fragment is a JPEG-LS stream header declaring
/// `frame_rows` x `frame_cols` (SOI, SOF55, then EOI: no scan, one pad
/// byte).
fn jpegls_in_dicom(rows: u16, cols: u16, frame_rows: u16, frame_cols: u16) -> Vec<u8> {
    let mut jls = vec![0xFF, 0xD8, 0xFF, 0xF7, 0, 11, 8];
    jls.extend_from_slice(&frame_rows.to_be_bytes());
    jls.extend_from_slice(&frame_cols.to_be_bytes());
    jls.extend_from_slice(&[1, 1, 0x11, 0, 0xFF, 0xD9, 0]); // even length
    let mut ds = dcm_mono8_attributes(rows, cols);
    ds.extend(dcm_header(0x7FE0, 0x0010, b"OB", u32::MAX));
    ds.extend(common::dcm_item(0xE000, 0));
    ds.extend(common::dcm_item(0xE000, jls.len() as u32));
    ds.extend_from_slice(&jls);
    ds.extend(common::dcm_item(0xE0DD, 0));
    ds
}

fn cases() -> Vec<(&'static str, Vec<u8>, DecodeLimits, Expect)> {
    let d = DecodeLimits::default();
    let png = fixture("xray_c.png");
    let jpg = fixture("dec_gray.jpg");
    let mut rows = vec![
        ("empty", vec![], d, Expect::Empty),
        (
            "random bytes",
            pseudo_random(4096, 7),
            d,
            Expect::Unsupported,
        ),
        (
            "text file",
            b"patient_id,label\n1,Effusion\n".to_vec(),
            d,
            Expect::Unsupported,
        ),
        ("PNG signature only", PNG_SIG.to_vec(), d, Expect::Corrupt),
        (
            "truncated IHDR",
            tiny_png(4, 4)[..20].to_vec(),
            d,
            Expect::Corrupt,
        ),
        (
            "truncated IDAT",
            png[..png.len() / 2].to_vec(),
            d,
            Expect::Corrupt,
        ),
        (
            "GIF signature",
            b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(),
            d,
            Expect::Unsupported,
        ),
        (
            "BMP signature",
            b"BM\x3a\x00\x00\x00\x00\x00\x00\x00\x36\x00".to_vec(),
            d,
            Expect::Unsupported,
        ),
        (
            "TIFF signature (LE)",
            b"II*\x00\x08\x00\x00\x00".to_vec(),
            d,
            Expect::Unsupported,
        ),
        (
            "TIFF signature (BE)",
            b"MM\x00*\x00\x00\x00\x08".to_vec(),
            d,
            Expect::Unsupported,
        ),
        (
            "WebP signature",
            b"RIFF\x24\x00\x00\x00WEBPVP8 ".to_vec(),
            d,
            Expect::Unsupported,
        ),
        ("JPEG SOI only", vec![0xFF, 0xD8], d, Expect::Corrupt),
        (
            "JPEG SOI + EOI",
            vec![0xFF, 0xD8, 0xFF, 0xD9],
            d,
            Expect::Corrupt,
        ),
        (
            "JPEG huge SOF 65535x65535",
            jpeg_with_sof_dims(65535, 65535),
            d,
            Expect::TooLarge,
        ),
        (
            "JPEG zero-height SOF",
            jpeg_with_sof_dims(0, 40),
            d,
            Expect::Corrupt,
        ),
        (
            "truncated JPEG",
            jpg[..jpg.len() / 2].to_vec(),
            d,
            Expect::Corrupt,
        ),
        (
            "over max_bytes",
            png.clone(),
            DecodeLimits {
                max_bytes: 100,
                ..d
            },
            Expect::TooManyBytes,
        ),
        ("valid hand-made PNG", tiny_png(5, 3), d, Expect::Ok),
        (
            "PNG + trailing garbage (decodes)",
            [png.clone(), pseudo_random(300, 3)].concat(),
            d,
            Expect::Ok,
        ),
    ];

    // IHDR claiming 50,000 x 50,000 with a correct CRC.
    let mut huge = PNG_SIG.to_vec();
    huge.extend(ihdr(50_000, 50_000, 8, 0));
    huge.extend(chunk(b"IDAT", &zlib_stored(&[0; 64])));
    huge.extend(chunk(b"IEND", &[]));
    rows.push(("IHDR 50000x50000", huge, d, Expect::TooLarge));

    // 16-bit RGBA (8 bytes/pixel) at 7000x7000 = 49 M pixels: under the
    // pixel limit, but over a tighter one.
    let mut rgba16 = PNG_SIG.to_vec();
    rgba16.extend(ihdr(7000, 7000, 16, 6));
    rgba16.extend(chunk(b"IEND", &[]));
    let tight = DecodeLimits {
        max_pixels: 1_000_000,
        ..d
    };
    rows.push((
        "IHDR 7000x7000 RGBA16, 1 MP limit",
        rgba16,
        tight,
        Expect::TooLarge,
    ));

    let mut zero_w = PNG_SIG.to_vec();
    zero_w.extend(ihdr(0, 10, 8, 0));
    zero_w.extend(chunk(b"IEND", &[]));
    rows.push(("IHDR zero width", zero_w, d, Expect::Corrupt));

    let mut bad_depth = PNG_SIG.to_vec();
    bad_depth.extend(ihdr(4, 4, 3, 0));
    bad_depth.extend(chunk(b"IEND", &[]));
    rows.push(("IHDR bit depth 3", bad_depth, d, Expect::Corrupt));

    let mut bad_crc = tiny_png(5, 3);
    bad_crc[29] ^= 0xFF; // last byte of the IHDR CRC
    rows.push(("IHDR bad CRC", bad_crc, d, Expect::Corrupt));

    let mut bad_zlib = PNG_SIG.to_vec();
    bad_zlib.extend(ihdr(8, 8, 8, 0));
    bad_zlib.extend(chunk(b"IDAT", &pseudo_random(50, 9)));
    bad_zlib.extend(chunk(b"IEND", &[]));
    rows.push(("IDAT garbage zlib", bad_zlib, d, Expect::Corrupt));

    let mut short_data = PNG_SIG.to_vec();
    short_data.extend(ihdr(8, 8, 8, 0));
    short_data.extend(chunk(b"IDAT", &zlib_stored(&[0; 20])));
    short_data.extend(chunk(b"IEND", &[]));
    rows.push(("IDAT too little pixel data", short_data, d, Expect::Corrupt));

    let mut no_idat = PNG_SIG.to_vec();
    no_idat.extend(ihdr(8, 8, 8, 0));
    no_idat.extend(chunk(b"IEND", &[]));
    rows.push(("no IDAT", no_idat, d, Expect::Corrupt));

    let mut bad_filter = PNG_SIG.to_vec();
    bad_filter.extend(ihdr(2, 2, 8, 0));
    bad_filter.extend(chunk(b"IDAT", &zlib_stored(&[9, 1, 2, 9, 3, 4])));
    bad_filter.extend(chunk(b"IEND", &[]));
    rows.push(("unknown row filter type", bad_filter, d, Expect::Corrupt));

    let mut palette_no_plte = PNG_SIG.to_vec();
    palette_no_plte.extend(ihdr(2, 2, 8, 3));
    palette_no_plte.extend(chunk(b"IDAT", &zlib_stored(&[0, 0, 1, 0, 1, 0])));
    palette_no_plte.extend(chunk(b"IEND", &[]));
    rows.push((
        "palette PNG without PLTE",
        palette_no_plte,
        d,
        Expect::Corrupt,
    ));

    // DICOM.
    let rle = fixture("dicom/mono2_u16_rle.dcm");
    let native = fixture("dicom/ct_s16_rescale_window.dcm");
    let mut dicm_only = vec![0u8; 128];
    dicm_only.extend_from_slice(b"DICM");
    let mut gigabytes = dcm_mono8_attributes(4, 4);
    gigabytes.extend(dcm_header(0x0009, 0x0010, b"OB", 0xFFFF_FFF0));
    gigabytes.extend_from_slice(&[0; 8]);
    rows.extend([
        (
            "DICOM valid hand-made 8-bit",
            tiny_dicom(3, 5, &[7; 15]),
            d,
            Expect::Ok,
        ),
        ("DICOM valid RLE fixture", rle.clone(), d, Expect::Ok),
        (
            "DICOM JPEG 2000 valid fixture",
            fixture("dicom/mono2_u16_bs12_j2k_lossless.dcm"),
            d,
            Expect::Ok,
        ),
        (
            "DICOM JPEG 2000 with random bytes for a codestream",
            fixture("dicom/unsupported_jpeg2000.dcm"),
            d,
            Expect::Corrupt,
        ),
        (
            "DICOM JPEG-LS valid fixture",
            fixture("dicom/mono2_u16_bs12_jpegls_near.dcm"),
            d,
            Expect::Ok,
        ),
        (
            "DICOM JPEG-LS with a 16 x 16 frame in a 4 x 4 file",
            dcm_file("1.2.840.10008.1.2.4.80", &jpegls_in_dicom(4, 4, 16, 16)),
            d,
            Expect::Corrupt,
        ),
        (
            "DICOM native YBR_FULL_422",
            fixture("dicom/ybr_full_422_u8_native.dcm"),
            d,
            Expect::Ok,
        ),
        (
            "DICOM HTJ2K (unsupported syntax)",
            dcm_file("1.2.840.10008.1.2.4.202", &dcm_mono8_attributes(2, 2)),
            d,
            Expect::Unsupported,
        ),
        (
            "DICOM deflated (unsupported syntax)",
            dcm_file("1.2.840.10008.1.2.1.99", &[0x78, 0x9C, 0x03, 0x00]),
            d,
            Expect::Unsupported,
        ),
        (
            "DICOM Rows/Columns 50000x50000",
            tiny_dicom(50_000, 50_000, &[0; 16]),
            d,
            Expect::TooLarge,
        ),
        ("DICOM preamble + DICM only", dicm_only, d, Expect::Corrupt),
        (
            "DICOM cut inside DICM",
            rle[..130].to_vec(),
            d,
            Expect::Corrupt,
        ),
        (
            "DICOM truncated in the file meta",
            rle[..150].to_vec(),
            d,
            Expect::Corrupt,
        ),
        (
            "DICOM truncated RLE Pixel Data",
            rle[..rle.len() - 100].to_vec(),
            d,
            Expect::Corrupt,
        ),
        (
            "DICOM truncated native Pixel Data",
            native[..native.len() / 2].to_vec(),
            d,
            Expect::Corrupt,
        ),
        (
            "DICOM Pixel Data shorter than Rows x Columns",
            tiny_dicom(4, 4, &[0; 12]),
            d,
            Expect::Corrupt,
        ),
        (
            "DICOM element claiming 4 GiB",
            dcm_file(EXPLICIT_VR_LE, &gigabytes),
            d,
            Expect::Corrupt,
        ),
        (
            "DICOM over max_bytes",
            native,
            DecodeLimits {
                max_bytes: 1000,
                ..d
            },
            Expect::TooManyBytes,
        ),
    ]);

    rows
}

#[test]
fn bad_inputs_give_their_error_and_never_panic() {
    let rows = cases();
    assert!(rows.len() >= 15);
    let mut failures = Vec::new();
    for (name, bytes, limits, want) in rows {
        let outcome = catch_unwind(AssertUnwindSafe(|| decode_gray8(&bytes, &limits)));
        match outcome {
            Err(_) => failures.push(format!("{name}: PANICKED")),
            Ok(result) => {
                let got = kind(&result);
                println!(
                    "{name:40} -> {result:?}",
                    result = result.as_ref().map(|i| (i.width, i.height))
                );
                if got != want {
                    failures.push(format!(
                        "{name}: want {want:?}, got {result:?}",
                        result = result.map(|i| (i.width, i.height))
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

#[test]
fn too_large_names_the_dimensions() {
    let mut huge = PNG_SIG.to_vec();
    huge.extend(ihdr(50_000, 50_000, 8, 0));
    huge.extend(chunk(b"IEND", &[]));
    assert_eq!(
        decode_gray8(&huge, &DecodeLimits::default()),
        Err(VisionError::TooLarge {
            width: 50_000,
            height: 50_000,
            max_pixels: 50_000_000
        })
    );
}

/// Seeded mutations of valid files (truncations, byte flips, overwritten
/// runs): whatever comes out, it must be `Ok` or a typed error, never a
/// panic.
#[test]
fn mutated_files_never_panic() {
    let limits = DecodeLimits::default();
    let mut panics = Vec::new();
    for name in [
        "xray_c.png",
        "dec_palette.png",
        "dec_gray16.png",
        "dec_rgb.jpg",
        "dec_gray_progressive.jpg",
        "dicom/mono2_u16_rle.dcm",
        "dicom/ct_s16_rescale_window.dcm",
        "dicom/mono2_u16_bs12_j2k_lossless.dcm",
        "dicom/mono2_u16_bs12_j2k_lossy.dcm",
        "dicom/rgb_u8_j2k_lossless.dcm",
        "dicom/mono2_u16_bs12_jpegls_lossless.dcm",
        "dicom/mono2_u16_bs12_jpegls_near.dcm",
        "dicom/rgb_u8_jpeg_baseline_rgb.dcm",
    ] {
        let original = fixture(name);
        let mut variants: Vec<Vec<u8>> = Vec::new();
        let len = original.len();
        for i in 1..48 {
            variants.push(original[..len * i / 48].to_vec());
        }
        let noise = pseudo_random(4 * 300, 99);
        for (k, r) in noise.chunks(4).enumerate() {
            let mut v = original.clone();
            let pos = (usize::from(r[0]) << 8 | usize::from(r[1])) % len;
            if k % 3 == 0 {
                // overwrite a run of 8 bytes
                for (j, b) in v.iter_mut().skip(pos).take(8).enumerate() {
                    *b = r[2].wrapping_add(j as u8);
                }
            } else {
                v[pos] ^= r[2] | 1;
            }
            variants.push(v);
        }
        for (i, v) in variants.iter().enumerate() {
            if catch_unwind(AssertUnwindSafe(|| {
                let r = decode_gray8(v, &limits);
                kind(&r)
            }))
            .is_err()
            {
                panics.push(format!("{name} variant {i}"));
            }
        }
    }
    assert!(panics.is_empty(), "panicked on: {panics:?}");
}
