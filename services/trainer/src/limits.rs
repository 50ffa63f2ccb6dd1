//! What a training request may ask of this trainer, checked before a run is
//! accepted and again before a stored run is resumed: every number finite
//! and in range, the model's shape bounded, and a training step that fits
//! the machine. A request outside them is dead-lettered with the reason; a
//! stored run outside them is marked failed, never started (docs/limits.md
//! lists every bound with its config key).

use chexvision_config::Validate;
use chexvision_models::ModelConfig;
use serde::{Deserialize, Serialize};

use crate::settings::TrainSettings;

/// `service.limits` of the trainer's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunLimits {
    pub max_epochs: u32,
    pub max_batch_size: usize,
    pub max_accumulation_steps: usize,
    pub max_warmup_steps: u64,
    pub max_image_size: u32,
    pub max_loader_workers: usize,
    pub max_prefetch_shards: usize,
    pub max_shuffle_buffer: usize,
    /// Memory a run may use, by the estimate of [`estimated_run_bytes`];
    /// 0: three quarters of this machine's memory (its cgroup limit, if
    /// lower). On a GPU, set it to the device's memory.
    pub memory_bytes: u64,
    /// Size of a ready shard the estimate assumes for each prefetched shard.
    pub shard_bytes: u64,
    /// Overrides a request may carry, and the longest value.
    pub max_overrides: usize,
    pub max_override_bytes: usize,
    /// Longest `reason` / `requested_by` of a request.
    pub max_text_bytes: usize,
    /// Model shape: layers per block or stage, blocks or stages, channels.
    pub max_blocks: usize,
    pub max_layers_per_block: usize,
    pub max_channels: usize,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            max_epochs: 1000,
            max_batch_size: 512,
            max_accumulation_steps: 256,
            max_warmup_steps: 1_000_000,
            max_image_size: 1024,
            max_loader_workers: 64,
            max_prefetch_shards: 16,
            max_shuffle_buffer: 100_000,
            memory_bytes: 0,
            shard_bytes: 256 << 20,
            max_overrides: 64,
            max_override_bytes: 1024,
            max_text_bytes: 4096,
            max_blocks: 8,
            max_layers_per_block: 128,
            max_channels: 4096,
        }
    }
}

impl Validate for RunLimits {
    fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (key, value) in [
            ("max_epochs", u64::from(self.max_epochs)),
            ("max_batch_size", self.max_batch_size as u64),
            ("max_accumulation_steps", self.max_accumulation_steps as u64),
            ("max_image_size", u64::from(self.max_image_size)),
            ("max_loader_workers", self.max_loader_workers as u64),
            ("max_prefetch_shards", self.max_prefetch_shards as u64),
            ("max_shuffle_buffer", self.max_shuffle_buffer as u64),
            ("max_blocks", self.max_blocks as u64),
            ("max_layers_per_block", self.max_layers_per_block as u64),
            ("max_channels", self.max_channels as u64),
        ] {
            if value == 0 {
                problems.push((key.to_owned(), "must be at least 1".to_owned()));
            }
        }
        problems
    }
}

/// Bytes of activations a training step keeps per input pixel and image,
/// measured on the full-size models at 224 px, batch 8 (peak resident set
/// minus weights and optimiser state: DenseNet-121 4.8 GB, SE-ResNet 2.0 GB,
/// docs/benchmarks.md), rounded up. Other shapes scale by depth and width.
const DENSENET121_BYTES_PER_PIXEL: f64 = 12_000.0;
const SE_RESNET_BYTES_PER_PIXEL: f64 = 5_000.0;

/// Parameters of a model, estimated from its shape (the convolutions
/// dominate; within a few per cent of the true count for the standard
/// models).
pub fn estimated_parameters(model: &ModelConfig) -> f64 {
    match model {
        ModelConfig::Densenet(c) => {
            let (growth, bottleneck) = (c.growth_rate as f64, (c.bn_size * c.growth_rate) as f64);
            let mut channels = c.num_init_features as f64;
            let mut total = 3.0 * 49.0 * channels;
            for (i, &layers) in c.block_config.iter().enumerate() {
                for _ in 0..layers {
                    total += channels * bottleneck + bottleneck * growth * 9.0 + 4.0 * channels;
                    channels += growth;
                }
                if i + 1 < c.block_config.len() {
                    let out = (channels * c.compression).floor();
                    total += channels * out;
                    channels = out;
                }
            }
            total + channels * 15.0
        }
        ModelConfig::SeResnet(c) => {
            let mut channels = c.stem_width as f64;
            let mut total = 3.0 * 49.0 * channels;
            for (&blocks, &width) in c.blocks.iter().zip(&c.widths) {
                let width = width as f64;
                for _ in 0..blocks {
                    total += channels * width * 9.0 + width * width * 9.0;
                    total += 2.0 * width * width / c.se_reduction.max(1) as f64;
                    if channels != width {
                        total += channels * width;
                    }
                    channels = width;
                }
            }
            total + channels * 15.0
        }
    }
}

/// Memory a run needs, estimated: the training step's activations (batch ×
/// pixels × the model's bytes per pixel), weights with their gradients and
/// AdamW moments, the loader's shuffle buffer, prefetched batches and shards
/// (at most `max_shard_bytes` each).
pub fn estimated_run_bytes(settings: &TrainSettings, max_shard_bytes: u64) -> f64 {
    let pixels = f64::from(settings.image_size).powi(2);
    let per_pixel = match &settings.model {
        ModelConfig::Densenet(c) => {
            let layers: usize = c.block_config.iter().sum();
            DENSENET121_BYTES_PER_PIXEL * (layers as f64 / 58.0) * (c.growth_rate as f64 / 32.0)
        }
        ModelConfig::SeResnet(c) => {
            let blocks: usize = c.blocks.iter().sum();
            let widest = c.widths.iter().copied().max().unwrap_or(c.stem_width) as f64;
            SE_RESNET_BYTES_PER_PIXEL * (blocks as f64 / 16.0) * (widest / 512.0)
        }
    };
    let batch = settings.recipe.batch_size as f64;
    let activations = batch * pixels * per_pixel.max(1_000.0);
    let weights = estimated_parameters(&settings.model) * 4.0 * 4.0;
    // Rows are kept as 8-bit pixels; batches as f32 with 3 channels.
    let shuffle = settings.shuffle_buffer as f64 * pixels;
    let batches = 4.0 * batch * pixels * 3.0 * 4.0;
    let shards = settings.prefetch_shards as f64 * max_shard_bytes as f64;
    activations + weights + shuffle + batches + shards
}

/// This machine's memory for runs: [`RunLimits::memory_bytes`], else three
/// quarters of the smaller of physical memory and the cgroup limit.
pub fn memory_budget(limits: &RunLimits) -> u64 {
    if limits.memory_bytes > 0 {
        return limits.memory_bytes;
    }
    let physical = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    let total = match (physical, cgroup) {
        (Some(p), Some(c)) => p.min(c),
        (Some(p), None) => p,
        (None, Some(c)) => c,
        // Unknown: assume a small machine rather than an unbounded one.
        (None, None) => 8 << 30,
    };
    total / 4 * 3
}

/// Every reason `settings` is outside `limits` on this machine (empty: fine).
/// `memory_budget` as from [`memory_budget`]; `max_shard_bytes` bounds a
/// prefetched shard.
pub fn check_run(
    settings: &TrainSettings,
    limits: &RunLimits,
    memory_budget: u64,
    max_shard_bytes: u64,
) -> Vec<String> {
    let mut problems: Vec<String> = settings
        .validate()
        .into_iter()
        .map(|(key, why)| format!("{key}: {why}"))
        .collect();
    let recipe = &settings.recipe;
    let mut at_most = |key: &str, value: u64, max: u64, limit: &str| {
        if value > max {
            problems.push(format!(
                "{key} {value} is above this trainer's limit of {max} (service.limits.{limit})"
            ));
        }
    };
    at_most(
        "recipe.epochs",
        u64::from(recipe.epochs),
        u64::from(limits.max_epochs),
        "max_epochs",
    );
    at_most(
        "recipe.patience",
        u64::from(recipe.patience),
        u64::from(limits.max_epochs),
        "max_epochs",
    );
    at_most(
        "recipe.frozen_epochs",
        u64::from(recipe.frozen_epochs),
        u64::from(limits.max_epochs),
        "max_epochs",
    );
    at_most(
        "recipe.batch_size",
        recipe.batch_size as u64,
        limits.max_batch_size as u64,
        "max_batch_size",
    );
    at_most(
        "recipe.accumulation_steps",
        recipe.accumulation_steps as u64,
        limits.max_accumulation_steps as u64,
        "max_accumulation_steps",
    );
    at_most(
        "recipe.warmup_steps",
        recipe.warmup_steps,
        limits.max_warmup_steps,
        "max_warmup_steps",
    );
    at_most(
        "image_size",
        u64::from(settings.image_size),
        u64::from(limits.max_image_size),
        "max_image_size",
    );
    at_most(
        "loader_workers",
        settings.loader_workers as u64,
        limits.max_loader_workers as u64,
        "max_loader_workers",
    );
    at_most(
        "prefetch_shards",
        settings.prefetch_shards as u64,
        limits.max_prefetch_shards as u64,
        "max_prefetch_shards",
    );
    at_most(
        "shuffle_buffer",
        settings.shuffle_buffer as u64,
        limits.max_shuffle_buffer as u64,
        "max_shuffle_buffer",
    );
    let (blocks, channels): (Vec<usize>, Vec<usize>) = match &settings.model {
        ModelConfig::Densenet(c) => (
            c.block_config.clone(),
            vec![c.growth_rate * c.bn_size, c.num_init_features],
        ),
        ModelConfig::SeResnet(c) => {
            let mut channels = c.widths.clone();
            channels.push(c.stem_width);
            (c.blocks.clone(), channels)
        }
    };
    at_most(
        "model blocks",
        blocks.len() as u64,
        limits.max_blocks as u64,
        "max_blocks",
    );
    at_most(
        "model layers in a block",
        blocks.iter().copied().max().unwrap_or(0) as u64,
        limits.max_layers_per_block as u64,
        "max_layers_per_block",
    );
    at_most(
        "model channels",
        channels.iter().copied().max().unwrap_or(0) as u64,
        limits.max_channels as u64,
        "max_channels",
    );
    // Only a shape inside the bounds above is worth estimating.
    if problems.is_empty() {
        let needed = estimated_run_bytes(settings, max_shard_bytes);
        if needed > memory_budget as f64 {
            problems.push(format!(
                "batch_size {} at {} px with this model needs about {:.1} GiB, above this \
                 trainer's budget of {:.1} GiB (service.limits.memory_bytes); lower \
                 recipe.batch_size (raise recipe.accumulation_steps to keep the effective batch)",
                recipe.batch_size,
                settings.image_size,
                needed / f64::from(1u32 << 30),
                memory_budget as f64 / f64::from(1u32 << 30),
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use chexvision_models::{DenseNetConfig, SeResNetConfig};

    #[test]
    fn parameter_estimate_is_close_to_the_true_counts() {
        // DenseNet-121: 6,953,856 backbone parameters (torchvision).
        let densenet = estimated_parameters(&ModelConfig::Densenet(DenseNetConfig::densenet121()));
        assert!((densenet / 6_953_856.0 - 1.0).abs() < 0.05, "{densenet}");
        // SE-ResNet: 21,453,563 in all.
        let se = estimated_parameters(&ModelConfig::SeResnet(SeResNetConfig::standard()));
        assert!((se / 21_453_563.0 - 1.0).abs() < 0.05, "{se}");
    }

    #[test]
    fn the_standard_recipe_fits_a_48_gib_machine_and_a_huge_batch_does_not() {
        // DenseNet-121, batch 24 at 320 px: about 28 GiB on the CPU path.
        let settings = TrainSettings::default();
        let limits = RunLimits::default();
        let budget = 36u64 << 30;
        let needed = estimated_run_bytes(&settings, 256 << 20) / f64::from(1u32 << 30);
        assert!((24.0..32.0).contains(&needed), "{needed} GiB");
        assert_eq!(
            check_run(&settings, &limits, budget, 256 << 20),
            Vec::<String>::new()
        );
        let small_machine = check_run(&settings, &limits, 12 << 30, 256 << 20);
        assert!(
            small_machine[0].contains("GiB, above this trainer's budget of 12.0 GiB"),
            "{small_machine:?}"
        );
        let mut huge = settings.clone();
        huge.recipe.batch_size = 512;
        huge.image_size = 1024;
        let problems = check_run(&huge, &limits, budget, 64 << 20);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("GiB"), "{problems:?}");
    }

    #[test]
    fn non_finite_and_out_of_range_numbers_are_named() {
        let mut settings = TrainSettings::default();
        settings.recipe.weight_decay = f64::NAN;
        settings.recipe.epochs = u32::MAX;
        settings.recipe.patience = u32::MAX;
        let problems = check_run(&settings, &RunLimits::default(), u64::MAX, 0).join("\n");
        assert!(problems.contains("weight_decay"), "{problems}");
        assert!(problems.contains("recipe.epochs 4294967295"), "{problems}");
        assert!(problems.contains("recipe.patience"), "{problems}");
    }
}
