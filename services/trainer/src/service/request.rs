//! From a training request (or a dataset completion) to the settings of a
//! run: its named config and overrides, checked against the trainer's
//! limits, and a dataset that is ready at the run's image size.

use std::{collections::BTreeMap, path::Path};

use chexvision_bus::HandlerError;
use chexvision_config::{Config, Loader};
use chexvision_dataset::{dataset_ready_key, is_valid_id, ready_manifest_key, ReadyManifest};
use chexvision_events::{DatasetReady, Envelope, ModelKind, TrainingRequested};
use chexvision_models::ModelConfig;
use chexvision_store::{get_json, ObjectStore};

use crate::limits::{check_run, memory_budget};
use crate::plan::not_prepared;
use crate::{RunRequest, TrainSettings, TrainerServiceSettings};

use super::PRODUCER;

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request can never become a run as written.
    #[error("{0}")]
    Rejected(String),
    /// The store did not answer: the request waits, however long that
    /// lasts, and is never dead-lettered for it.
    #[error("{0}")]
    Unavailable(String),
    /// Something else that may pass (retried a bounded number of times).
    #[error("{0}")]
    Failed(String),
}

impl From<RequestError> for HandlerError {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::Rejected(reason) => HandlerError::Malformed(reason),
            RequestError::Unavailable(reason) => HandlerError::Unavailable(reason),
            RequestError::Failed(reason) => HandlerError::Failed(reason),
        }
    }
}

/// A store error while accepting a request.
pub(crate) fn store_failure(context: &str, error: &chexvision_store::StoreError) -> RequestError {
    let message = format!("{context}: {error}");
    if error.is_unavailable() {
        RequestError::Unavailable(message)
    } else {
        RequestError::Failed(message)
    }
}

/// A request resolved into everything its run needs.
#[derive(Debug, Clone)]
pub struct ResolvedRequest {
    pub run_id: String,
    pub dataset_id: String,
    pub synthetic: bool,
    pub settings: TrainSettings,
    pub request: RunRequest,
}

/// Which named config a request trains with.
pub fn config_name(settings: &TrainerServiceSettings, request: &TrainingRequested) -> String {
    if !request.config.is_empty() {
        return request.config.clone();
    }
    match ModelKind::try_from(request.model_kind) {
        Ok(ModelKind::Densenet121) => settings.densenet_config.clone(),
        Ok(ModelKind::SeResnet) => settings.se_resnet_config.clone(),
        _ => settings.default_config.clone(),
    }
}

/// Reads `configs_dir/{name}.yaml` (with what it inherits) and applies the
/// request's overrides, whose keys are paths in the config's `service:`
/// section (`recipe.epochs`, with or without the `service.` prefix). The
/// service's own environment does not reach a run's settings.
pub fn load_run_settings(
    configs_dir: &Path,
    name: &str,
    overrides: &BTreeMap<String, String>,
    origin: &str,
) -> Result<TrainSettings, RequestError> {
    if !crate::settings::is_valid_config_name(name) {
        return Err(RequestError::Rejected(format!(
            "config `{name}` is not a config name (letters, digits, _ and -)"
        )));
    }
    let path = configs_dir.join(format!("{name}.yaml"));
    if !path.is_file() {
        let mut known = training_configs(configs_dir);
        known.sort();
        return Err(RequestError::Rejected(format!(
            "unknown config `{name}`: no {} (known: {})",
            path.display(),
            known.join(", ")
        )));
    }
    let mut loader = Loader::new()
        .with_env(Vec::<(String, String)>::new())
        .file(Some(&path));
    for (key, value) in overrides {
        let relative = key.strip_prefix("service.").unwrap_or(key);
        let valid = !relative.is_empty()
            && relative.split('.').all(|part| {
                !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if !valid {
            return Err(RequestError::Rejected(format!(
                "override `{key}` is not a key path such as recipe.epochs"
            )));
        }
        loader = loader.override_value(
            &format!("service.{relative}"),
            value,
            &format!("{origin} override {key}"),
        );
    }
    let config: Config<TrainSettings> = loader
        .load()
        .map_err(|e| RequestError::Rejected(format!("config `{name}`: {e}")))?;
    Ok(config.service)
}

/// The newest dataset ready at `size_px`, by the time its ready marker was written.
pub async fn latest_ready_dataset(
    store: &dyn ObjectStore,
    size_px: u32,
) -> Result<Option<String>, RequestError> {
    let suffix = format!("/ready/{size_px}px/dataset-ready.json");
    let objects = store
        .list("datasets/")
        .await
        .map_err(|e| store_failure("listing datasets/", &e))?;
    Ok(objects
        .into_iter()
        .filter_map(|o| {
            let id = o.key.strip_prefix("datasets/")?.strip_suffix(&suffix)?;
            (is_valid_id(id) && o.key == dataset_ready_key(id, size_px))
                .then(|| (o.last_modified, id.to_owned()))
        })
        .max()
        .map(|(_, id)| id))
}

/// Checks the dataset is ready at the run's size (its ready manifest
/// exists) and reads whether it is synthetic.
async fn ready_dataset(
    store: &dyn ObjectStore,
    dataset_id: &str,
    size_px: u32,
) -> Result<(String, bool), RequestError> {
    let dataset_id = if dataset_id.is_empty() || dataset_id == "latest" {
        latest_ready_dataset(store, size_px).await?.ok_or_else(|| {
            RequestError::Rejected(format!(
                "dataset `latest`: no dataset is ready at {size_px} px"
            ))
        })?
    } else {
        dataset_id.to_owned()
    };
    if !is_valid_id(&dataset_id) {
        return Err(RequestError::Rejected(format!(
            "dataset id `{dataset_id}` is not valid (1-128 of A-Z a-z 0-9 . _ -)"
        )));
    }
    let key = ready_manifest_key(&dataset_id, size_px);
    match get_json::<ReadyManifest>(store, &key).await {
        Ok(Some(ready)) => Ok((dataset_id, ready.manifest.synthetic)),
        Ok(None) => Err(RequestError::Rejected(not_prepared(&dataset_id, size_px))),
        Err(e @ chexvision_store::StoreError::Decode { .. }) => Err(RequestError::Rejected(
            format!("{key} is not a ready manifest: {e}"),
        )),
        Err(e) => Err(store_failure(&format!("reading {key}"), &e)),
    }
}

fn architecture_matches(kind: ModelKind, model: &ModelConfig) -> bool {
    match kind {
        ModelKind::Unspecified => true,
        ModelKind::Densenet121 => matches!(model, ModelConfig::Densenet(_)),
        ModelKind::SeResnet => matches!(model, ModelConfig::SeResnet(_)),
    }
}

/// Turns a training request into a run (not yet recorded).
pub async fn resolve_request(
    store: &dyn ObjectStore,
    settings: &TrainerServiceSettings,
    request: &TrainingRequested,
    envelope: &Envelope,
) -> Result<ResolvedRequest, RequestError> {
    if !is_valid_id(&request.request_id) {
        return Err(RequestError::Rejected(format!(
            "request_id `{}` is not valid: it names the run, 1-128 of A-Z a-z 0-9 . _ -",
            request.request_id
        )));
    }
    let kind = ModelKind::try_from(request.model_kind).map_err(|_| {
        RequestError::Rejected(format!(
            "model_kind {} is not a model kind",
            request.model_kind
        ))
    })?;
    check_request_fields(request, &settings.limits)?;
    let name = config_name(settings, request);
    let overrides: BTreeMap<String, String> = request.overrides.clone().into_iter().collect();
    // Reading configs is file I/O: off the async threads.
    let run_settings = {
        let (dir, name, overrides) = (
            settings.configs_dir.clone(),
            name.clone(),
            overrides.clone(),
        );
        let origin = format!("request {}", request.request_id);
        tokio::task::spawn_blocking(move || {
            load_run_settings(Path::new(&dir), &name, &overrides, &origin)
        })
        .await
        .map_err(|e| RequestError::Failed(format!("reading the training config: {e}")))??
    };
    let problems = check_run(
        &run_settings,
        &settings.limits,
        memory_budget(&settings.limits),
        settings.limits.shard_bytes,
    );
    if !problems.is_empty() {
        return Err(RequestError::Rejected(format!(
            "config `{name}` with the request's overrides is outside this trainer's limits: {}",
            problems.join("; ")
        )));
    }
    if !architecture_matches(kind, &run_settings.model) {
        return Err(RequestError::Rejected(format!(
            "model_kind {} contradicts config `{name}`, which builds a {}",
            kind.as_str_name(),
            run_settings.model.architecture()
        )));
    }
    let pretrained = run_settings.pretrained.clone();
    let pretrained_missing = !pretrained.is_empty()
        && !tokio::task::spawn_blocking(move || Path::new(&pretrained).is_file())
            .await
            .unwrap_or(false);
    if pretrained_missing {
        return Err(RequestError::Rejected(format!(
            "config `{name}`: pretrained weights {} are not on this trainer",
            run_settings.pretrained
        )));
    }
    let (dataset_id, synthetic) =
        ready_dataset(store, &request.dataset_id, run_settings.image_size).await?;
    let meta = envelope.meta.clone().unwrap_or_default();
    Ok(ResolvedRequest {
        run_id: request.request_id.clone(),
        dataset_id,
        synthetic,
        settings: run_settings,
        request: RunRequest {
            request_id: request.request_id.clone(),
            config: name,
            overrides,
            reason: request.reason.clone(),
            requested_by: request.requested_by.clone(),
            correlation_id: meta.correlation_id,
            event_id: meta.event_id,
        },
    })
}

/// The request a `DatasetReady` stands for, when the service trains on new
/// datasets: one per dataset, size and manifest, so a repeated announcement
/// starts nothing. `None` for a dataset at another size than the config's.
pub fn dataset_ready_request(
    settings: &TrainerServiceSettings,
    ready: &DatasetReady,
) -> Result<Option<TrainingRequested>, RequestError> {
    let run_settings = load_run_settings(
        Path::new(&settings.configs_dir),
        &settings.dataset_ready_config,
        &BTreeMap::new(),
        "dataset_ready_config",
    )?;
    if ready.image_size_px != run_settings.image_size {
        return Ok(None);
    }
    let manifest_sha = ready
        .manifest
        .as_ref()
        .map(|m| m.sha256.as_str())
        .unwrap_or_default();
    if manifest_sha.len() < 12 || !is_valid_id(&ready.dataset_id) {
        return Err(RequestError::Rejected(format!(
            "DatasetReady for `{}` lacks a valid dataset id or manifest sha256",
            ready.dataset_id
        )));
    }
    let request_id = format!(
        "auto-{}-{}px-{}",
        ready.dataset_id,
        ready.image_size_px,
        &manifest_sha[..12]
    );
    if !is_valid_id(&request_id) {
        return Err(RequestError::Rejected(format!(
            "dataset id `{}` is too long to name a run",
            ready.dataset_id
        )));
    }
    Ok(Some(TrainingRequested {
        request_id,
        dataset_id: ready.dataset_id.clone(),
        model_kind: ModelKind::Unspecified as i32,
        config: settings.dataset_ready_config.clone(),
        overrides: Default::default(),
        reason: format!(
            "dataset {} ready at {} px",
            ready.dataset_id, ready.image_size_px
        ),
        requested_by: PRODUCER.into(),
    }))
}

/// The names of the training configs in `configs_dir`: YAML files whose
/// settings load as a run's (service configs and `platform.yaml` do not).
fn training_configs(configs_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(configs_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".yaml")?.to_owned();
            let loads = Loader::new()
                .with_env(Vec::<(String, String)>::new())
                .file(Some(&e.path()))
                .load::<Config<TrainSettings>>()
                .is_ok();
            loads.then_some(name)
        })
        .collect()
}

/// Bounds on a request's own fields (the settings it resolves to are
/// checked by [`check_run`]).
fn check_request_fields(
    request: &TrainingRequested,
    limits: &crate::RunLimits,
) -> Result<(), RequestError> {
    if request.overrides.len() > limits.max_overrides {
        return Err(RequestError::Rejected(format!(
            "{} overrides, above this trainer's limit of {} (service.limits.max_overrides)",
            request.overrides.len(),
            limits.max_overrides
        )));
    }
    if let Some((key, value)) = request
        .overrides
        .iter()
        .find(|(k, v)| k.len() + v.len() > limits.max_override_bytes)
    {
        return Err(RequestError::Rejected(format!(
            "override `{}` is {} bytes, above the limit of {} (service.limits.max_override_bytes)",
            key.chars().take(64).collect::<String>(),
            key.len() + value.len(),
            limits.max_override_bytes
        )));
    }
    for (field, text) in [
        ("reason", &request.reason),
        ("requested_by", &request.requested_by),
        ("config", &request.config),
        ("dataset_id", &request.dataset_id),
    ] {
        if text.len() > limits.max_text_bytes {
            return Err(RequestError::Rejected(format!(
                "{field} is {} bytes, above the limit of {} (service.limits.max_text_bytes)",
                text.len(),
                limits.max_text_bytes
            )));
        }
    }
    Ok(())
}
