//! Measurement, not a test (ignored by default): the Rust side of
//! `scripts/bench_vision.sh`, which times Pillow and OpenCV on the same files
//! in the same run. Single thread, milliseconds per image.
//!
//!   BENCH_VISION_DIR=/path/to/pngs cargo test --release -p chexvision-preprocess \
//!       --test vision_speed -- --ignored --nocapture

use std::time::Instant;

use chexvision_vision::{clahe, decode_gray8, resize_gray8, DecodeLimits, ResizeFilter};

#[test]
#[ignore = "measurement; run through scripts/bench_vision.sh"]
fn decode_resize_clahe_per_image() {
    let Ok(dir) = std::env::var("BENCH_VISION_DIR") else {
        eprintln!("set BENCH_VISION_DIR");
        return;
    };
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    let bytes: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let n = bytes.len() as f64;
    let limits = DecodeLimits::default();

    let started = Instant::now();
    let decoded: Vec<_> = bytes
        .iter()
        .map(|b| decode_gray8(b, &limits).unwrap())
        .collect();
    let decode_ms = started.elapsed().as_secs_f64() * 1e3 / n;

    let started = Instant::now();
    let resized: Vec<_> = decoded
        .iter()
        .map(|img| resize_gray8(img, 320, 320, ResizeFilter::Bilinear).unwrap())
        .collect();
    let resize_ms = started.elapsed().as_secs_f64() * 1e3 / n;

    let started = Instant::now();
    for img in &resized {
        clahe(img, 2.0, (8, 8)).unwrap();
    }
    let clahe_320_ms = started.elapsed().as_secs_f64() * 1e3 / n;

    let started = Instant::now();
    for img in &decoded {
        clahe(img, 2.0, (8, 8)).unwrap();
    }
    let clahe_full_ms = started.elapsed().as_secs_f64() * 1e3 / n;

    println!(
        "rust decode {decode_ms:.3} resize {resize_ms:.3} clahe320 {clahe_320_ms:.3} clahefull {clahe_full_ms:.3}"
    );
}
