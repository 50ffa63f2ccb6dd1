//! Settings: the trainer service's own (`service:` in
//! `configs/trainer.yaml`) and a run's ([`TrainSettings`], the `service:`
//! section of a training config under `configs_dir`: `default`,
//! `transfer`, `scratch`, `tiny`, ...).

use chexvision_config::Validate;
use chexvision_models::ModelConfig;
use chexvision_vision::AugmentConfig;
use serde::{Deserialize, Serialize};

use crate::limits::RunLimits;
use crate::recipe::RecipeConfig;

/// Everything a run is made from (the `service:` section of a training
/// config, plus the request's dataset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    pub model: ModelConfig,
    pub recipe: RecipeConfig,
    /// Side of the ready images the run reads (`ready/{size}px/`).
    pub image_size: u32,
    pub augment: AugmentConfig,
    pub loader_workers: usize,
    pub prefetch_shards: usize,
    pub shuffle_buffer: usize,
    /// Converted torchvision weights (safetensors) for the DenseNet
    /// backbone; empty: train from scratch.
    pub pretrained: String,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            model: ModelConfig::densenet121(),
            recipe: RecipeConfig::default(),
            image_size: 320,
            augment: AugmentConfig::default(),
            loader_workers: 2,
            prefetch_shards: 2,
            shuffle_buffer: 2048,
            pretrained: String::new(),
        }
    }
}

impl Validate for TrainSettings {
    fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if let Err(e) = self.recipe.validate() {
            problems.push(("recipe".to_string(), e.to_string()));
        }
        let model_check = match &self.model {
            ModelConfig::Densenet(c) => c.validate(),
            ModelConfig::SeResnet(c) => c.validate(),
        };
        if let Err(e) = model_check {
            problems.push(("model".to_string(), e.to_string()));
        }
        if !(32..=2048).contains(&self.image_size) {
            problems.push((
                "image_size".to_string(),
                format!("must be 32..=2048, got {}", self.image_size),
            ));
        }
        if let Err(e) = self.augment.validate() {
            problems.push(("augment".to_string(), e.to_string()));
        }
        if self.loader_workers == 0 || self.prefetch_shards == 0 {
            problems.push((
                "loader_workers".to_string(),
                "loader_workers and prefetch_shards must be at least 1".into(),
            ));
        }
        problems
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerServiceSettings {
    /// Consumer group of the service.
    pub group: String,
    /// Folder of the training configs requests name (`{name}.yaml`).
    pub configs_dir: String,
    /// Config of a request that names neither a config nor a model kind.
    pub default_config: String,
    /// Config of a request for MODEL_KIND_DENSENET121 that names none.
    pub densenet_config: String,
    /// Config of a request for MODEL_KIND_SE_RESNET that names none.
    pub se_resnet_config: String,
    /// Start a run when a dataset becomes ready (`DatasetReady` at the
    /// image size of `dataset_ready_config`).
    pub train_on_dataset_ready: bool,
    pub dataset_ready_config: String,
    /// `cpu`, `cuda` or `cuda:N` (builds with `--features cuda`).
    pub device: String,
    /// Attempts at a run that fails for a reason that may pass (the store
    /// unreachable); a run that still fails is marked failed.
    pub max_attempts: u32,
    /// Wait before the next attempt, doubled each time.
    pub retry_backoff_secs: u64,
    /// This replica's name in run leases (`runs/{id}/lease.json`): stable
    /// across restarts of one pod (its name), distinct between replicas.
    /// Empty: the `HOSTNAME` environment variable.
    pub instance_id: String,
    /// A replica holds a run's lease this long without renewing it; a run
    /// whose holder died is taken over after that.
    pub lease_ttl_secs: u64,
    /// Wait after writing a lease before reading it back (see
    /// `chexvision_store::claim`).
    pub lease_settle_ms: u64,
    /// How often an idle worker looks for runs nobody holds (a replica
    /// that died mid-run).
    pub rescan_secs: u64,
    /// Bounds on what a request may ask for (docs/limits.md).
    pub limits: RunLimits,
}

impl Default for TrainerServiceSettings {
    fn default() -> Self {
        TrainerServiceSettings {
            group: "chexvision-trainer".into(),
            configs_dir: "configs".into(),
            default_config: "default".into(),
            densenet_config: "transfer".into(),
            se_resnet_config: "scratch".into(),
            train_on_dataset_ready: false,
            dataset_ready_config: "default".into(),
            device: "cpu".into(),
            max_attempts: 3,
            retry_backoff_secs: 30,
            instance_id: String::new(),
            lease_ttl_secs: 120,
            lease_settle_ms: 500,
            rescan_secs: 60,
            limits: RunLimits::default(),
        }
    }
}

impl TrainerServiceSettings {
    /// [`TrainerServiceSettings::instance_id`], or the host name, or a
    /// fixed fallback.
    pub fn instance(&self) -> String {
        if !self.instance_id.is_empty() {
            return self.instance_id.clone();
        }
        std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "chexvision-trainer".into())
    }
}

/// Config names: a file name under `configs_dir`, nothing that walks out of it.
pub fn is_valid_config_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

impl Validate for TrainerServiceSettings {
    fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.group.is_empty() {
            problems.push(("group".into(), "must not be empty".into()));
        }
        for (key, name) in [
            ("default_config", &self.default_config),
            ("densenet_config", &self.densenet_config),
            ("se_resnet_config", &self.se_resnet_config),
            ("dataset_ready_config", &self.dataset_ready_config),
        ] {
            if !is_valid_config_name(name) {
                problems.push((
                    key.into(),
                    format!("`{name}` is not a config name (letters, digits, _ and -)"),
                ));
            }
        }
        if parse_device(&self.device).is_err() {
            problems.push((
                "device".into(),
                format!("`{}`: use cpu, cuda or cuda:N", self.device),
            ));
        }
        if self.max_attempts == 0 {
            problems.push(("max_attempts".into(), "must be at least 1".into()));
        }
        if self.lease_ttl_secs < 10 {
            problems.push(("lease_ttl_secs".into(), "must be at least 10".into()));
        }
        if self.rescan_secs == 0 {
            problems.push(("rescan_secs".into(), "must be at least 1".into()));
        }
        for (key, why) in self.limits.validate() {
            problems.push((format!("limits.{key}"), why));
        }
        problems
    }
}

/// Where the model runs, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda(usize),
}

pub fn parse_device(text: &str) -> Result<DeviceChoice, String> {
    match text {
        "cpu" => Ok(DeviceChoice::Cpu),
        "cuda" => Ok(DeviceChoice::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceChoice::Cuda)
            .ok_or_else(|| format!("unknown device `{other}`")),
    }
}

impl DeviceChoice {
    /// Opens the device; CUDA needs a build with `--features cuda` and a GPU.
    pub fn open(self) -> Result<chexvision_models::candle_core::Device, String> {
        match self {
            DeviceChoice::Cpu => Ok(chexvision_models::candle_core::Device::Cpu),
            DeviceChoice::Cuda(ordinal) => {
                chexvision_models::candle_core::Device::new_cuda(ordinal)
                    .map_err(|e| format!("cuda:{ordinal}: {e}"))
            }
        }
    }
}
