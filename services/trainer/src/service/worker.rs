//! The worker side of the trainer: runs are trained one at a time, each by
//! the one replica that holds its lease (`runs/{id}/lease.json`).
//!
//! * On start, and every `rescan_secs` while idle, the worker looks for
//!   runs that need work (unfinished, or checkpoints not yet announced):
//!   a killed trainer's runs resume, and a run whose replica died is taken
//!   over once its lease expires.
//! * Before a run starts (or resumes) its settings are checked against the
//!   limits again: a stored run outside them is marked failed with the
//!   reason, never started into a crash. A state this build cannot read is
//!   marked failed too, instead of being skipped at every start.
//! * The lease is renewed while the run trains and validates; a replica
//!   that finds another holding it stops at the next batch. SIGTERM stops
//!   the run before its next batch (validation included) and hands the
//!   lease back; the epoch is redone from its start by whoever resumes it.

use std::{
    cell::Cell,
    sync::Arc,
    time::{Duration, Instant},
};

use chexvision_bus::{publish_event, Bus};
use chexvision_config::Topics;
use chexvision_events::{CheckpointCreated, Envelope, ModelKind, ObjectRef};
use chexvision_models::{candle_core::Device, ModelConfig};
use chexvision_store::{claim, release, renew, ClaimOutcome, ObjectStore};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::limits::{check_run, memory_budget};
use crate::state::{lease_key, StatusOnly};
use crate::{
    mark_failed, read_run_state, run_training, store_error, RunError, RunHooks, RunState,
    RunStatus, TrainerMetrics, TrainerServiceSettings,
};

use super::PRODUCER;

/// Every run a trainer has to finish or announce, oldest first. A state
/// that cannot be read is marked failed with the reason (and left out).
pub async fn pending_runs(store: &dyn ObjectStore) -> Result<Vec<String>, RunError> {
    let objects = store
        .list("runs/")
        .await
        .map_err(|e| store_error("listing runs/", &e))?;
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
            Err(RunError::Data(reason)) => {
                let already_failed = store
                    .get(&object.key)
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<StatusOnly>(&b).ok())
                    .is_some_and(|s| s.status == Some(RunStatus::Failed));
                if !already_failed {
                    tracing::error!(%run_id, %reason, "a run's state is unreadable: marking it failed");
                    let error = format!("state.json is unreadable by this build: {reason}");
                    if let Err(e) = mark_failed(store, run_id, &error).await {
                        tracing::warn!(%run_id, error = %e, "could not mark the run failed");
                    }
                }
            }
            // The store: the next scan tries again.
            Err(e) => tracing::warn!(%run_id, error = %e, "could not read a run's state"),
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
    /// Another replica holds the run's lease: it trains it.
    HeldElsewhere(String),
    Failed(String),
}

impl TrainerWorker {
    /// Runs jobs from `jobs`, and the runs a scan of the store finds, until
    /// shutdown. The queue closing (the consumer is gone) ends it too.
    pub async fn run(
        self: Arc<Self>,
        mut jobs: mpsc::UnboundedReceiver<String>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let rescan = Duration::from_secs(self.settings.rescan_secs.max(1));
        let mut next_scan = tokio::time::Instant::now();
        loop {
            let run_ids = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = jobs.recv() => match next {
                    Some(run_id) => {
                        if let Some(metrics) = &self.metrics {
                            metrics.queued_runs.dec();
                        }
                        vec![run_id]
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(next_scan) => {
                    next_scan = tokio::time::Instant::now() + rescan;
                    match pending_runs(self.store.as_ref()).await {
                        Ok(runs) => {
                            if !runs.is_empty() {
                                tracing::info!(runs = ?runs, "runs that need work");
                            }
                            runs
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "scanning for runs failed; trying again later");
                            Vec::new()
                        }
                    }
                }
            };
            for run_id in run_ids {
                if self.clone().run_job(&run_id, &shutdown).await == JobOutcome::Interrupted {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Trains (or resumes, or announces) one run if it needs work and this
    /// replica gets its lease, retrying failures that may pass; a run that
    /// cannot succeed is marked failed.
    pub async fn run_job(
        self: Arc<Self>,
        run_id: &str,
        shutdown: &CancellationToken,
    ) -> JobOutcome {
        let state = match read_run_state(self.store.as_ref(), run_id).await {
            Ok(Some(state)) => state,
            Ok(None) => return JobOutcome::Failed(format!("run {run_id} has no state.json")),
            Err(RunError::Data(reason)) => {
                return self
                    .fail(run_id, &format!("state.json is unreadable: {reason}"))
                    .await
            }
            Err(e) => return JobOutcome::Failed(e.to_string()),
        };
        if !state.needs_work() {
            return JobOutcome::Finished(state.status);
        }
        let problems = check_run(
            &state.settings,
            &self.settings.limits,
            memory_budget(&self.settings.limits),
            self.settings.limits.shard_bytes,
        );
        if !problems.is_empty() {
            let reason = format!(
                "the run's settings are outside this trainer's limits: {}",
                problems.join("; ")
            );
            return self.fail(run_id, &reason).await;
        }
        let owner = self.settings.instance();
        let lease = lease_key(run_id);
        let ttl = Duration::from_secs(self.settings.lease_ttl_secs);
        let settle = Duration::from_millis(self.settings.lease_settle_ms);
        match claim(self.store.as_ref(), &lease, &owner, ttl, settle).await {
            Ok(ClaimOutcome::Owned) => {}
            Ok(ClaimOutcome::HeldBy(holder)) => {
                tracing::info!(%run_id, holder = %holder.owner, "another replica trains this run");
                return JobOutcome::HeldElsewhere(holder.owner);
            }
            Err(e) => {
                tracing::warn!(%run_id, error = %e, "could not take the run's lease; trying again later");
                return JobOutcome::Failed(e.to_string());
            }
        }
        let outcome = self.clone().attempts(state, shutdown).await;
        if let Err(e) = release(self.store.as_ref(), &lease, &owner).await {
            tracing::warn!(%run_id, error = %e, "could not release the run's lease; it expires by itself");
        }
        outcome
    }

    async fn attempts(
        self: Arc<Self>,
        state: RunState,
        shutdown: &CancellationToken,
    ) -> JobOutcome {
        let run_id = state.run_id.clone();
        let (mut attempt, mut outages) = (0, 0u32);
        loop {
            attempt += 1;
            let outcome = self.clone().attempt(state.clone(), shutdown.clone()).await;
            // A store that does not answer fails every attempt alike: wait
            // it out (the run resumes from its last epoch) instead of
            // spending attempts and marking a good run failed.
            if let Err(error) = &outcome {
                if error.is_unavailable() {
                    attempt -= 1;
                    outages += 1;
                    let pause = Duration::from_secs(
                        (self.settings.retry_backoff_secs << (outages - 1).min(6)).min(60),
                    );
                    tracing::warn!(%run_id, outages, %error, ?pause, "the store does not answer; the run resumes when it does");
                    self.count("store_unavailable");
                    tokio::select! {
                        _ = shutdown.cancelled() => return JobOutcome::Interrupted,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            }
            let retry = match &outcome {
                Ok(Trained::LostLease) => {
                    tracing::warn!(%run_id, "another replica took the run's lease over; stopping here");
                    self.count("lost_lease");
                    return JobOutcome::HeldElsewhere(String::new());
                }
                Err(RunError::Interrupted { epoch }) => {
                    tracing::info!(%run_id, epoch, "run interrupted; it resumes on the next start");
                    self.count("interrupted");
                    return JobOutcome::Interrupted;
                }
                Ok(Trained::Ended(state)) => {
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
            return self.fail(&run_id, &error).await;
        }
    }

    async fn fail(&self, run_id: &str, error: &str) -> JobOutcome {
        tracing::error!(%run_id, error = %error, "run failed");
        if let Err(e) = mark_failed(self.store.as_ref(), run_id, error).await {
            tracing::error!(%run_id, error = %e, "could not mark the run failed");
        }
        self.count("failed");
        JobOutcome::Failed(error.to_owned())
    }

    fn count(&self, outcome: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.runs.with_label_values(&[outcome]).inc();
            // No run in progress: nothing left to wait for.
            metrics.eta_seconds.set(0.0);
        }
    }

    async fn attempt(
        self: Arc<Self>,
        state: RunState,
        shutdown: CancellationToken,
    ) -> Result<Trained, RunError> {
        let runtime = tokio::runtime::Handle::current();
        let worker = self.clone();
        tokio::task::spawn_blocking(move || worker.train(runtime, &state, &shutdown))
            .await
            .map_err(|e| RunError::Data(format!("training thread: {e}")))?
    }

    /// The blocking part: the run itself, its metrics, announcements and
    /// lease renewals.
    fn train(
        &self,
        runtime: tokio::runtime::Handle,
        state: &RunState,
        shutdown: &CancellationToken,
    ) -> Result<Trained, RunError> {
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
            let event =
                Envelope::continuing(&request.correlation_id, &request.event_id, body, PRODUCER);
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
        // Polled before every batch: SIGTERM, and the lease renewed every
        // third of its lifetime (a lease another replica holds stops the run).
        let owner = self.settings.instance();
        let lease = lease_key(run_id);
        let ttl = Duration::from_secs(self.settings.lease_ttl_secs);
        let renewed = Cell::new(Instant::now());
        let lost = Cell::new(false);
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
                    Err(e) => {
                        tracing::warn!(%run_id, error = %e, "renewing the run's lease failed")
                    }
                }
            }
            false
        };
        let result = run_training(
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
        );
        match result {
            Err(RunError::Interrupted { .. }) if lost.get() => Ok(Trained::LostLease),
            other => other.map(|state| Trained::Ended(Box::new(state))),
        }
    }
}

/// How a training attempt ended (errors aside).
enum Trained {
    Ended(Box<RunState>),
    LostLease,
}
