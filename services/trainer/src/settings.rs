//! The trainer service's own settings (`service:` in `configs/trainer.yaml`).
//! What a run trains is not here: each request names a training config
//! under `configs_dir` (`default`, `transfer`, `scratch`, `tiny`, ...).

use chexvision_config::Validate;
use serde::{Deserialize, Serialize};

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
        }
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
