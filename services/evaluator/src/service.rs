//! The evaluator service: `CheckpointCreated` events become durable
//! evaluation jobs, evaluated one at a time by a worker, registered and
//! decided on by the promotion policy, announced as `EvaluationCompleted`
//! (and `ModelPromoted` when the production pointer moves).
//!
//! * The handler checks an event before it is acknowledged: a run the
//!   store does not know, a checkpoint that is missing or whose sha256 is
//!   not the announced one, or a malformed event goes to the dead-letter
//!   topic with the reason. An accepted one becomes
//!   `evaluations/{run_id}/{sha12}/job.json`, written only if absent: a
//!   redelivered or duplicated event (same checkpoint bytes) starts no
//!   second evaluation.
//! * The worker evaluates jobs one at a time, off the async threads, each
//!   under a lease (`.../lease.json`) so two replicas never evaluate one
//!   checkpoint twice. On start it resumes every job that is not done: a
//!   killed evaluator's evaluation is finished by the next one.
//! * SIGTERM stops an evaluation between batches; its job stays pending.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chexvision_bus::{decode_event, publish_event, Bus, Delivery, Handler, HandlerError};
use chexvision_config::Topics;
use chexvision_events::{
    Body, CheckpointCreated, Envelope, EvaluationCompleted, ModelPromoted, ObjectRef,
};
use chexvision_models::candle_core::Device;
use chexvision_registry::Registry;
use chexvision_service::{store_failure, Service, Task};
use chexvision_store::{claim, get_json, put_json, release, renew, ClaimOutcome, ObjectStore};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::evaluate::{
    evaluate, CheckpointChoice, EvalHooks, EvalProgress, EvaluationRequest, ModelChoice,
};
use crate::promote::{register_and_decide, Promotion};
use crate::settings::{CheckpointSelection, EvaluatorServiceSettings};
use crate::{EvalError, EvaluatorMetrics};

/// The `producer` of the evaluator's events.
pub const PRODUCER: &str = "chexvision-evaluator";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Done,
    Failed,
}

/// `evaluations/{run_id}/{sha12}/job.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationJob {
    pub run_id: String,
    pub checkpoint_key: String,
    pub checkpoint_sha256: String,
    pub checkpoint_size: u64,
    pub epoch: u32,
    pub status: JobStatus,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub report_key: Option<String>,
    pub correlation_id: String,
    pub event_id: String,
    pub accepted_at_unix_ms: u64,
}

pub fn job_key(run_id: &str, sha256: &str) -> String {
    let sha12: String = sha256.chars().take(12).collect();
    format!("evaluations/{run_id}/{sha12}/job.json")
}

fn lease_of(job_key: &str) -> String {
    job_key.replace("/job.json", "/lease.json")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What became of a checkpoint event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// A new job (its key), queued for the worker.
    Queued(String),
    /// The job exists: nothing started.
    Duplicate(String),
    /// Not one the settings evaluate.
    Skipped,
}

/// Consumes `CheckpointCreated`.
pub struct EvaluatorHandler {
    pub store: Arc<dyn ObjectStore>,
    pub topics: Topics,
    pub settings: EvaluatorServiceSettings,
    pub jobs: mpsc::UnboundedSender<String>,
    pub metrics: Option<EvaluatorMetrics>,
}

fn malformed(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Malformed(e.to_string())
}

impl EvaluatorHandler {
    /// Checks the event and records its job; `Ok` means the event may be
    /// acknowledged.
    pub async fn accept(
        &self,
        event: &CheckpointCreated,
        envelope: &Envelope,
    ) -> Result<Accepted, HandlerError> {
        let wanted = match self.settings.evaluate {
            CheckpointSelection::BestWhenFinal => event.is_final,
            CheckpointSelection::EveryBest => event.is_best,
            CheckpointSelection::All => true,
        };
        if !wanted {
            return Ok(Accepted::Skipped);
        }
        let run_id = &event.run_id;
        if !chexvision_dataset::is_valid_id(run_id) {
            return Err(malformed(format!("`{run_id}` is not a run id")));
        }
        match self
            .store
            .head(&chexvision_trainer::state_key(run_id))
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                return Err(malformed(format!(
                    "unknown run `{run_id}`: no runs/{run_id}/state.json in {}",
                    self.store.uri("")
                )))
            }
            Err(e) => return Err(store_failure("reading the run", &e)),
        }
        let announced = event
            .checkpoint
            .as_ref()
            .ok_or_else(|| malformed("the event names no checkpoint"))?;
        // Which checkpoint: the announced one, or (at the end of a run) the
        // run's best, with the sha256 its history recorded.
        let (key, sha256, size, epoch) =
            if self.settings.evaluate == CheckpointSelection::BestWhenFinal {
                let history: Vec<chexvision_trainer::EpochRecord> =
                    get_json(self.store.as_ref(), &format!("runs/{run_id}/history.json"))
                        .await
                        .map_err(|e| store_failure("reading the run's history", &e))?
                        .unwrap_or_default();
                let best = history
                    .iter()
                    .rev()
                    .find(|r| r.best)
                    .ok_or_else(|| malformed(format!("run {run_id} has no best checkpoint")))?;
                (
                    format!(
                        "runs/{run_id}/checkpoints/epoch-{:03}.safetensors",
                        best.epoch
                    ),
                    best.checkpoint_sha256.clone(),
                    best.checkpoint_bytes,
                    best.epoch,
                )
            } else {
                let key = match CheckpointChoice::parse(&announced.uri, &self.store.uri("")) {
                    Ok(CheckpointChoice::Key(key)) => key,
                    Ok(_) => return Err(malformed("the checkpoint URI names no object")),
                    Err(e) => return Err(malformed(e)),
                };
                (
                    key,
                    announced.sha256.clone(),
                    announced.size_bytes,
                    event.epoch,
                )
            };
        chexvision_store::validate_key(&key).map_err(malformed)?;
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed(format!(
                "checkpoint sha256 `{sha256}` is not a sha256"
            )));
        }
        let job_key = job_key(run_id, &sha256);
        if self.store.head(&job_key).await.is_ok() {
            return Ok(Accepted::Duplicate(job_key));
        }
        // The bytes must be the announced ones before the job is accepted.
        let bytes = match self.store.get(&key).await {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => {
                return Err(malformed(format!("checkpoint {key} does not exist")))
            }
            Err(e) => return Err(store_failure(&format!("reading {key}"), &e)),
        };
        let actual = tokio::task::spawn_blocking(move || chexvision_store::sha256_hex(&bytes))
            .await
            .map_err(|e| HandlerError::Failed(format!("hashing the checkpoint: {e}")))?;
        if actual != sha256 {
            return Err(malformed(format!(
                "checkpoint {key} is corrupt: sha256 {actual}, announced {sha256}"
            )));
        }
        let meta = envelope.meta.clone().unwrap_or_default();
        let job = EvaluationJob {
            run_id: run_id.clone(),
            checkpoint_key: key,
            checkpoint_sha256: sha256,
            checkpoint_size: size,
            epoch,
            status: JobStatus::Pending,
            error: None,
            report_key: None,
            correlation_id: meta.correlation_id,
            event_id: meta.event_id,
            accepted_at_unix_ms: now_ms(),
        };
        let bytes =
            serde_json::to_vec_pretty(&job).map_err(|e| HandlerError::Failed(e.to_string()))?;
        match self.store.put_if_absent(&job_key, Bytes::from(bytes)).await {
            Ok(_) => {}
            Err(e) if e.is_exists() => return Ok(Accepted::Duplicate(job_key)),
            Err(e) => return Err(store_failure("recording the job", &e)),
        }
        tracing::info!(%run_id, job = %job_key, "evaluation accepted");
        let _ = self.jobs.send(job_key.clone());
        Ok(Accepted::Queued(job_key))
    }
}

#[async_trait]
impl Handler for EvaluatorHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let envelope = decode_event(delivery, &self.topics)?;
        let accepted = match &envelope.body {
            Some(Body::CheckpointCreated(event)) => self.accept(event, &envelope).await?,
            other => {
                return Err(malformed(format!(
                    "expected a checkpoint announcement, got {:?}",
                    other.as_ref().map(Body::kind)
                )))
            }
        };
        if let Some(metrics) = &self.metrics {
            let outcome = match accepted {
                Accepted::Queued(_) => "accepted",
                Accepted::Duplicate(_) => "duplicate",
                Accepted::Skipped => "skipped",
            };
            metrics.checkpoints.with_label_values(&[outcome]).inc();
        }
        Ok(())
    }
}

/// Every job that is not done, oldest first.
pub async fn pending_jobs(store: &dyn ObjectStore) -> Result<Vec<String>, EvalError> {
    let listing = store
        .list("evaluations/")
        .await
        .map_err(|e| EvalError::Store(format!("listing evaluations/: {e}")))?;
    let mut pending = Vec::new();
    for meta in listing.iter().filter(|m| m.key.ends_with("/job.json")) {
        match get_json::<EvaluationJob>(store, &meta.key).await {
            Ok(Some(job)) if job.status == JobStatus::Pending => {
                pending.push((job.accepted_at_unix_ms, meta.key.clone()))
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(job = %meta.key, error = %e, "unreadable evaluation job"),
        }
    }
    pending.sort();
    Ok(pending.into_iter().map(|(_, k)| k).collect())
}

/// Evaluates the queued jobs one at a time.
pub struct EvaluatorWorker {
    pub store: Arc<dyn ObjectStore>,
    pub bus: Arc<dyn Bus>,
    pub topics: Topics,
    pub settings: EvaluatorServiceSettings,
    pub device: Device,
    pub metrics: Option<EvaluatorMetrics>,
    pub registry: Registry,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    Done,
    Interrupted,
    HeldElsewhere,
    Failed(String),
    /// The store did not answer, or another writer held the registry past
    /// the job's retries: the job stays pending and a later scan takes it
    /// up again (neither costs an evaluation).
    Postponed(String),
    /// Done already, or no such job.
    Nothing,
}

impl EvaluatorWorker {
    /// Runs queued jobs and those a scan finds, until shutdown.
    pub async fn run(
        self: Arc<Self>,
        mut jobs: mpsc::UnboundedReceiver<String>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let rescan = Duration::from_secs(self.settings.rescan_secs.max(1));
        let mut next_scan = tokio::time::Instant::now();
        loop {
            let keys = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = jobs.recv() => match next {
                    Some(key) => vec![key],
                    None => break,
                },
                _ = tokio::time::sleep_until(next_scan) => {
                    next_scan = tokio::time::Instant::now() + rescan;
                    match pending_jobs(self.store.as_ref()).await {
                        Ok(keys) => keys,
                        Err(e) => {
                            tracing::warn!(error = %e, "scanning for evaluations failed; trying again later");
                            Vec::new()
                        }
                    }
                }
            };
            for key in keys {
                if self.clone().run_job(&key, &shutdown).await == JobOutcome::Interrupted {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Evaluates one job if it is pending and this replica gets its lease.
    pub async fn run_job(self: Arc<Self>, key: &str, shutdown: &CancellationToken) -> JobOutcome {
        let job = match get_json::<EvaluationJob>(self.store.as_ref(), key).await {
            Ok(Some(job)) if job.status == JobStatus::Pending => job,
            Ok(_) => return JobOutcome::Nothing,
            Err(e) if e.is_unavailable() => return JobOutcome::Postponed(e.to_string()),
            Err(e) => return JobOutcome::Failed(e.to_string()),
        };
        let owner = self.settings.instance();
        let lease = lease_of(key);
        let ttl = Duration::from_secs(self.settings.lease_ttl_secs);
        let settle = Duration::from_millis(self.settings.lease_settle_ms);
        match claim(self.store.as_ref(), &lease, &owner, ttl, settle).await {
            Ok(ClaimOutcome::Owned) => {}
            Ok(ClaimOutcome::HeldBy(_)) => return JobOutcome::HeldElsewhere,
            Err(e) if e.is_unavailable() => return JobOutcome::Postponed(e.to_string()),
            Err(e) => return JobOutcome::Failed(e.to_string()),
        }
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            let started = Instant::now();
            let result = self.clone().attempt(job.clone(), shutdown.clone()).await;
            match result {
                Ok(()) => {
                    if let Some(m) = &self.metrics {
                        m.duration.observe(started.elapsed().as_secs_f64());
                        m.evaluations.with_label_values(&["completed"]).inc();
                    }
                    break JobOutcome::Done;
                }
                Err(EvalError::Interrupted) => {
                    if let Some(m) = &self.metrics {
                        m.evaluations.with_label_values(&["interrupted"]).inc();
                    }
                    break JobOutcome::Interrupted;
                }
                Err(e) if e.may_pass() && attempt < self.settings.max_attempts => {
                    tracing::warn!(job = %key, attempt, error = %e, "evaluation failed; trying again");
                    tokio::select! {
                        _ = shutdown.cancelled() => break JobOutcome::Interrupted,
                        _ = tokio::time::sleep(Duration::from_secs(2 << attempt.min(6))) => continue,
                    }
                }
                Err(e @ EvalError::RegistryBusy(_)) => {
                    // Not the job's fault either: a replica that died
                    // holds the registry until its claim expires.
                    tracing::warn!(job = %key, error = %e, "another writer holds the registry: the evaluation stays pending; a later scan takes it up again");
                    break JobOutcome::Postponed(e.to_string());
                }
                Err(e) if e.may_pass() && self.store_unreachable(&job).await => {
                    // Attempts spent during an outage: not the job's fault.
                    tracing::warn!(job = %key, error = %e, "the store does not answer: the evaluation stays pending; a later scan takes it up again");
                    break JobOutcome::Postponed(e.to_string());
                }
                Err(e) => {
                    tracing::error!(job = %key, error = %e, "evaluation failed");
                    if let Some(m) = &self.metrics {
                        m.evaluations.with_label_values(&["failed"]).inc();
                    }
                    let mut failed = job.clone();
                    failed.status = JobStatus::Failed;
                    failed.error = Some(e.to_string());
                    if let Err(e) = put_json(self.store.as_ref(), key, &failed).await {
                        tracing::error!(job = %key, error = %e, "could not mark the evaluation failed");
                    }
                    break JobOutcome::Failed(e.to_string());
                }
            }
        };
        if let Err(e) = release(self.store.as_ref(), &lease, &owner).await {
            tracing::warn!(job = %key, error = %e, "could not release the evaluation's lease");
        }
        outcome
    }

    /// Whether the store fails to answer for what this job reads first (its
    /// checkpoint), as opposed to answering with an error.
    async fn store_unreachable(&self, job: &EvaluationJob) -> bool {
        matches!(self.store.head(&job.checkpoint_key).await, Err(e) if e.is_unavailable())
    }

    async fn attempt(
        self: Arc<Self>,
        job: EvaluationJob,
        shutdown: CancellationToken,
    ) -> Result<(), EvalError> {
        let runtime = tokio::runtime::Handle::current();
        let worker = self.clone();
        let stop = shutdown.clone();
        let evaluated = job.clone();
        let (outcome, promotion) =
            tokio::task::spawn_blocking(move || worker.evaluate_job(runtime, &evaluated, &stop))
                .await
                .map_err(|e| EvalError::Invalid(format!("evaluation thread: {e}")))??;
        // Announce, then mark done: a crash in between announces again
        // (at least once), never loses the announcement.
        let report = &outcome.report;
        let version = promotion.record.version.clone();
        if let Some(m) = &self.metrics {
            m.observe_report(&version, report);
            m.images_per_second.set(report.timings.images_per_second);
            if let Some(entry) = &promotion.entry {
                m.promotions
                    .with_label_values(&[if entry.action.moves_pointer() {
                        "promoted"
                    } else {
                        "refused"
                    }])
                    .inc();
            }
            if let Some(change) = &promotion.change {
                m.observe_production(&change.pointer, &change.record);
            }
        }
        // The bus may be down: the evaluation is not redone for that, its
        // announcement is retried until it goes through or shutdown (then
        // the job is still pending and the next start evaluates it again).
        let mut pause = Duration::from_millis(500);
        while let Err(e) = self.announce(&job, &outcome, &promotion).await {
            tracing::warn!(error = %e, ?pause, "announcing the evaluation failed; trying again");
            tokio::select! {
                _ = shutdown.cancelled() => return Err(EvalError::Interrupted),
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(30));
        }
        let key = job_key(&job.run_id, &job.checkpoint_sha256);
        let mut done = job;
        done.status = JobStatus::Done;
        done.report_key = Some(outcome.report_key.clone());
        put_json(self.store.as_ref(), &key, &done)
            .await
            .map_err(|e| EvalError::Store(e.to_string()))?;
        tracing::info!(run_id = %report.run_id, %version, macro_auc = ?report.macro_auc, "evaluation done");
        Ok(())
    }

    /// The blocking part: evaluation, registry, lease renewals.
    fn evaluate_job(
        &self,
        runtime: tokio::runtime::Handle,
        job: &EvaluationJob,
        shutdown: &CancellationToken,
    ) -> Result<(crate::EvaluationOutcome, Promotion), EvalError> {
        let lease = lease_of(&job_key(&job.run_id, &job.checkpoint_sha256));
        let owner = self.settings.instance();
        let ttl = Duration::from_secs(self.settings.lease_ttl_secs);
        let renewed = std::cell::Cell::new(Instant::now());
        let lost = std::cell::Cell::new(false);
        let interrupted = || {
            if shutdown.is_cancelled() || lost.get() {
                return true;
            }
            if renewed.get().elapsed() >= ttl / 3 {
                match runtime.block_on(renew(self.store.as_ref(), &lease, &owner, ttl)) {
                    Ok(true) => renewed.set(Instant::now()),
                    Ok(false) => {
                        lost.set(true);
                        return true;
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing the evaluation's lease failed"),
                }
            }
            false
        };
        let request = EvaluationRequest {
            model: ModelChoice {
                run_id: job.run_id.clone(),
                checkpoint: CheckpointChoice::Key(job.checkpoint_key.clone()),
                expected_sha256: Some(job.checkpoint_sha256.clone()),
            },
            ensemble: Vec::new(),
            dataset_id: None,
            settings: self.settings.evaluation.clone(),
        };
        let metrics = self.metrics.clone();
        let mut progress = |p: EvalProgress| {
            if let (Some(m), EvalProgress::Scored { images }) = (&metrics, p) {
                m.images_scored.inc_by(images as u64);
            }
        };
        let outcome = evaluate(
            self.store.clone(),
            runtime.clone(),
            &request,
            &self.device,
            EvalHooks {
                progress: &mut progress,
                interrupted: &interrupted,
            },
        )?;
        let promotion = if self.settings.promote {
            register_and_decide(
                self.store.clone(),
                &runtime,
                &self.registry,
                &outcome,
                &self.settings.promotion,
                &self.settings.evaluation,
                &self.device,
                "evaluator",
                &interrupted,
            )?
        } else {
            Promotion {
                record: crate::promote::record_of(&outcome),
                entry: None,
                change: None,
            }
        };
        Ok((outcome, promotion))
    }

    async fn announce(
        &self,
        job: &EvaluationJob,
        outcome: &crate::EvaluationOutcome,
        promotion: &Promotion,
    ) -> Result<(), EvalError> {
        let report = &outcome.report;
        let model = &report.model;
        let (correlation, causation) = (&job.correlation_id, &job.event_id);
        let checkpoint = ObjectRef {
            uri: model.checkpoint_uri.clone(),
            sha256: model.checkpoint_sha256.clone(),
            size_bytes: job.checkpoint_size,
        };
        let completed = EvaluationCompleted {
            run_id: report.run_id.clone(),
            checkpoint: Some(checkpoint.clone()),
            report: Some(ObjectRef {
                uri: self.store.uri(&outcome.report_key),
                sha256: outcome.report_sha256.clone(),
                size_bytes: outcome.report_size,
            }),
            split: (if report.split == "validation" {
                chexvision_events::Split::Validation
            } else {
                chexvision_events::Split::Test
            }) as i32,
            macro_auc: report.macro_auc.unwrap_or(f64::NAN),
            binary_auc: report.binary.auc.unwrap_or(f64::NAN),
            per_class_auc: report
                .findings
                .iter()
                .filter_map(|f| f.auc.map(|a| (f.name.clone(), a)))
                .collect(),
            promoted: promotion.change.is_some(),
        };
        let event = Envelope::continuing(correlation, causation, completed, PRODUCER);
        publish_event(
            self.bus.as_ref(),
            &self.topics.evaluations,
            &report.run_id,
            &event,
        )
        .await
        .map_err(|e| EvalError::Store(format!("publishing EvaluationCompleted: {e}")))?;
        if let Some(change) = &promotion.change {
            let promoted = model_promoted(self.store.as_ref(), change);
            let event = Envelope::continuing(correlation, causation, promoted, PRODUCER);
            publish_event(
                self.bus.as_ref(),
                &self.topics.models_promoted,
                chexvision_registry::POINTER_KEY,
                &event,
            )
            .await
            .map_err(|e| EvalError::Store(format!("publishing ModelPromoted: {e}")))?;
        }
        Ok(())
    }
}

/// The `ModelPromoted` event of a pointer change (the evaluator's and the CLI's).
pub fn model_promoted(
    store: &dyn ObjectStore,
    change: &chexvision_registry::PointerChange,
) -> ModelPromoted {
    ModelPromoted {
        run_id: change.record.run_id.clone(),
        model_version: change.record.version.clone(),
        checkpoint: Some(ObjectRef {
            uri: change.record.checkpoint.uri.clone(),
            sha256: change.record.checkpoint.sha256.clone(),
            size_bytes: change.record.checkpoint.size_bytes,
        }),
        registry: Some(ObjectRef {
            uri: store.uri(chexvision_registry::POINTER_KEY),
            sha256: String::new(),
            size_bytes: 0,
        }),
        previous_model_version: change.previous_version.clone().unwrap_or_default(),
        macro_auc: change.record.metrics.macro_auc.unwrap_or(f64::NAN),
        reason: change.pointer.reason.clone(),
    }
}

/// Restores the model gauges from the registry and recent reports.
pub async fn restore_metrics(
    store: &dyn ObjectStore,
    registry: &Registry,
    metrics: &EvaluatorMetrics,
    recent: usize,
) -> Result<usize, EvalError> {
    let records = registry.list().await?;
    let mut restored = 0;
    for record in records.iter().rev().take(recent) {
        match get_json::<crate::Report>(store, &record.evaluation.report_key).await {
            Ok(Some(report)) => {
                metrics.observe_report(&record.version, &report);
                restored += 1;
            }
            Ok(None) => {
                tracing::warn!(report = %record.evaluation.report_key, "a registered model's report is missing")
            }
            Err(e) => {
                tracing::warn!(report = %record.evaluation.report_key, error = %e, "unreadable report")
            }
        }
    }
    if let Some(pointer) = registry.production().await? {
        if let Some(record) = records.iter().find(|r| r.version == pointer.version) {
            metrics.observe_production(&pointer, record);
        }
    }
    Ok(restored)
}

/// Starts what `chexvision-evaluator` runs on a started service.
pub async fn spawn(
    service: &Service<EvaluatorServiceSettings>,
    device: Device,
) -> anyhow::Result<Vec<Task>> {
    let metrics = EvaluatorMetrics::register(&service.telemetry.registry)?;
    let settings = service.config.service.clone();
    let topics = service.config.topics.clone();
    let registry = Registry::for_instance(service.store.clone(), "evaluator", &settings.instance());
    match restore_metrics(
        service.store.as_ref(),
        &registry,
        &metrics,
        settings.restore_evaluations,
    )
    .await
    {
        Ok(n) => tracing::info!(evaluations = n, "model gauges restored"),
        Err(e) => tracing::warn!(error = %e, "could not restore the model gauges"),
    }
    service
        .create_topics(&[
            topics.checkpoints.as_str(),
            topics.evaluations.as_str(),
            topics.models_promoted.as_str(),
        ])
        .await?;
    let (jobs, queue) = mpsc::unbounded_channel();
    let worker = Arc::new(EvaluatorWorker {
        store: service.store.clone(),
        bus: service.bus.clone(),
        topics: topics.clone(),
        settings: settings.clone(),
        device,
        metrics: Some(metrics.clone()),
        registry,
    });
    let worker_task = (
        "worker".to_string(),
        tokio::spawn(worker.run(queue, service.shutdown.clone())),
    );
    let handler = EvaluatorHandler {
        store: service.store.clone(),
        topics: topics.clone(),
        settings: settings.clone(),
        jobs,
        metrics: Some(metrics),
    };
    let consumer = service.spawn_consumer(&settings.group, &[topics.checkpoints.as_str()], handler);
    let mut tasks = vec![consumer, worker_task];
    if settings.monitor.enabled {
        tasks.extend(spawn_monitor(service, &settings.monitor).await?);
    }
    Ok(tasks)
}

/// The production monitor's consumers (one group per topic: a feedback
/// being retried never holds predictions back) and its recompute loop.
async fn spawn_monitor(
    service: &Service<EvaluatorServiceSettings>,
    settings: &crate::MonitorSettings,
) -> anyhow::Result<Vec<Task>> {
    let topics = service.config.topics.clone();
    service
        .create_topics(&[topics.predictions.as_str(), topics.feedback.as_str()])
        .await?;
    let metrics = crate::monitor::MonitorMetrics::register(&service.telemetry.registry)?;
    let monitor =
        crate::monitor::Monitor::open(service.store.clone(), settings.clone(), metrics).await?;
    let predictions = service.spawn_consumer(
        &format!("{}-predictions", settings.group),
        &[topics.predictions.as_str()],
        crate::monitor::PredictionHandler {
            monitor: monitor.clone(),
            topics: topics.clone(),
        },
    );
    let feedback = service.spawn_consumer(
        &format!("{}-feedback", settings.group),
        &[topics.feedback.as_str()],
        crate::monitor::FeedbackHandler {
            monitor: monitor.clone(),
            topics: topics.clone(),
            max_attempts: service.config.kafka.handler_max_attempts.max(1),
        },
    );
    let recompute = (
        "production monitor".to_string(),
        tokio::spawn(monitor.run(service.shutdown.clone())),
    );
    Ok(vec![predictions, feedback, recompute])
}
