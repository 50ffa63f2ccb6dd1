//! The trainer service: training requests (and, when configured, dataset
//! completions) from the bus become runs in the store, trained one at a
//! time by a worker.
//!
//! * A request is acknowledged once its run is durable: `config.yaml` and
//!   `state.json` written ([`create_run`]). From then on no crash loses it.
//! * Its run id is its request id, so a duplicate request finds the run and
//!   starts nothing.
//! * A request that cannot become a run (unknown config, bad override,
//!   dataset not ready, model kind that contradicts the config) is malformed:
//!   the consumer sends it to the dead-letter topic with the reason.
//! * On start the worker picks up every run that is unfinished or has
//!   checkpoints not yet announced, oldest first; SIGTERM stops a run
//!   before its next batch, and the restarted service redoes that epoch.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use async_trait::async_trait;
use chexvision_bus::{publish_event, Bus, Delivery, Handler, HandlerError};
use chexvision_config::{Config, Loader, Topics};
use chexvision_dataset::{dataset_ready_key, is_valid_id, manifest_key, Manifest};
use chexvision_events::{
    Body, CheckpointCreated, DatasetReady, Envelope, ModelKind, ObjectRef, TrainingRequested,
};
use chexvision_models::{candle_core::Device, ModelConfig};
use chexvision_store::ObjectStore;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    create_run, mark_failed, read_run_state, run_training, RunError, RunHooks, RunRequest,
    RunState, RunStatus, TrainSettings, TrainerMetrics, TrainerServiceSettings,
};

/// The `producer` of the trainer's events.
pub const PRODUCER: &str = "chexvision-trainer";

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request can never become a run as written.
    #[error("{0}")]
    Rejected(String),
    /// Something that may pass (the store unreachable).
    #[error("{0}")]
    Unavailable(String),
}

impl From<RequestError> for HandlerError {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::Rejected(reason) => HandlerError::Malformed(reason),
            RequestError::Unavailable(reason) => HandlerError::Failed(reason),
        }
    }
}

fn unavailable(context: &str, error: impl std::fmt::Display) -> RequestError {
    RequestError::Unavailable(format!("{context}: {error}"))
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
        let mut known: Vec<String> = std::fs::read_dir(configs_dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".yaml"))
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default();
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
        .map_err(|e| unavailable("listing datasets/", e))?;
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

/// Checks the dataset is ready at the run's size and reads whether it is synthetic.
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
    let marker = dataset_ready_key(&dataset_id, size_px);
    match store.head(&marker).await {
        Ok(_) => {}
        Err(e) if e.is_not_found() => {
            return Err(RequestError::Rejected(format!(
                "dataset `{dataset_id}` is not ready at {size_px} px (no {marker})"
            )))
        }
        Err(e) => return Err(unavailable(&format!("reading {marker}"), e)),
    }
    let key = manifest_key(&dataset_id);
    let bytes = match store.get(&key).await {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => {
            return Err(RequestError::Rejected(format!(
                "dataset `{dataset_id}` has no manifest ({key})"
            )))
        }
        Err(e) => return Err(unavailable(&format!("reading {key}"), e)),
    };
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| RequestError::Rejected(format!("{key} is not a manifest: {e}")))?;
    Ok((dataset_id, manifest.synthetic))
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
    let name = config_name(settings, request);
    let overrides: BTreeMap<String, String> = request.overrides.clone().into_iter().collect();
    let run_settings = load_run_settings(
        Path::new(&settings.configs_dir),
        &name,
        &overrides,
        &format!("request {}", request.request_id),
    )?;
    if !architecture_matches(kind, &run_settings.model) {
        return Err(RequestError::Rejected(format!(
            "model_kind {} contradicts config `{name}`, which builds a {}",
            kind.as_str_name(),
            run_settings.model.architecture()
        )));
    }
    if !run_settings.pretrained.is_empty() && !Path::new(&run_settings.pretrained).is_file() {
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

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// A new run, queued for the worker.
    Started(String),
    /// The run exists already: nothing started.
    Duplicate(String),
    /// Not for this trainer (a dataset at another size).
    Ignored,
}

/// Consumes training requests (and dataset completions when configured).
pub struct TrainerHandler {
    pub store: Arc<dyn ObjectStore>,
    pub settings: TrainerServiceSettings,
    /// Run ids for the worker.
    pub jobs: mpsc::UnboundedSender<String>,
    pub metrics: Option<TrainerMetrics>,
}

impl TrainerHandler {
    /// Records the run of a request and queues it; the request may be
    /// acknowledged once this returns `Ok`.
    pub async fn accept(
        &self,
        request: &TrainingRequested,
        envelope: &Envelope,
    ) -> Result<Accepted, RequestError> {
        // A duplicate is found before anything else is checked: the run it
        // names may have been made with configs since changed.
        if is_valid_id(&request.request_id) {
            if let Some(existing) = read_run_state(self.store.as_ref(), &request.request_id)
                .await
                .map_err(|e| unavailable("run state", e))?
            {
                tracing::info!(run_id = %existing.run_id, status = ?existing.status, "duplicate request: the run exists");
                return Ok(Accepted::Duplicate(existing.run_id));
            }
        }
        let resolved =
            resolve_request(self.store.as_ref(), &self.settings, request, envelope).await?;
        let state = RunState::accepted(
            &resolved.run_id,
            &resolved.dataset_id,
            resolved.synthetic,
            &resolved.settings,
            Some(resolved.request),
        );
        match create_run(self.store.as_ref(), &state).await {
            Ok(()) => {}
            Err(RunError::Conflict(_)) => return Ok(Accepted::Duplicate(state.run_id)),
            Err(e) => return Err(unavailable("recording the run", e)),
        }
        tracing::info!(
            run_id = %state.run_id,
            dataset_id = %state.dataset_id,
            config = %state.request.as_ref().map(|r| r.config.as_str()).unwrap_or(""),
            "run accepted"
        );
        if let Some(metrics) = &self.metrics {
            metrics.queued_runs.inc();
        }
        // The worker is gone only at shutdown; the run is recorded and the
        // next start picks it up.
        let _ = self.jobs.send(state.run_id.clone());
        Ok(Accepted::Started(state.run_id))
    }

    fn count(&self, accepted: &Accepted) {
        if let Some(metrics) = &self.metrics {
            let outcome = match accepted {
                Accepted::Started(_) => "accepted",
                Accepted::Duplicate(_) => "duplicate",
                Accepted::Ignored => "ignored",
            };
            metrics.requests.with_label_values(&[outcome]).inc();
        }
    }
}

#[async_trait]
impl Handler for TrainerHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let envelope = Envelope::decode_checked(&delivery.payload)
            .map_err(|e| HandlerError::Malformed(e.to_string()))?;
        let accepted = match &envelope.body {
            Some(Body::TrainingRequested(request)) => self.accept(request, &envelope).await?,
            Some(Body::DatasetReady(ready)) if self.settings.train_on_dataset_ready => {
                match dataset_ready_request(&self.settings, ready)? {
                    Some(request) => self.accept(&request, &envelope).await?,
                    None => Accepted::Ignored,
                }
            }
            other => {
                return Err(HandlerError::Malformed(format!(
                    "expected a training request{}, got {:?}",
                    if self.settings.train_on_dataset_ready {
                        " or a dataset completion"
                    } else {
                        ""
                    },
                    other.as_ref().map(Body::kind)
                )))
            }
        };
        self.count(&accepted);
        Ok(())
    }
}

/// Every run a restarted trainer has to finish or announce, oldest first.
pub async fn pending_runs(store: &dyn ObjectStore) -> Result<Vec<String>, RunError> {
    let objects = store
        .list("runs/")
        .await
        .map_err(|e| RunError::Store(format!("listing runs/: {e}")))?;
    let mut pending = Vec::new();
    for object in objects {
        let Some(run_id) = object
            .key
            .strip_prefix("runs/")
            .and_then(|k| k.strip_suffix("/state.json"))
        else {
            continue;
        };
        if run_id.contains('/') {
            continue;
        }
        match read_run_state(store, run_id).await {
            Ok(Some(state)) if state.needs_work() => {
                pending.push((state.created_at_unix, state.run_id))
            }
            Ok(_) => {}
            // One unreadable state must not keep the others from resuming.
            Err(e) => {
                tracing::warn!(%run_id, error = %e, "skipping a run whose state is unreadable")
            }
        }
    }
    pending.sort();
    Ok(pending.into_iter().map(|(_, id)| id).collect())
}

/// Trains the queued runs one at a time.
pub struct TrainerWorker {
    pub store: Arc<dyn ObjectStore>,
    pub bus: Arc<dyn Bus>,
    pub topics: Topics,
    pub settings: TrainerServiceSettings,
    pub device: Device,
    pub metrics: Option<TrainerMetrics>,
}

/// How one run ended in the worker.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Finished(RunStatus),
    /// Shutdown: the run stays `running` and resumes on the next start.
    Interrupted,
    Failed(String),
}

impl TrainerWorker {
    /// Runs jobs from `jobs` until shutdown or until every sender is gone.
    pub async fn run(
        self: Arc<Self>,
        mut jobs: mpsc::UnboundedReceiver<String>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let run_id = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = jobs.recv() => match next {
                    Some(run_id) => run_id,
                    None => break,
                },
            };
            if let Some(metrics) = &self.metrics {
                metrics.queued_runs.dec();
            }
            if self.clone().run_job(&run_id, &shutdown).await == JobOutcome::Interrupted {
                break;
            }
        }
        Ok(())
    }

    /// Trains (or resumes, or announces) one run, retrying failures that
    /// may pass; a run that cannot succeed is marked failed.
    pub async fn run_job(
        self: Arc<Self>,
        run_id: &str,
        shutdown: &CancellationToken,
    ) -> JobOutcome {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self
                .clone()
                .attempt(run_id.to_owned(), shutdown.clone())
                .await;
            let retry = match &outcome {
                Err(RunError::Interrupted { epoch }) => {
                    tracing::info!(%run_id, epoch, "run interrupted; it resumes on the next start");
                    self.count("interrupted");
                    return JobOutcome::Interrupted;
                }
                Ok(state) => {
                    let outcome = match state.status {
                        RunStatus::Completed => "completed",
                        RunStatus::StoppedEarly => "stopped_early",
                        RunStatus::Failed => "failed",
                        RunStatus::Running => "interrupted",
                    };
                    tracing::info!(%run_id, status = ?state.status, epochs = state.epochs_done, best_macro_auc = ?state.early_stopping.best, "run ended");
                    self.count(outcome);
                    return JobOutcome::Finished(state.status);
                }
                // The store or the data path: may pass.
                Err(RunError::Store(_) | RunError::Loader(_)) => {
                    attempt < self.settings.max_attempts
                }
                Err(_) => false,
            };
            let error = outcome.err().map(|e| e.to_string()).unwrap_or_default();
            if retry {
                let pause =
                    Duration::from_secs(self.settings.retry_backoff_secs << (attempt - 1).min(6));
                tracing::warn!(%run_id, attempt, error = %error, ?pause, "run failed; trying again");
                tokio::select! {
                    _ = shutdown.cancelled() => return JobOutcome::Interrupted,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
            tracing::error!(%run_id, attempt, error = %error, "run failed");
            if let Err(e) = mark_failed(self.store.as_ref(), run_id, &error).await {
                tracing::error!(%run_id, error = %e, "could not mark the run failed");
            }
            self.count("failed");
            return JobOutcome::Failed(error);
        }
    }

    fn count(&self, outcome: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.runs.with_label_values(&[outcome]).inc();
        }
    }

    async fn attempt(
        self: Arc<Self>,
        run_id: String,
        shutdown: CancellationToken,
    ) -> Result<RunState, RunError> {
        let Some(state) = read_run_state(self.store.as_ref(), &run_id).await? else {
            return Err(RunError::Data(format!("run {run_id} has no state.json")));
        };
        let runtime = tokio::runtime::Handle::current();
        let worker = self.clone();
        tokio::task::spawn_blocking(move || worker.train(runtime, &state, &shutdown))
            .await
            .map_err(|e| RunError::Data(format!("training thread: {e}")))?
    }

    /// The blocking part: the run itself, its metrics and announcements.
    fn train(
        &self,
        runtime: tokio::runtime::Handle,
        state: &RunState,
        shutdown: &CancellationToken,
    ) -> Result<RunState, RunError> {
        let run_id = state.run_id.as_str();
        if let Some(metrics) = &self.metrics {
            metrics.run_info.reset();
            metrics
                .run_info
                .with_label_values(&[
                    run_id,
                    &state.dataset_id,
                    state.settings.model.architecture(),
                ])
                .set(1);
        }
        let request = state.request.clone().unwrap_or_default();
        let model_kind = match state.settings.model {
            ModelConfig::Densenet(_) => ModelKind::Densenet121,
            ModelConfig::SeResnet(_) => ModelKind::SeResnet,
        };
        let mut progress = |p| {
            if let Some(metrics) = &self.metrics {
                metrics.observe(p);
            }
        };
        let mut written = |w: crate::WrittenCheckpoint| {
            let body = CheckpointCreated {
                run_id: run_id.to_owned(),
                dataset_id: state.dataset_id.clone(),
                model_kind: model_kind as i32,
                epoch: w.epoch,
                checkpoint: Some(ObjectRef {
                    uri: self.store.uri(&w.key),
                    sha256: w.sha256.clone(),
                    size_bytes: w.size_bytes,
                }),
                is_best: w.best,
                is_final: w.last,
                val_macro_auc: w.val_macro_auc.unwrap_or(f64::NAN),
                val_binary_auc: w.val_binary_auc.unwrap_or(f64::NAN),
                request_id: request.request_id.clone(),
            };
            let mut event = Envelope::new(body, PRODUCER);
            if let Some(meta) = event.meta.as_mut() {
                if !request.correlation_id.is_empty() {
                    meta.correlation_id = request.correlation_id.clone();
                    meta.causation_id = request.event_id.clone();
                }
            }
            match runtime.block_on(publish_event(
                self.bus.as_ref(),
                &self.topics.checkpoints,
                run_id,
                &event,
            )) {
                Ok(()) => {
                    if let Some(metrics) = &self.metrics {
                        metrics.checkpoints.inc();
                    }
                    true
                }
                Err(e) => {
                    tracing::warn!(%run_id, epoch = w.epoch, error = %e, "checkpoint not announced; offered again later");
                    false
                }
            }
        };
        let interrupted = || shutdown.is_cancelled();
        run_training(
            self.store.clone(),
            runtime.clone(),
            run_id,
            &state.dataset_id,
            &state.settings,
            &self.device,
            RunHooks {
                progress: &mut progress,
                written: &mut written,
                interrupted: &interrupted,
                loader_wait: self.metrics.as_ref().map(|m| m.loader_wait.clone()),
            },
        )
    }
}
