//! DICOM decoding against references computed in numpy by
//! `scripts/make_dicom_fixtures.py` (rescale → VOI → 8-bit, MONOCHROME1
//! inverted; PS3.3 formulas, rounding half up), and DICOM's failure modes.
//!
//! Tolerances: native, RLE and JPEG Lossless fixtures must match exactly
//! (max abs difference 0): the decoder and the script do the same float64
//! operations in the same order and round the same way. The JPEG Baseline
//! fixture's reference is Pillow's (libjpeg) decoding of the frame and the
//! decoder here uses zune-jpeg, which may differ by a level or two in IDCT
//! rounding (as for plain JPEG in tests/decode.rs); the window there has a
//! gain of about 1, so max abs difference ≤ 2 is asserted; the same holds
//! for the RGB JPEG stored without colour transform (Pillow honours its
//! Adobe marker; applying the YCbCr transform to it would be off by far
//! more). JPEG 2000 and JPEG-LS fixtures were encoded by pydicom's
//! plugins (OpenJPEG through pylibjpeg-openjpeg, CharLS through pyjpegls):
//! lossless ones must match the values written exactly; the lossy ones'
//! references are pydicom's decoding of the same files through the same
//! 8-bit mapping, exact for JPEG-LS near-lossless (integer arithmetic) and
//! within 1 for lossy JPEG 2000 (its 9/7 wavelet is floating point, and
//! the OpenJPEG built here need not be the plugin's release).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

use chexvision_vision::{decode_gray8, DecodeLimits, GrayImage8, VisionError};
use common::{
    compare, dcm_element, dcm_file, dcm_header, dcm_item, dcm_mono8_attributes, dcm_text, dcm_us,
    fixture_path, load, tiny_dicom, EXPLICIT_VR_LE,
};

/// Records the largest single allocation, so tests can show that a header
/// claiming a huge image or element allocates nothing of that size.
struct LargestAllocation;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Runs `f` and returns what it gave and the largest allocation made (by
/// any thread; the other tests here allocate far less than the bounds
/// asserted).
fn with_largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.store(0, Ordering::SeqCst);
    let out = f();
    (out, LARGEST.load(Ordering::SeqCst))
}

fn dicom(name: &str) -> Vec<u8> {
    let path = fixture_path(&format!("dicom/{name}.dcm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "read {}: {e} (run scripts/make_dicom_fixtures.py)",
            path.display()
        )
    })
}

fn decode(bytes: &[u8]) -> Result<GrayImage8, VisionError> {
    decode_gray8(bytes, &DecodeLimits::default())
}

/// The decodable fixtures, their size and the max abs difference allowed.
const FIXTURES: &[(&str, (u32, u32), u8)] = &[
    ("mono2_u16_bs12_window", (64, 48), 0),
    ("mono2_u16_minmax_implicit", (64, 48), 0),
    ("mono1_u16_window", (64, 48), 0),
    ("ct_s16_rescale_window", (64, 48), 0),
    ("mono2_s12_slope_linear_exact", (64, 48), 0),
    ("mono2_u8_sigmoid", (64, 48), 0),
    ("mono2_u16_multiframe", (40, 30), 0),
    ("mono2_u16_voi_lut", (64, 48), 0),
    ("mono2_u16_rle", (64, 48), 0),
    ("rgb_u8_planar", (32, 24), 0),
    ("rgb_u8_rle", (32, 24), 0),
    ("mono2_u16_bs12_jpeg_lossless", (64, 48), 0),
    ("mono2_u8_jpeg_baseline", (64, 48), 2),
    ("rgb_u8_jpeg_baseline_rgb", (32, 24), 2),
    ("mono2_u16_bs12_j2k_lossless", (64, 48), 0),
    ("mono2_s16_j2k_lossless_rescale", (64, 48), 0),
    ("mono2_u8_j2k_lossless", (64, 48), 0),
    ("rgb_u8_j2k_lossless", (64, 48), 0),
    ("mono2_u16_bs12_j2k_lossy", (64, 48), 1),
    ("mono2_u16_bs12_jpegls_lossless", (64, 48), 0),
    ("mono2_u8_jpegls_lossless", (64, 48), 0),
    ("mono2_u16_bs12_jpegls_near", (64, 48), 0),
];

#[test]
fn fixtures_match_the_numpy_reference() -> Result<(), VisionError> {
    for &(name, size, tolerance) in FIXTURES {
        let got = decode(&dicom(name))?;
        let want = load(&format!("dicom/{name}.png"));
        assert_eq!((got.width, got.height), size, "{name}");
        let (max, mean, _) = compare(&got, &want);
        println!("{name:32} max abs diff {max}, mean {mean:.4}");
        assert!(
            max <= tolerance,
            "{name}: max abs diff {max} (allowed {tolerance}), mean {mean:.4}"
        );
        // Not degenerate: the reference uses most of the grey range.
        let (lo, hi) = want
            .pixels
            .iter()
            .fold((255u8, 0u8), |(lo, hi), &p| (lo.min(p), hi.max(p)));
        assert!(hi - lo > 100, "{name}: reference spans only {lo}..{hi}");
    }
    Ok(())
}

#[test]
fn monochrome1_is_displayed_like_monochrome2() -> Result<(), VisionError> {
    // The MONOCHROME1 fixture stores 4095 - v; shown, dense tissue must be
    // bright as in MONOCHROME2: the body centre is brighter than the
    // corner (air).
    let img = decode(&dicom("mono1_u16_window"))?;
    let centre = img.get(32, 40).unwrap_or(0);
    let corner = img.get(0, 0).unwrap_or(255);
    assert!(centre > corner, "centre {centre}, corner {corner}");
    Ok(())
}

#[test]
fn unsupported_transfer_syntax_is_named() {
    let htj2k = dcm_file("1.2.840.10008.1.2.4.201", &dcm_mono8_attributes(2, 2));
    match decode(&htj2k) {
        Err(VisionError::UnsupportedFormat { detail }) => {
            assert!(detail.contains("1.2.840.10008.1.2.4.201"), "{detail}");
            assert!(
                detail.contains("High-Throughput JPEG 2000 Image Compression (Lossless Only)"),
                "{detail}"
            );
            assert!(
                detail.contains("JPEG-LS (lossless and near-lossless)"),
                "{detail}"
            );
        }
        other => panic!("want UnsupportedFormat, got {other:?}"),
    }
    // A deflated data set cannot even be walked: named too.
    let deflated = dcm_file("1.2.840.10008.1.2.1.99", &[0x78, 0x9C, 0x03, 0x00]);
    assert!(matches!(
        decode(&deflated),
        Err(VisionError::UnsupportedFormat { detail })
            if detail.contains("Deflated Explicit VR Little Endian")
    ));
}

/// `fixture` with the value of the explicit VR US element (0028,eeee)
/// replaced.
fn with_us(mut bytes: Vec<u8>, element: u16, value: u16) -> Vec<u8> {
    let [e0, e1] = element.to_le_bytes();
    let pattern = [0x28, 0x00, e0, e1, b'U', b'S', 2, 0];
    let pos = bytes
        .windows(8)
        .position(|w| w == pattern)
        .unwrap_or_else(|| panic!("no (0028,{element:04X}) US element"));
    bytes[pos + 8..pos + 10].copy_from_slice(&value.to_le_bytes());
    bytes
}

#[test]
fn huge_rows_and_columns_are_refused_before_allocating() {
    let huge = with_us(
        with_us(dicom("mono2_u16_bs12_window"), 0x0010, 50_000),
        0x0011,
        50_000,
    );
    let (result, largest) = with_largest_allocation(|| decode(&huge));
    assert_eq!(
        result,
        Err(VisionError::TooLarge {
            width: 50_000,
            height: 50_000,
            max_pixels: 50_000_000
        })
    );
    assert!(largest < 1 << 20, "largest allocation {largest} bytes");

    // Implicit VR: Rows/Columns have a 4-byte length and no VR.
    let mut implicit = dicom("mono2_u16_minmax_implicit");
    for element in [0x10u8, 0x11] {
        let pattern = [0x28, 0x00, element, 0x00, 2, 0, 0, 0];
        let pos = implicit
            .windows(8)
            .position(|w| w == pattern)
            .unwrap_or_else(|| panic!("no (0028,00{element:02X})"));
        implicit[pos + 8..pos + 10].copy_from_slice(&50_000u16.to_le_bytes());
    }
    assert!(matches!(
        decode(&implicit),
        Err(VisionError::TooLarge {
            width: 50_000,
            height: 50_000,
            ..
        })
    ));

    // A valid file over a tighter limit.
    let tight = DecodeLimits {
        max_pixels: 64 * 48 - 1,
        ..DecodeLimits::default()
    };
    assert_eq!(
        decode_gray8(&dicom("mono2_u16_rle"), &tight),
        Err(VisionError::TooLarge {
            width: 64,
            height: 48,
            max_pixels: 64 * 48 - 1
        })
    );
}

#[test]
fn a_jpeg_frame_larger_than_rows_and_columns_is_refused_before_decoding() {
    // The baseline fixture (64 x 48) with its frame header declaring
    // 5,000 x 4,000: within the pixel limit, so only the comparison with
    // Rows × Columns stops it, and before the decoder allocates for it.
    let mut file = dicom("mono2_u8_jpeg_baseline");
    let sof = file
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline start-of-frame marker");
    assert_eq!(&file[sof + 5..sof + 9], &[0, 48, 0, 64], "48 lines of 64");
    file[sof + 5..sof + 9].copy_from_slice(&[0x0F, 0xA0, 0x13, 0x88]);
    let (result, largest) = with_largest_allocation(|| decode(&file));
    match result {
        Err(VisionError::Corrupt { format, detail }) => {
            assert_eq!(format, "DICOM");
            assert!(
                detail
                    .contains("JPEG frame header declares 5000x4000, but Rows × Columns is 64x48"),
                "{detail}"
            );
        }
        other => panic!("want Corrupt, got {other:?}"),
    }
    // 5,000 x 4,000 8-bit samples would be 20 MB.
    assert!(largest < 1 << 20, "largest allocation {largest} bytes");

    // No frame header before the scan: corrupt, said so.
    let mut headless = dicom("mono2_u8_jpeg_baseline");
    headless[sof + 1] = 0xFE; // a comment marker (COM) instead of SOF0
    match decode(&headless) {
        Err(VisionError::Corrupt { detail, .. }) => {
            assert!(detail.contains("no frame header"), "{detail}")
        }
        other => panic!("want Corrupt, got {other:?}"),
    }
}

/// Where the first fragment after the basic offset table lies in an
/// encapsulated fixture: the bytes of its item value.
fn first_fragment(file: &[u8]) -> std::ops::Range<usize> {
    let pixel_data = [
        0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ];
    let start = file
        .windows(pixel_data.len())
        .rposition(|w| w == pixel_data)
        .expect("encapsulated Pixel Data")
        + pixel_data.len();
    let item_len =
        |at: usize| u32::from_le_bytes(file[at + 4..at + 8].try_into().unwrap()) as usize;
    let fragment = start + 8 + item_len(start); // after the offset table
    fragment + 8..fragment + 8 + item_len(fragment)
}

/// `file` with its first fragment replaced by `fragment` (padded to even).
fn with_fragment(file: &[u8], fragment: &[u8]) -> Vec<u8> {
    let range = first_fragment(file);
    let mut value = fragment.to_vec();
    if value.len() % 2 == 1 {
        value.push(0);
    }
    let mut out = file[..range.start - 4].to_vec();
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(&value);
    out.extend_from_slice(&file[range.end..]);
    out
}

#[test]
fn jpeg2000_and_jpegls_frames_larger_than_rows_and_columns_are_refused_before_decoding() {
    // JPEG 2000: Xsiz and Ysiz of the SIZ marker (offsets 8 and 12 of the
    // codestream) say 5,000 x 4,000 in a 64 x 48 file.
    let file = dicom("mono2_u16_bs12_j2k_lossless");
    let mut codestream = file[first_fragment(&file)].to_vec();
    assert_eq!(&codestream[..4], &[0xFF, 0x4F, 0xFF, 0x51], "SOC, SIZ");
    codestream[8..12].copy_from_slice(&5000u32.to_be_bytes());
    codestream[12..16].copy_from_slice(&4000u32.to_be_bytes());
    match decode(&with_fragment(&file, &codestream)) {
        Err(VisionError::Corrupt { detail, .. }) => assert!(
            detail.contains("JPEG 2000 codestream declares 5000x4000, but Rows × Columns is 64x48"),
            "{detail}"
        ),
        other => panic!("want Corrupt, got {other:?}"),
    }

    // JPEG-LS: the SOF55 header says 5,000 x 4,000; refused before CharLS
    // sizes its output (80 MB of 16-bit samples).
    let mut file = dicom("mono2_u16_bs12_jpegls_lossless");
    let sof = file
        .windows(2)
        .position(|w| w == [0xFF, 0xF7])
        .expect("a JPEG-LS start-of-frame marker");
    assert_eq!(&file[sof + 5..sof + 9], &[0, 48, 0, 64], "48 lines of 64");
    file[sof + 5..sof + 9].copy_from_slice(&[0x0F, 0xA0, 0x13, 0x88]);
    let (result, largest) = with_largest_allocation(|| decode(&file));
    match result {
        Err(VisionError::Corrupt { detail, .. }) => assert!(
            detail.contains("JPEG-LS frame header declares 5000x4000, but Rows × Columns is 64x48"),
            "{detail}"
        ),
        other => panic!("want Corrupt, got {other:?}"),
    }
    assert!(largest < 1 << 20, "largest allocation {largest} bytes");
}

#[test]
fn broken_jpeg2000_and_jpegls_frames_are_corrupt_and_say_why() {
    for name in [
        "mono2_u16_bs12_j2k_lossless",
        "mono2_u16_bs12_jpegls_lossless",
    ] {
        let file = dicom(name);
        let stream = file[first_fragment(&file)].to_vec();
        // Cut in half, keeping the DICOM structure intact around it.
        let half = with_fragment(&file, &stream[..stream.len() / 2]);
        match decode(&half) {
            Err(VisionError::Corrupt { format, detail }) => {
                assert_eq!(format, "DICOM");
                println!("{name} cut in half: {detail}");
                assert!(detail.starts_with("JPEG"), "{detail}");
            }
            other => panic!("{name} cut in half: want Corrupt, got {other:?}"),
        }
        // Every cut of the stream: an image or an error, never a panic.
        for cut in (0..stream.len()).step_by(97) {
            let _ = decode(&with_fragment(&file, &stream[..cut]));
        }
    }
    // Random bytes where a codestream should be.
    match decode(&dicom("unsupported_jpeg2000")) {
        Err(VisionError::Corrupt { detail, .. }) => {
            assert!(detail.contains("JPEG 2000"), "{detail}")
        }
        other => panic!("want Corrupt, got {other:?}"),
    }
}

#[test]
fn native_ybr_full_422_decodes_to_its_luma_plane() -> Result<(), VisionError> {
    // Y1 Y2 Cb Cr for each pair of pixels (PS3.3 C.7.6.3.1.2); the Pixel
    // Data is the file's last element, 64 x 48 x 2 bytes.
    let file = dicom("ybr_full_422_u8_native");
    let data = &file[file.len() - 64 * 48 * 2..];
    let luma: Vec<u8> = data.chunks_exact(4).flat_map(|g| [g[0], g[1]]).collect();
    let got = decode(&file)?;
    assert_eq!((got.width, got.height), (64, 48));
    assert_eq!(got.pixels, luma);
    let (lo, hi) = luma
        .iter()
        .fold((255, 0), |(lo, hi), &p| (p.min(lo), p.max(hi)));
    assert!(hi - lo > 100, "luma spans only {lo}..{hi}");

    // The YBR interpretations that exist only inside compressed streams
    // are valid names in an unsupported layout, not corruption.
    let mut ict = file.clone();
    let at = ict
        .windows(12)
        .position(|w| w == b"YBR_FULL_422")
        .expect("Photometric Interpretation");
    ict[at..at + 12].copy_from_slice(b"YBR_ICT     ");
    assert!(matches!(
        decode(&ict),
        Err(VisionError::UnsupportedFormat { detail }) if detail.contains("YBR_ICT")
    ));
    Ok(())
}

#[test]
fn element_claiming_gigabytes_allocates_nothing_of_the_kind() {
    // An OB element declaring 0xFFFFFFF0 bytes with 8 present (a general
    // DICOM parser may allocate the declared length first).
    let mut ds = dcm_mono8_attributes(4, 4);
    ds.extend(dcm_header(0x0009, 0x0010, b"OB", 0xFFFF_FFF0));
    ds.extend_from_slice(&[1; 8]);
    let file = dcm_file(EXPLICIT_VR_LE, &ds);
    let (result, largest) = with_largest_allocation(|| decode(&file));
    match result {
        Err(VisionError::Corrupt { format, detail }) => {
            assert_eq!(format, "DICOM");
            assert!(detail.contains("declares 4294967280 bytes"), "{detail}");
        }
        other => panic!("want Corrupt, got {other:?}"),
    }
    assert!(largest < 1 << 20, "largest allocation {largest} bytes");
}

#[test]
fn short_pixel_data_is_corrupt_and_says_so() {
    // Three frames declared, two present.
    let mut three = dicom("mono2_u16_multiframe");
    let pos = three
        .windows(8)
        .position(|w| w == [0x28, 0x00, 0x08, 0x00, b'I', b'S', 2, 0])
        .unwrap_or_else(|| panic!("no Number of Frames"));
    three[pos + 8..pos + 10].copy_from_slice(b"3 ");
    match decode(&three) {
        Err(VisionError::Corrupt { detail, .. }) => {
            assert!(
                detail.contains("Pixel Data holds 4800 bytes")
                    && detail.contains("30 × 40 × 3 × 1 × 2 = 7200"),
                "{detail}"
            );
        }
        other => panic!("want Corrupt, got {other:?}"),
    }
    // One row more than the data holds.
    let taller = with_us(dicom("mono2_u16_bs12_window"), 0x0010, 49);
    assert!(matches!(decode(&taller), Err(VisionError::Corrupt { .. })));
    // RLE: a frame that decodes to fewer pixels than Rows × Columns.
    let taller_rle = with_us(dicom("mono2_u16_rle"), 0x0010, 60);
    assert!(matches!(
        decode(&taller_rle),
        Err(VisionError::Corrupt { detail, .. }) if detail.contains("RLE segment")
    ));
}

#[test]
fn truncated_files_are_corrupt_at_every_cut() {
    for &(name, _, _) in FIXTURES {
        let bytes = dicom(name);
        for cut in 0..bytes.len() {
            let result = catch_unwind(AssertUnwindSafe(|| decode(&bytes[..cut])))
                .unwrap_or_else(|_| panic!("{name} cut at {cut}: panicked"));
            let ok = match cut {
                0 => matches!(result, Err(VisionError::Empty)),
                1..=128 => matches!(result, Err(VisionError::UnsupportedFormat { .. })),
                _ => matches!(result, Err(VisionError::Corrupt { .. })),
            };
            assert!(ok, "{name} cut at {cut} of {}: {result:?}", bytes.len());
        }
    }
    // The unsupported file: inside the meta group it is corrupt; once the
    // transfer syntax is read, unsupported.
    let bytes = dicom("unsupported_jpeg2000");
    for cut in 129..bytes.len() {
        let result = decode(&bytes[..cut]);
        assert!(
            matches!(
                result,
                Err(VisionError::Corrupt { .. } | VisionError::UnsupportedFormat { .. })
            ),
            "unsupported_jpeg2000 cut at {cut}: {result:?}"
        );
    }
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

/// Seeded byte flips and overwritten runs over every fixture, denser in
/// the header: a value or a typed error, never a panic.
#[test]
fn mutated_files_never_panic() {
    let mut panics = Vec::new();
    let mut outcomes = [0usize; 2];
    for &(name, _, _) in FIXTURES
        .iter()
        .chain(&[("unsupported_jpeg2000", (0, 0), 0)])
    {
        let original = dicom(name);
        let len = original.len();
        let noise = pseudo_random(4 * 600, 7 + len as u64);
        for (k, r) in noise.chunks(4).enumerate() {
            let mut v = original.clone();
            let at = usize::from(r[0]) << 8 | usize::from(r[1]);
            // Two thirds of the mutations in the first 1 KiB (the header).
            let pos = if k % 3 == 2 {
                at % len
            } else {
                at % len.min(1024)
            };
            if k % 4 == 0 {
                for (j, b) in v.iter_mut().skip(pos).take(6).enumerate() {
                    *b = r[2].wrapping_add(j as u8 * 37);
                }
            } else {
                v[pos] ^= r[2] | 1;
            }
            match catch_unwind(AssertUnwindSafe(|| decode(&v))) {
                Err(_) => panics.push(format!("{name} mutation {k}")),
                Ok(r) => {
                    if let Ok(img) = &r {
                        assert_eq!(
                            img.pixels.len() as u64,
                            u64::from(img.width) * u64::from(img.height)
                        );
                    }
                    outcomes[usize::from(r.is_ok())] += 1;
                }
            }
        }
    }
    println!("errors {}, decoded {}", outcomes[0], outcomes[1]);
    assert!(panics.is_empty(), "panicked on: {panics:?}");
}

#[test]
fn hand_made_corner_cases() {
    // A valid 8-bit file with min–max: 0..=15 becomes 0..=255 in steps of 17.
    let pixels: Vec<u8> = (0..16).collect();
    let img = decode(&tiny_dicom(4, 4, &pixels)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(img.pixels, (0..16).map(|v| v * 17).collect::<Vec<u8>>());

    // A flat image (min = max) is all 0.
    let img = decode(&tiny_dicom(2, 2, &[9; 4])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(img.pixels, [0; 4]);

    // Zero rows.
    assert!(matches!(
        decode(&tiny_dicom(0, 4, &[])),
        Err(VisionError::Corrupt { detail, .. }) if detail.contains("zero-sized")
    ));

    // No Pixel Data.
    let no_pixels = dcm_file(EXPLICIT_VR_LE, &dcm_mono8_attributes(2, 2));
    assert!(matches!(
        decode(&no_pixels),
        Err(VisionError::Corrupt { detail, .. }) if detail.contains("no Pixel Data")
    ));

    // Sequences nested deeper than the walk allows.
    let mut ds = Vec::new();
    for _ in 0..40 {
        ds.extend(dcm_header(0x0008, 0x1140, b"SQ", u32::MAX));
        ds.extend(dcm_item(0xE000, u32::MAX));
    }
    for _ in 0..40 {
        ds.extend(dcm_item(0xE00D, 0));
        ds.extend(dcm_item(0xE0DD, 0));
    }
    ds.extend(dcm_mono8_attributes(1, 1));
    ds.extend(dcm_element(0x7FE0, 0x0010, b"OB", &[0, 0]));
    assert!(matches!(
        decode(&dcm_file(EXPLICIT_VR_LE, &ds)),
        Err(VisionError::Corrupt { detail, .. }) if detail.contains("nested")
    ));

    // Sequences nested a few deep are stepped over.
    let mut ds = Vec::new();
    for _ in 0..4 {
        ds.extend(dcm_header(0x0008, 0x1140, b"SQ", u32::MAX));
        ds.extend(dcm_item(0xE000, u32::MAX));
    }
    ds.extend(dcm_text(0x0008, 0x1150, b"UI", "1.2.3"));
    for _ in 0..4 {
        ds.extend(dcm_item(0xE00D, 0));
        ds.extend(dcm_item(0xE0DD, 0));
    }
    ds.extend(dcm_mono8_attributes(1, 2));
    ds.extend(dcm_element(0x7FE0, 0x0010, b"OB", &[10, 20]));
    let img = decode(&dcm_file(EXPLICIT_VR_LE, &ds)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(img.pixels, [0, 255]);

    // Unsupported photometric interpretation and bit depth, by name.
    // (Of a repeated attribute the first wins, so PALETTE COLOR goes before
    // the MONOCHROME2 of the common attributes.)
    let mut ds = dcm_text(0x0028, 0x0004, b"CS", "PALETTE COLOR");
    ds.extend(dcm_mono8_attributes(1, 1));
    ds.extend(dcm_element(0x7FE0, 0x0010, b"OB", &[0, 0]));
    assert!(matches!(
        decode(&dcm_file(EXPLICIT_VR_LE, &ds)),
        Err(VisionError::UnsupportedFormat { detail }) if detail.contains("PALETTE COLOR")
    ));
    let mut ds = dcm_us(0x0028, 0x0100, 32);
    ds.extend(dcm_mono8_attributes(1, 1));
    ds.extend(dcm_element(0x7FE0, 0x0010, b"OB", &[0; 4]));
    assert!(matches!(
        decode(&dcm_file(EXPLICIT_VR_LE, &ds)),
        Err(VisionError::UnsupportedFormat { detail }) if detail.contains("Bits Allocated 32")
    ));

    // Encapsulated pixel data under a native transfer syntax.
    let mut ds = dcm_mono8_attributes(1, 1);
    ds.extend(dcm_header(0x7FE0, 0x0010, b"OB", u32::MAX));
    ds.extend(dcm_item(0xE000, 0));
    ds.extend(dcm_item(0xE000, 2));
    ds.extend_from_slice(&[1, 2]);
    ds.extend(dcm_item(0xE0DD, 0));
    assert!(matches!(
        decode(&dcm_file(EXPLICIT_VR_LE, &ds)),
        Err(VisionError::Corrupt { detail, .. }) if detail.contains("encapsulated")
    ));
}
