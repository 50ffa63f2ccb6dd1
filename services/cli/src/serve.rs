//! `chexvision serve`: the inference service in this process (the same
//! code as `chexvision-inference`), and `chexvision model init`: an
//! untrained checkpoint with seeded weights, to try the service, its
//! tests and its benchmark without training first.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use chexvision_dataset::LABELS;
use chexvision_inference::{service, InferenceSettings};
use chexvision_models::candle_core::Device;
use chexvision_models::{
    checkpoint_bytes, varmap_tensors, CheckpointMeta, ChestModel, DenseNetConfig, ModelConfig,
    Normalization,
};
use chexvision_service::{Service, ServiceArgs};
use clap::{Args, Subcommand, ValueEnum};

use crate::Cli;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Serve this checkpoint (store key or URI) instead of the registry's
    /// production model; promotions are still followed.
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// The checkpoint's sha256, checked before it is loaded.
    #[arg(long, requires = "checkpoint")]
    pub checkpoint_sha256: Option<String>,
    /// Where the API listens (overrides `service.api.bind`).
    #[arg(long)]
    pub bind: Option<String>,
}

/// Runs the inference service until SIGTERM or Ctrl-C.
pub async fn serve(cli: &Cli, args: &ServeArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let service_args = ServiceArgs {
        config: cli.config.clone(),
        store: cli.store.clone(),
        bus: cli.bus.clone(),
    };
    let mut service = Service::<InferenceSettings>::start(service::PRODUCER, &service_args).await?;
    let model = &mut service.config.service.model;
    if let Some(checkpoint) = &args.checkpoint {
        model.checkpoint = checkpoint.clone();
        model.checkpoint_sha256 = args.checkpoint_sha256.clone().unwrap_or_default();
    }
    if let Some(bind) = &args.bind {
        service.config.service.api.bind = bind.clone();
    }
    let (tasks, _api, address) = service::spawn(&service).await?;
    writeln!(out, "serving on http://{address} (Ctrl-C stops)")?;
    out.flush()?;
    service.run_until_shutdown(tasks).await
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Write an untrained checkpoint with seeded weights (for trying the
    /// service and for benchmarks; its output means nothing).
    Init(InitArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Architecture {
    /// DenseNet-121, as CheXNet.
    Densenet121,
    /// The from-scratch SE-ResNet.
    SeResnet,
    /// A few-layer DenseNet (tests).
    TinyDensenet,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[arg(long, value_enum, default_value = "densenet121")]
    pub architecture: Architecture,
    /// Input size in pixels (the model's image_size).
    #[arg(long, default_value_t = 224)]
    pub input_size: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Recorded as the checkpoint's run id (its version is `{run}.{sha12}`).
    #[arg(long, default_value = "untrained")]
    pub run_id: String,
    /// The checkpoint file to write.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn model_command(command: &ModelCommand, out: &mut (dyn Write + Send)) -> Result<()> {
    let ModelCommand::Init(args) = command;
    if !(16..=2048).contains(&args.input_size) {
        anyhow::bail!("--input-size {}: must be 16..=2048", args.input_size);
    }
    chexvision_registry::validate_version(&args.run_id).context("--run-id")?;
    let config = match args.architecture {
        Architecture::Densenet121 => ModelConfig::densenet121(),
        Architecture::SeResnet => ModelConfig::se_resnet(),
        Architecture::TinyDensenet => ModelConfig::Densenet(DenseNetConfig {
            growth_rate: 4,
            block_config: vec![2, 2],
            num_init_features: 8,
            bn_size: 2,
            compression: 0.5,
        }),
    };
    let (_, varmap) = ChestModel::init_seeded(&config, LABELS.len(), &Device::Cpu, args.seed)?;
    let meta = CheckpointMeta {
        config,
        labels: LABELS.iter().map(|s| s.to_string()).collect(),
        input_size: args.input_size,
        normalization: Normalization::imagenet(),
        parameter_count: 0,
        tensors_sha256: String::new(),
        extra: BTreeMap::from([
            ("run_id".to_string(), args.run_id.clone()),
            // Untrained weights say nothing about patients either.
            ("synthetic".to_string(), "true".to_string()),
            ("untrained".to_string(), "true".to_string()),
            ("seed".to_string(), args.seed.to_string()),
        ]),
    };
    let bytes = checkpoint_bytes(&varmap_tensors(&varmap), &meta)?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&args.out, &bytes).with_context(|| format!("writing {}", args.out.display()))?;
    writeln!(
        out,
        "{} ({} bytes, sha256 {})",
        args.out.display(),
        bytes.len(),
        chexvision_store::sha256_hex(&bytes)
    )?;
    Ok(())
}
