//! Forward-pass timing for `scripts/bench_models.sh`: one configuration per
//! process, so the peak resident memory printed is this configuration's.
//!
//! `cargo run --release -p chexvision-models --example bench_forward -- IMPL MODEL BATCH SIZE REPS`
//! with IMPL `candle` (the autograd-capable `ChestModel`, weights as plain
//! tensors) or `fused` (`CpuInference`), MODEL `densenet121` or
//! `se_resnet`; prints one JSON line.

use std::time::Instant;

use anyhow::{bail, Context};
use chexvision_models::candle_core::{DType, Device, Tensor};
use chexvision_models::{varmap_tensors, ChestModel, CpuInference, ModelConfig};

type Forward = Box<dyn Fn(&Tensor) -> chexvision_models::Result<chexvision_models::DualLogits>>;

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

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [implementation, model, batch, size, reps] = args.as_slice() else {
        bail!("usage: bench_forward IMPL MODEL BATCH SIZE REPS");
    };
    let config = match model.as_str() {
        "densenet121" => ModelConfig::densenet121(),
        "se_resnet" => ModelConfig::se_resnet(),
        other => bail!("unknown model {other}"),
    };
    let batch: usize = batch.parse().context("batch")?;
    let size: usize = size.parse().context("size")?;
    let reps: usize = reps.parse().context("reps")?;
    let device = Device::Cpu;
    // Weights as plain tensors, as the inference service loads them.
    let (_, varmap) = ChestModel::init(&config, 14, &device)?;
    let tensors = varmap_tensors(&varmap);
    drop(varmap);
    let forward: Forward = match implementation.as_str() {
        "candle" => {
            let vb = chexvision_models::candle_nn::VarBuilder::from_tensors(
                tensors.into_iter().collect(),
                DType::F32,
                &device,
            );
            let net = ChestModel::new(&config, 14, vb)?;
            Box::new(move |x| net.forward_t(x, false))
        }
        "fused" => {
            let net = CpuInference::new(&config, 14, &tensors)?;
            drop(tensors);
            Box::new(move |x| net.forward(x))
        }
        other => bail!("unknown implementation {other}"),
    };
    let x = Tensor::randn(0f32, 1.0, (batch, 3, size, size), &device)?;
    forward(&x)?; // warm-up
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        let out = forward(&x)?;
        out.findings.to_vec2::<f32>()?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    println!(
        "{{\"impl\":\"{implementation}\",\"model\":\"{model}\",\"batch\":{batch},\"size\":{size},\"median_ms\":{median:.1},\"min_ms\":{:.1},\"peak_rss_mib\":{:.0}}}",
        times[0],
        peak_rss_mib()
    );
    Ok(())
}
