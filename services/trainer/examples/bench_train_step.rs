//! Training-step timing for `scripts/bench_train.sh`: one configuration per
//! process (peak RSS is this configuration's). Prints one JSON line: the
//! median step, every timed step in order, and the peak RSS.
//!
//! `cargo run --release -p chexvision-trainer --example bench_train_step -- MODEL BATCH SIZE STEPS [WARMUP]`
//!
//! WARMUP (default 1) steps run untimed first. The first few steps of a
//! process are slower than the rest: the allocator's heap is still growing,
//! and each new page it touches is a page fault that zeroes it.

use std::time::Instant;

use anyhow::{bail, Context};
use chexvision_models::candle_core::{Device, Tensor};
use chexvision_models::{ChestModel, ModelConfig};
use chexvision_trainer::{Batch, RecipeConfig, Trainer};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Training programs use mimalloc (see `chexvision_trainer::TrainingAllocator`).
#[global_allocator]
static GLOBAL: chexvision_trainer::TrainingAllocator = chexvision_trainer::TrainingAllocator;

fn main() -> anyhow::Result<()> {
    chexvision_trainer::park_idle_candle_workers();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, batch, size, steps, warmup) = match args.as_slice() {
        [model, batch, size, steps] => (model, batch, size, steps, "1"),
        [model, batch, size, steps, warmup] => (model, batch, size, steps, warmup.as_str()),
        _ => bail!("usage: bench_train_step MODEL BATCH SIZE STEPS [WARMUP]"),
    };
    let config = match model.as_str() {
        "densenet121" => ModelConfig::densenet121(),
        "se_resnet" => ModelConfig::se_resnet(),
        other => bail!("unknown model {other}"),
    };
    let batch: usize = batch.parse().context("batch")?;
    let size: usize = size.parse().context("size")?;
    let steps: usize = steps.parse().context("steps")?;
    let warmup: usize = warmup.parse().context("warmup")?;
    if steps == 0 {
        bail!("STEPS must be at least 1");
    }
    let device = Device::Cpu;
    let (net, varmap) = ChestModel::init_seeded(&config, 14, &device, 1)?;
    let recipe = RecipeConfig {
        batch_size: batch,
        accumulation_steps: 1,
        warmup_steps: 1,
        ..RecipeConfig::default()
    };
    let mut trainer = Trainer::new(net, varmap, recipe, &[2.0; 14], 1000)?;
    let findings = Tensor::rand(0f32, 1.0, (batch, 14), &device)?
        .ge(0.7)?
        .to_dtype(chexvision_models::candle_core::DType::F32)?;
    let data = Batch {
        images: Tensor::randn(0f32, 1.0, (batch, 3, size, size), &device)?,
        abnormal: findings.max_keepdim(1)?,
        findings,
    };
    for _ in 0..warmup {
        trainer.train_micro_batch(&data)?;
    }
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let start = Instant::now();
        trainer.train_micro_batch(&data)?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let step_ms: Vec<String> = times.iter().map(|t| format!("{t:.0}")).collect();
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "{{\"impl\":\"candle\",\"model\":\"{model}\",\"batch\":{batch},\"size\":{size},\"warmup\":{warmup},\"median_ms\":{median:.1},\"step_ms\":[{}],\"images_per_s\":{:.2},\"peak_rss_mib\":{:.0}}}",
        step_ms.join(","),
        batch as f64 * 1000.0 / median,
        peak_rss_mib()
    );
    Ok(())
}
