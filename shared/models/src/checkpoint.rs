//! Checkpoints: safetensors files whose header metadata says what the
//! tensors are, so a file cannot be loaded into the wrong model silently.
//!
//! Metadata keys (all strings, as safetensors requires):
//!
//! | key | value |
//! |---|---|
//! | `chexvision.format` | `1` |
//! | `architecture` | `densenet` or `se_resnet` |
//! | `config` | the [`ModelConfig`] as JSON |
//! | `labels` | the finding names in output order, JSON array |
//! | `input_size` | side in pixels the model was trained at |
//! | `normalization` | `{"mean": [..3], "std": [..3]}` |
//! | `parameter_count` | trainable parameters (BatchNorm buffers excluded) |
//! | `tensors_sha256` | digest of every tensor (name, dtype, shape, bytes), sorted by name |
//! | `extra.*` | free-form (run id, epoch, ...) |
//!
//! BatchNorm running statistics are tensors of the file like any weight.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{is_buffer, ChestModel, ModelConfig};
use crate::{ModelError, Result};

const FORMAT_VERSION: &str = "1";

/// Per-channel input normalisation (applied to images in [0, 1]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// The ImageNet statistics every model here is trained with.
    pub fn imagenet() -> Self {
        Self {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

/// What a checkpoint's metadata says.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointMeta {
    pub config: ModelConfig,
    pub labels: Vec<String>,
    pub input_size: usize,
    pub normalization: Normalization,
    pub parameter_count: usize,
    pub tensors_sha256: String,
    pub extra: BTreeMap<String, String>,
}

/// The tensors of a model, by state-dict name: every variable of the map,
/// BatchNorm running statistics included.
pub fn varmap_tensors(varmap: &VarMap) -> BTreeMap<String, Tensor> {
    let data = varmap
        .data()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    data.iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect()
}

/// sha256 over (name, dtype, shape, little-endian bytes) of every tensor,
/// in name order.
pub fn tensors_sha256(tensors: &BTreeMap<String, Tensor>) -> Result<String> {
    let mut hasher = Sha256::new();
    for (name, tensor) in tensors {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update(format!("{:?}", tensor.dtype()).as_bytes());
        for &dim in tensor.dims() {
            hasher.update((dim as u64).to_le_bytes());
        }
        let bytes =
            safetensors::View::data(&tensor.to_device(&Device::Cpu)?.contiguous()?).into_owned();
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Serialises `tensors` with the metadata above. `meta.parameter_count`
/// and `meta.tensors_sha256` are computed here; what the caller put there
/// is ignored.
pub fn checkpoint_bytes(
    tensors: &BTreeMap<String, Tensor>,
    meta: &CheckpointMeta,
) -> Result<Vec<u8>> {
    let parameter_count = tensors
        .iter()
        .filter(|(name, _)| !is_buffer(name))
        .map(|(_, t)| t.elem_count())
        .sum::<usize>();
    let mut info = HashMap::new();
    info.insert("chexvision.format".to_string(), FORMAT_VERSION.to_string());
    info.insert(
        "architecture".to_string(),
        meta.config.architecture().to_string(),
    );
    info.insert("config".to_string(), to_json(&meta.config)?);
    info.insert("labels".to_string(), to_json(&meta.labels)?);
    info.insert("input_size".to_string(), meta.input_size.to_string());
    info.insert("normalization".to_string(), to_json(&meta.normalization)?);
    info.insert("parameter_count".to_string(), parameter_count.to_string());
    info.insert("tensors_sha256".to_string(), tensors_sha256(tensors)?);
    for (k, v) in &meta.extra {
        info.insert(format!("extra.{k}"), v.clone());
    }
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    safetensors::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), Some(info))
        .map_err(|e| ModelError::CheckpointFormat(format!("serialising: {e}")))
}

/// Plain safetensors bytes of `tensors` (no metadata): optimiser state
/// and other companions of a checkpoint.
pub fn safetensors_bytes(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    safetensors::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), None)
        .map_err(|e| ModelError::CheckpointFormat(format!("serialising: {e}")))
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| ModelError::CheckpointFormat(e.to_string()))
}

/// Reads only the header: cheap, for listing or checking a file.
pub fn read_meta(bytes: &[u8]) -> Result<CheckpointMeta> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| ModelError::CheckpointFormat(format!("not a safetensors file: {e}")))?;
    let info = header.metadata().as_ref().ok_or_else(|| {
        ModelError::CheckpointFormat("no metadata (not a CheXVision checkpoint)".into())
    })?;
    let get = |key: &str| {
        info.get(key).ok_or_else(|| {
            ModelError::CheckpointFormat(format!(
                "metadata has no `{key}` (not a CheXVision checkpoint?)"
            ))
        })
    };
    let format = get("chexvision.format")?;
    if format != FORMAT_VERSION {
        return Err(ModelError::CheckpointFormat(format!(
            "format version {format}, this build reads {FORMAT_VERSION}"
        )));
    }
    let parse = |key: &str| -> Result<serde_json::Value> {
        serde_json::from_str(get(key)?)
            .map_err(|e| ModelError::CheckpointFormat(format!("`{key}` is not JSON: {e}")))
    };
    let config: ModelConfig = serde_json::from_value(parse("config")?)
        .map_err(|e| ModelError::CheckpointFormat(format!("`config`: {e}")))?;
    let labels: Vec<String> = serde_json::from_value(parse("labels")?)
        .map_err(|e| ModelError::CheckpointFormat(format!("`labels`: {e}")))?;
    let normalization: Normalization = serde_json::from_value(parse("normalization")?)
        .map_err(|e| ModelError::CheckpointFormat(format!("`normalization`: {e}")))?;
    let number = |key: &str| -> Result<usize> {
        get(key)?
            .parse()
            .map_err(|e| ModelError::CheckpointFormat(format!("`{key}` is not a number: {e}")))
    };
    let extra = info
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("extra.").map(|k| (k.to_string(), v.clone())))
        .collect();
    Ok(CheckpointMeta {
        config,
        labels,
        input_size: number("input_size")?,
        normalization,
        parameter_count: number("parameter_count")?,
        tensors_sha256: get("tensors_sha256")?.clone(),
        extra,
    })
}

/// A checkpoint read into memory, digest verified.
#[derive(Debug)]
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub tensors: BTreeMap<String, Tensor>,
}

impl Checkpoint {
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let meta = read_meta(bytes)?;
        let tensors: BTreeMap<String, Tensor> =
            candle_core::safetensors::load_buffer(bytes, device)
                .map_err(|e| ModelError::CheckpointFormat(format!("reading tensors: {e}")))?
                .into_iter()
                .collect();
        let digest = tensors_sha256(&tensors)?;
        if digest != meta.tensors_sha256 {
            return Err(ModelError::CheckpointFormat(format!(
                "tensor digest {digest} does not match the recorded {} (file damaged or edited)",
                meta.tensors_sha256
            )));
        }
        Ok(Self { meta, tensors })
    }

    /// Fails, naming the difference, unless the checkpoint is of `config`
    /// with the findings in `labels` order.
    pub fn expect(&self, config: &ModelConfig, labels: &[&str]) -> Result<()> {
        expect_matches(&self.meta, config, labels)
    }

    /// An inference model: weights as plain tensors, so a forward pass
    /// records no autograd graph.
    pub fn inference_model(&self, device: &Device) -> Result<ChestModel> {
        let tensors: HashMap<String, Tensor> = self.tensors.clone().into_iter().collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        ChestModel::new(&self.meta.config, self.meta.labels.len(), vb).map_err(|e| {
            ModelError::Weights(format!(
                "checkpoint tensors do not build the model its metadata names: {e}"
            ))
        })
    }

    /// Overwrites every variable of `varmap` (a model built with this
    /// checkpoint's config) with the checkpoint's values, running
    /// statistics included. Every variable must be present with its shape.
    pub fn restore_into(&self, varmap: &VarMap) -> Result<()> {
        let data = varmap
            .data()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut missing = Vec::new();
        for (name, var) in data.iter() {
            match self.tensors.get(name) {
                Some(t) if t.dims() == var.dims() => var.set(&t.to_dtype(var.dtype())?)?,
                Some(t) => {
                    return Err(ModelError::Weights(format!(
                        "`{name}` has shape {:?} in the checkpoint, the model has {:?}",
                        t.dims(),
                        var.dims()
                    )))
                }
                None => missing.push(name.clone()),
            }
        }
        if !missing.is_empty() {
            missing.sort();
            return Err(ModelError::Weights(format!(
                "{} tensors missing from the checkpoint, first: {}",
                missing.len(),
                missing[0]
            )));
        }
        Ok(())
    }
}

fn expect_matches(meta: &CheckpointMeta, config: &ModelConfig, labels: &[&str]) -> Result<()> {
    if meta.config.architecture() != config.architecture() {
        return Err(ModelError::CheckpointMismatch(format!(
            "checkpoint is a {} model, expected {}",
            meta.config.architecture(),
            config.architecture()
        )));
    }
    if &meta.config != config {
        return Err(ModelError::CheckpointMismatch(format!(
            "checkpoint {} config {} differs from the expected {}",
            config.architecture(),
            serde_json::to_string(&meta.config).unwrap_or_default(),
            serde_json::to_string(config).unwrap_or_default()
        )));
    }
    if meta.labels.len() != labels.len() {
        return Err(ModelError::CheckpointMismatch(format!(
            "checkpoint has {} findings, expected {}",
            meta.labels.len(),
            labels.len()
        )));
    }
    if let Some((i, (got, want))) = meta
        .labels
        .iter()
        .zip(labels)
        .enumerate()
        .find(|(_, (got, want))| got.as_str() != **want)
    {
        return Err(ModelError::CheckpointMismatch(format!(
            "label order differs at output {i}: checkpoint has {got:?}, expected {want:?}"
        )));
    }
    Ok(())
}

/// What [`load_torchvision_backbone`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct BackboneLoad {
    /// Variables set from the file.
    pub loaded: usize,
    /// Keys of the file not used (torchvision's `classifier.*` and
    /// `num_batches_tracked`).
    pub ignored: Vec<String>,
    /// Variables the file does not have, left as initialised (the heads).
    pub initialised: Vec<String>,
}

/// Loads a torchvision DenseNet state dict (converted to safetensors by
/// `scripts/convert_torchvision_weights.py`) into the backbone of a model
/// built from `varmap`. Every backbone variable must be in the file with
/// its shape; the heads keep their initialisation; `classifier.*` and
/// `num_batches_tracked` are ignored.
pub fn load_torchvision_backbone(
    varmap: &VarMap,
    config: &ModelConfig,
    bytes: &[u8],
) -> Result<BackboneLoad> {
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| ModelError::CheckpointFormat(format!("not a safetensors file: {e}")))?;
    let names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
    let data = varmap
        .data()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut loaded = 0;
    let mut initialised = Vec::new();
    for (name, var) in data.iter() {
        if !config.is_backbone_param(name) {
            initialised.push(name.clone());
            continue;
        }
        let view = file.tensor(name).map_err(|_| {
            ModelError::Weights(format!(
                "the weights file has no `{name}` (is it a torchvision {}?)",
                config.architecture()
            ))
        })?;
        if view.shape() != var.dims() {
            return Err(ModelError::Weights(format!(
                "`{name}` has shape {:?} in the weights file, the model has {:?}",
                view.shape(),
                var.dims()
            )));
        }
        let tensor =
            candle_core::safetensors::Load::load(&view, var.device())?.to_dtype(var.dtype())?;
        var.set(&tensor)?;
        loaded += 1;
    }
    let mut ignored: Vec<String> = names
        .into_iter()
        .filter(|n| !data.contains_key(n))
        .collect();
    ignored.sort();
    initialised.sort();
    Ok(BackboneLoad {
        loaded,
        ignored,
        initialised,
    })
}
