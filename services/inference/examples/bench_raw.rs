//! What the service adds to the model: images per second of the fused CPU
//! model alone on batches of `--batch` preprocessed images, and of decode +
//! preprocess + model in one process (no HTTP, no queue), on the same PNG
//! files the load test sends. Prints one JSON line.
//!
//!   cargo run --release -p chexvision-inference --example bench_raw -- \
//!     CHECKPOINT IMAGE_DIR [--batch 16] [--seconds 20]

use std::time::{Duration, Instant};

use chexvision_inference::core::model::{LoadedModel, ModelOrigin};
use chexvision_inference::core::preprocess::{decode, prepare};
use chexvision_inference::settings::PreprocessSettings;
use chexvision_vision::DecodeLimits;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "bench_raw CHECKPOINT IMAGE_DIR [--batch N] [--seconds S]";
    let checkpoint = args.get(1).ok_or_else(|| anyhow::anyhow!(usage))?;
    let dir = args.get(2).ok_or_else(|| anyhow::anyhow!(usage))?;
    let flag = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let batch = flag("--batch", 16) as usize;
    let seconds = Duration::from_secs(flag("--seconds", 20));

    let model = LoadedModel::load(&std::fs::read(checkpoint)?, &ModelOrigin::default())?;
    let size = model.info.input_size;
    let mut files: Vec<Vec<u8>> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "png") {
            files.push(std::fs::read(path)?);
        }
    }
    anyhow::ensure!(!files.is_empty(), "no .png in {dir}");
    let settings = PreprocessSettings::default();
    let limits = DecodeLimits::default();
    let prepared: Vec<Vec<f32>> = files
        .iter()
        .map(|f| {
            let d = decode(f, &limits)?;
            Ok(prepare(&d.image, size, &settings, false)?.views.remove(0))
        })
        .collect::<Result<_, chexvision_vision::VisionError>>()?;

    // The model alone, on full batches.
    let pixels: Vec<f32> = (0..batch)
        .flat_map(|i| prepared[i % prepared.len()].clone())
        .collect();
    model.probabilities(pixels.clone(), batch)?; // warm-up
    let start = Instant::now();
    let mut images = 0usize;
    while start.elapsed() < seconds {
        model.probabilities(pixels.clone(), batch)?;
        images += batch;
    }
    let model_only = images as f64 / start.elapsed().as_secs_f64();

    // Decode + preprocess (on rayon's threads, as the service's pool) + model.
    use rayon::prelude::*;
    let start = Instant::now();
    let mut images = 0usize;
    let mut next = 0usize;
    while start.elapsed() < seconds {
        let chunk: Vec<&Vec<u8>> = (0..batch)
            .map(|i| &files[(next + i) % files.len()])
            .collect();
        next += batch;
        let tensors: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|f| {
                let d = decode(f, &limits).expect("decodes");
                prepare(&d.image, size, &settings, false)
                    .expect("prepares")
                    .views
                    .remove(0)
            })
            .collect();
        model.probabilities(tensors.concat(), batch)?;
        images += batch;
    }
    let pipeline = images as f64 / start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "batch": batch,
            "input_size": size,
            "model_images_per_s": model_only,
            "decode_preprocess_model_images_per_s": pipeline,
            "threads": rayon::current_num_threads(),
        })
    );
    Ok(())
}
