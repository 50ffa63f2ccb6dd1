//! Measurements, not tests (ignored by default): the Rust side of
//! `scripts/bench_vision.sh`, which times Pillow, OpenCV and torchvision on
//! the same files in the same run. Each test prints one `rust key value ...`
//! line the script parses.
//!
//!   BENCH_VISION_DIR=/path/to/pngs cargo test --release -p chexvision-preprocess \
//!       --test vision_speed -- --ignored --nocapture --test-threads 1

use std::{
    hint::black_box,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use chexvision_preprocess::{prepare_image, PreprocessSettings, ReadyFormat};
use chexvision_vision::{
    augment, clahe, decode_gray8, resize_gray8, to_tensor_imagenet, AugmentConfig, DecodeLimits,
    GrayImage8, ResizeFilter,
};

/// The PNGs of `BENCH_VISION_DIR`, sorted by name, read into memory.
fn images() -> Option<Vec<Vec<u8>>> {
    let Ok(dir) = std::env::var("BENCH_VISION_DIR") else {
        eprintln!("set BENCH_VISION_DIR");
        return None;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    Some(files.iter().map(|p| std::fs::read(p).unwrap()).collect())
}

/// Passes per timing: the best one counts (`BENCH_REPEATS`, default 3).
fn repeats() -> usize {
    std::env::var("BENCH_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// Items per second of the fastest of `repeats()` runs of `run`.
fn best_rate(items: usize, mut run: impl FnMut()) -> f64 {
    let best = (0..repeats())
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    items as f64 / best
}

/// `f` over every item on `threads` threads, each taking the next item
/// when it is free (dynamic scheduling, as a work-stealing pool does for
/// independent items); results in item order.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let parts: Vec<Vec<(usize, R)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        done.push((i, f(item)));
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut all: Vec<(usize, R)> = parts.into_iter().flatten().collect();
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

#[test]
#[ignore = "measurement; run through scripts/bench_vision.sh"]
fn decode_resize_clahe_per_image() {
    let Some(bytes) = images() else { return };
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

/// The preprocess service's own per-image work with PNG output
/// (`prepare_image`, `ready_format: png`): decode → gray → bilinear resize to
/// 320 → CLAHE 2.0 8×8 → PNG (fast compression), in images/s on one thread
/// and on every core (`BENCH_THREADS`, default all).
#[test]
#[ignore = "measurement; run through scripts/bench_vision.sh"]
fn whole_pipeline_to_png() {
    let Some(bytes) = images() else { return };
    let settings = PreprocessSettings {
        ready_format: ReadyFormat::Png,
        ..PreprocessSettings::default()
    };
    assert_eq!(settings.size_px, 320);
    let threads = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let prepare = |b: &Vec<u8>| prepare_image(b, &settings).unwrap().len();

    let pipe1 = best_rate(bytes.len(), || {
        black_box(bytes.iter().map(prepare).collect::<Vec<_>>());
    });
    let mut sizes = Vec::new();
    let pipen = best_rate(bytes.len(), || {
        sizes = black_box(parallel_map(&bytes, threads, prepare));
    });
    let png_bytes = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    println!("rust pipe1 {pipe1:.1} pipeN {pipen:.1} threads {threads} pngbytes {png_bytes:.0}");
}

/// Training-time augmentation on the 320 px ready images:
/// `augment` (seeded, `AugmentConfig::default()`) then `to_tensor_imagenet`
/// (3×320×320 f32), one thread, images/s over `BENCH_AUG_ROUNDS` (default 5)
/// rounds with a different seed for every image and round.
#[test]
#[ignore = "measurement; run through scripts/bench_vision.sh"]
fn augmentation_to_tensor() {
    let Some(bytes) = images() else { return };
    let settings = PreprocessSettings::default(); // raw 320 px gray, CLAHE
    let ready: Vec<GrayImage8> = bytes
        .iter()
        .map(|b| GrayImage8::new(320, 320, prepare_image(b, &settings).unwrap()).unwrap())
        .collect();
    let rounds: usize = std::env::var("BENCH_AUG_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let config = AugmentConfig::default();
    let aug = best_rate(rounds * ready.len(), || {
        for round in 0..rounds {
            for (i, image) in ready.iter().enumerate() {
                let seed = (round * ready.len() + i) as u64;
                let augmented = augment(image, &config, seed).unwrap();
                let tensor = to_tensor_imagenet(&augmented);
                assert_eq!(tensor.len(), 3 * 320 * 320);
                black_box(tensor);
            }
        }
    });
    println!("rust aug {aug:.1}");
}
