//! The Rust side of `scripts/gpu_check.sh`: built with `--features cuda`
//! on a machine without a GPU, run on one that has it. Each subcommand
//! prints one JSON line.
//!
//! ```text
//! gpu_check parity FIXTURES_DIR [TORCH_GPU]  # small models' forward pass on the GPU against the
//!                                            # fixtures' PyTorch CPU outputs and PyTorch's on this GPU
//! gpu_check train MODEL BATCH SIZE STEPS     # bf16 autocast training step, images/s
//! gpu_check infer MODEL BATCH SIZE REPS      # bf16 forward pass (eval), images/s
//! ```
//!
//! MODEL is `densenet121` or `se_resnet`. Times are wall-clock around
//! whole steps with the device synchronised, after one warm-up step.
//! `--cpu` first runs the same code on the CPU in f32 (bf16 needs a GPU):
//! a check of this program where no GPU is, not a measurement.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use chexvision_models::candle_core::{DType, Device, Tensor};
use chexvision_models::candle_nn::VarBuilder;
use chexvision_models::{autocast, ChestModel, ModelConfig};
use chexvision_trainer::{Batch, Precision, RecipeConfig, Trainer};

/// Training programs use mimalloc (see `chexvision_trainer::TrainingAllocator`).
#[global_allocator]
static GLOBAL: chexvision_trainer::TrainingAllocator = chexvision_trainer::TrainingAllocator;

const FINDINGS: usize = 14;

fn main() -> anyhow::Result<()> {
    chexvision_trainer::park_idle_candle_workers();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let device = if args.first().map(String::as_str) == Some("--cpu") {
        args.remove(0);
        Device::Cpu
    } else {
        Device::new_cuda(0).context(
            "no CUDA device: gpu_check needs an NVIDIA GPU, its driver (libcuda.so.1) and the \
             CUDA 13 libraries on the library path",
        )?
    };
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["parity", dir] => parity(Path::new(dir), None, &device),
        ["parity", dir, torch] => parity(Path::new(dir), Some(Path::new(torch)), &device),
        ["train", model, batch, size, steps] => {
            train(model, batch.parse()?, size.parse()?, steps.parse()?, &device)
        }
        ["infer", model, batch, size, reps] => {
            infer(model, batch.parse()?, size.parse()?, reps.parse()?, &device)
        }
        _ => bail!(
            "usage: gpu_check parity DIR [TORCH_GPU] | train MODEL BATCH SIZE STEPS | infer MODEL BATCH SIZE REPS"
        ),
    }
}

fn config(model: &str) -> anyhow::Result<ModelConfig> {
    match model {
        "densenet121" => Ok(ModelConfig::densenet121()),
        "se_resnet" => Ok(ModelConfig::se_resnet()),
        other => bail!("unknown model {other} (densenet121, se_resnet)"),
    }
}

fn median_ms(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The committed small fixtures of `shared/models/tests/fixtures`
/// (scripts/make_model_fixtures.py): ours, computed on the GPU in f32 and
/// in bf16 autocast, against PyTorch's eval-mode logits on the CPU (the
/// fixture) and, when given, PyTorch's on this GPU in the same precision
/// (`{name}.{precision}` in `torch_gpu`, from scripts/gpu_check_torch.py).
fn parity(dir: &Path, torch_gpu: Option<&Path>, device: &Device) -> anyhow::Result<()> {
    let torch_gpu = match torch_gpu {
        Some(path) => Some(chexvision_models::candle_core::safetensors::load(
            path, device,
        )?),
        None => None,
    };
    for (name, architecture) in [
        ("densenet_small", "densenet"),
        ("se_resnet_small", "se_resnet"),
    ] {
        let bytes = std::fs::read(dir.join(format!("{name}.safetensors")))
            .with_context(|| format!("{name}.safetensors in {}", dir.display()))?;
        let config = fixture_config(&bytes, architecture)?;
        let weights: HashMap<String, Tensor> =
            chexvision_models::candle_core::safetensors::load_buffer(&bytes, device)?;
        let io = chexvision_models::candle_core::safetensors::load(
            dir.join(format!("{name}_io.safetensors")),
            device,
        )?;
        let vb = VarBuilder::from_tensors(weights, DType::F32, device);
        let model = ChestModel::new(&config, FINDINGS, vb)?;
        let input = io.get("input").context("input")?;
        let want = io.get("eval.multilabel").context("eval.multilabel")?;
        let scale = max_abs(want)?;
        let precisions: &[&str] = if device.is_cpu() {
            &["f32"]
        } else {
            &["f32", "bf16"]
        };
        for &precision in precisions {
            let dtype = (precision == "bf16").then_some(DType::BF16);
            let out = autocast(dtype, || model.forward_t(input, false))?;
            let diff = max_abs(&(&out.findings - want)?)?;
            let vs_torch_gpu = match torch_gpu
                .as_ref()
                .and_then(|t| t.get(&format!("{name}.{precision}")))
            {
                Some(theirs) => format!("{:.3e}", max_abs(&(&out.findings - theirs)?)?),
                None => "null".to_owned(),
            };
            println!(
                "{{\"check\":\"parity\",\"model\":\"{name}\",\"precision\":\"{precision}\",\"max_abs_diff_vs_fixture\":{diff:.3e},\"max_abs_diff_vs_torch_gpu\":{vs_torch_gpu},\"reference_max_abs\":{scale:.3e}}}"
            );
        }
    }
    Ok(())
}

fn fixture_config(bytes: &[u8], architecture: &str) -> anyhow::Result<ModelConfig> {
    let len = u64::from_le_bytes(bytes.get(..8).context("short file")?.try_into()?) as usize;
    let header: serde_json::Value =
        serde_json::from_slice(bytes.get(8..8 + len).context("short header")?)?;
    let config = header["__metadata__"]["config"]
        .as_str()
        .context("fixture metadata has no config")?;
    let mut config: serde_json::Value = serde_json::from_str(config)?;
    config["architecture"] = architecture.into();
    Ok(serde_json::from_value(config)?)
}

fn max_abs(t: &Tensor) -> anyhow::Result<f32> {
    Ok(t.abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?)
}

fn train(
    model: &str,
    batch: usize,
    size: usize,
    steps: usize,
    device: &Device,
) -> anyhow::Result<()> {
    let (net, varmap) = ChestModel::init_seeded(&config(model)?, FINDINGS, device, 1)?;
    let recipe = RecipeConfig {
        batch_size: batch,
        accumulation_steps: 1,
        warmup_steps: 1,
        precision: if device.is_cpu() {
            Precision::F32
        } else {
            Precision::Bf16
        },
        ..RecipeConfig::default()
    };
    let mut trainer = Trainer::new(net, varmap, recipe, &[2.0; FINDINGS], 1000)?;
    let findings = Tensor::rand(0f32, 1.0, (batch, FINDINGS), device)?
        .ge(0.7)?
        .to_dtype(DType::F32)?;
    let data = Batch {
        images: Tensor::randn(0f32, 1.0, (batch, 3, size, size), device)?,
        abnormal: findings.max_keepdim(1)?,
        findings,
    };
    trainer.train_micro_batch(&data)?; // warm-up: kernels, allocator
    device.synchronize()?;
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let start = Instant::now();
        trainer.train_micro_batch(&data)?;
        device.synchronize()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let median = median_ms(times);
    let precision = if device.is_cpu() { "f32" } else { "bf16" };
    println!(
        "{{\"check\":\"train\",\"impl\":\"candle\",\"model\":\"{model}\",\"precision\":\"{precision}\",\"batch\":{batch},\"size\":{size},\"median_ms\":{median:.2},\"images_per_s\":{:.1}}}",
        batch as f64 * 1e3 / median
    );
    Ok(())
}

fn infer(
    model: &str,
    batch: usize,
    size: usize,
    reps: usize,
    device: &Device,
) -> anyhow::Result<()> {
    // Plain tensors, not variables: inference records no graph.
    let config = config(model)?;
    let (_, varmap) = ChestModel::init_seeded(&config, FINDINGS, device, 1)?;
    let weights: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("variable map poisoned"))?
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    let net = ChestModel::new(
        &config,
        FINDINGS,
        VarBuilder::from_tensors(weights, DType::F32, device),
    )?;
    let images = Tensor::randn(0f32, 1.0, (batch, 3, size, size), device)?;
    let dtype = (!device.is_cpu()).then_some(DType::BF16);
    let precision = if device.is_cpu() { "f32" } else { "bf16" };
    let forward = || autocast(dtype, || net.forward_t(&images, false));
    forward()?; // warm-up
    device.synchronize()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        let out = forward()?;
        device.synchronize()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        drop(out);
    }
    let median = median_ms(times);
    println!(
        "{{\"check\":\"infer\",\"impl\":\"candle\",\"model\":\"{model}\",\"precision\":\"{precision}\",\"batch\":{batch},\"size\":{size},\"median_ms\":{median:.2},\"images_per_s\":{:.1}}}",
        batch as f64 * 1e3 / median
    );
    Ok(())
}
