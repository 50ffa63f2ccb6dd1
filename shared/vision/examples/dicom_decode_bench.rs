//! Decode time per file, for the DICOM benchmark beside pydicom
//! (scripts/bench_dicom_decode.sh):
//!
//!     cargo run --release -p chexvision-vision --example dicom_decode_bench -- \
//!         --repeat 5 FILE...
//!
//! Each file is decoded once to warm up, then `--repeat` times; one JSON
//! line per file gives the median and best wall time in milliseconds of the
//! whole decode (header walk, decompression, rescale and VOI to 8 bits).

use std::time::Instant;

use chexvision_vision::{decode_gray8, DecodeLimits};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut repeat = 5usize;
    let mut files = Vec::new();
    while let Some(arg) = args.next() {
        if arg == "--repeat" {
            repeat = args.next().ok_or("--repeat needs a number")?.parse()?;
        } else {
            files.push(arg);
        }
    }
    if files.is_empty() || repeat == 0 {
        return Err("usage: dicom_decode_bench [--repeat N] FILE...".into());
    }
    let limits = DecodeLimits::default();
    for file in files {
        let bytes = std::fs::read(&file)?;
        let image = decode_gray8(&bytes, &limits).map_err(|e| format!("{file}: {e}"))?;
        let mut times: Vec<f64> = (0..repeat)
            .map(|_| {
                let start = Instant::now();
                let decoded = decode_gray8(&bytes, &limits);
                let ms = start.elapsed().as_secs_f64() * 1e3;
                std::hint::black_box(decoded).map(|_| ms)
            })
            .collect::<Result<_, _>>()?;
        times.sort_by(f64::total_cmp);
        println!(
            "{{\"file\": {file:?}, \"width\": {}, \"height\": {}, \"ms_median\": {:.3}, \"ms_best\": {:.3}}}",
            image.width,
            image.height,
            times[times.len() / 2],
            times[0]
        );
    }
    Ok(())
}
