//! Seeded initialisation. candle's CPU random generator cannot be seeded,
//! so a reproducible run re-draws every variable from a ChaCha stream of
//! its own (seed, name), with the same rules the layers use: Kaiming
//! normal for convolutions (fan-in for DenseNet, fan-out for SE-ResNet, as
//! torchvision), uniform ±1/√fan_in for linear weights and the SE biases,
//! zero for head biases, BatchNorm weight 1 / bias 0 / mean 0 / var 1.
//! The result does not depend on thread count or variable order.

use candle_core::Tensor;
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::{ModelConfig, Result};

fn stream(seed: u64, name: &str) -> ChaCha8Rng {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(name.as_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    ChaCha8Rng::from_seed(digest)
}

fn normal(rng: &mut ChaCha8Rng, std: f64) -> f32 {
    // Box–Muller; u1 in (0, 1] so the log is finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
}

/// Re-draws every variable of `varmap` (a model of `config`) from `seed`.
pub fn reinit_seeded(varmap: &VarMap, config: &ModelConfig, seed: u64) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for (name, var) in data.iter() {
        let dims = var.dims().to_vec();
        let count: usize = dims.iter().product();
        let (prefix, leaf) = name.rsplit_once('.').unwrap_or(("", name.as_str()));
        let is_bn = data.contains_key(&format!("{prefix}.running_mean"));
        let mut rng = stream(seed, name);
        let values: Vec<f32> = if is_bn {
            let v = match leaf {
                "weight" | "running_var" => 1.0,
                _ => 0.0,
            };
            vec![v; count]
        } else if dims.len() == 4 {
            let receptive = dims[2] * dims[3];
            let fan = match config {
                ModelConfig::Densenet(_) => dims[1] * receptive,
                ModelConfig::SeResnet(_) => dims[0] * receptive,
            };
            let std = (2.0 / fan as f64).sqrt();
            (0..count).map(|_| normal(&mut rng, std)).collect()
        } else if dims.len() == 2 {
            let bound = 1.0 / (dims[1] as f64).sqrt();
            (0..count)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        } else if name.starts_with("heads.") {
            vec![0.0; count]
        } else {
            // A linear bias outside the heads (squeeze-excitation).
            let fan_in = data
                .get(&format!("{prefix}.weight"))
                .and_then(|w| w.dims().get(1).copied())
                .unwrap_or(1);
            let bound = 1.0 / (fan_in as f64).sqrt();
            (0..count)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect()
        };
        let t = Tensor::from_vec(values, dims.as_slice(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}
