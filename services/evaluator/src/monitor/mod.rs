//! The production monitor: the model's AUC on the hospital's own patients.
//!
//! The inference service publishes every answer (`PredictionMade` on
//! `chexvision.predictions`); radiologists' confirmations come back as
//! `FeedbackReceived` on `chexvision.feedback` (from `POST /v1/feedback`
//! or any system that publishes there). The monitor joins them by request
//! id or by study reference and keeps, per model version and rolling
//! window, the AUC per finding, macro and abnormal AUC with bootstrap
//! intervals, the sample count and the observed prevalence beside the
//! training one ([`windows`], [`metrics`]).
//!
//! Durability: each accepted event is written to the store
//! (`monitor/log/{predictions,feedback}/{event_id}.pb`) before it is
//! acknowledged; every `snapshot_every` events or `snapshot_secs` the
//! whole join is written to `monitor/state.json` and the logs it covers
//! are deleted. A restart loads the snapshot and replays the logs: joins
//! survive restarts and redelivery (applying an event twice changes
//! nothing; see [`state`]).
//!
//! Feedback for a prediction the monitor does not hold (yet: the
//! prediction event may be a moment behind) is retried with the bus's
//! backoff; after `kafka.handler_max_attempts` attempts it is counted as
//! unmatched and dead-lettered with the reason. Predictions and feedback
//! are consumed by two consumer groups, so a feedback being retried never
//! holds predictions back.

pub mod metrics;
pub mod state;
pub mod windows;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chexvision_bus::{decode_event, Delivery, Handler, HandlerError};
use chexvision_config::Topics;
use chexvision_dataset::{ready_manifest_key, ReadyManifest, LABELS, NO_FINDING};
use chexvision_events::{Body, Envelope};
use chexvision_metrics::BootstrapConfig;
use chexvision_registry::Registry;
use chexvision_store::{get_json, put_json, ObjectStore};
use tokio_util::sync::CancellationToken;

pub use metrics::MonitorMetrics;
use state::{Confirmation, FeedbackOutcome, JoinState, PredictionOutcome, PredictionRow, Target};
pub use state::{JoinedRow, Snapshot};
use windows::window_stats;
pub use windows::{WindowSpec, WindowStats};

use crate::settings::MonitorSettings;
use crate::EvalError;

pub const SNAPSHOT_KEY: &str = "monitor/state.json";
pub const LOG_PREFIX: &str = "monitor/log/";

fn log_key(kind: &str, event_id: &str) -> String {
    format!("{LOG_PREFIX}{kind}/{event_id}.pb")
}

fn now_ms() -> i64 {
    let t = chexvision_events::now();
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

fn event_ms(envelope: &Envelope) -> Option<i64> {
    let t = envelope.meta.as_ref()?.occurred_at.as_ref()?;
    Some(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// A prediction event as a join row, or why it is malformed.
fn prediction_row(envelope: &Envelope) -> Result<PredictionRow, String> {
    let Some(Body::PredictionMade(p)) = &envelope.body else {
        return Err("expected a PredictionMade event".into());
    };
    if p.request_id.is_empty() || p.request_id.len() > 100 {
        return Err("request_id must hold 1 to 100 characters".into());
    }
    if p.model_version.is_empty() || p.model_version.len() > 200 {
        return Err("model_version must hold 1 to 200 characters".into());
    }
    if p.probabilities.len() != state::OUTPUTS
        || p.probabilities.iter().any(|x| !(0.0..=1.0).contains(x))
    {
        return Err(format!(
            "probabilities must be {} numbers in [0, 1] (14 findings, then abnormal); got {}",
            state::OUTPUTS,
            p.probabilities.len()
        ));
    }
    check_sha(&p.study_ref_sha256)?;
    Ok(PredictionRow {
        request_id: p.request_id.clone(),
        model_version: p.model_version.clone(),
        at_ms: event_ms(envelope).unwrap_or_else(now_ms),
        probabilities: p.probabilities.clone(),
        study: p.study_ref_sha256.clone(),
    })
}

fn check_sha(sha: &str) -> Result<(), String> {
    if sha.is_empty() || (sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())) {
        Ok(())
    } else {
        Err("study_ref_sha256 must be empty or 64 hex digits".into())
    }
}

/// A feedback event as (target, confirmation), or why it is malformed.
fn feedback_of(envelope: &Envelope) -> Result<(Target, Confirmation), String> {
    let Some(Body::FeedbackReceived(f)) = &envelope.body else {
        return Err("expected a FeedbackReceived event".into());
    };
    if f.findings.len() != state::FINDINGS {
        return Err(format!(
            "findings must hold the 14 findings in label order; got {}",
            f.findings.len()
        ));
    }
    check_sha(&f.study_ref_sha256)?;
    let target = match (f.request_id.is_empty(), f.study_ref_sha256.is_empty()) {
        (false, true) if f.request_id.len() <= 100 => Target::Request(f.request_id.clone()),
        (true, false) => Target::Study(f.study_ref_sha256.to_ascii_lowercase()),
        _ => {
            return Err(
                "name the prediction by request_id (at most 100 characters) or study_ref_sha256, one of the two"
                    .into(),
            )
        }
    };
    let confirmed_at_ms = f
        .confirmed_at
        .as_ref()
        .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
        .or_else(|| event_ms(envelope))
        .unwrap_or_else(now_ms);
    Ok((
        target,
        Confirmation {
            findings: f.findings.clone(),
            confirmed_at_ms,
            event_id: envelope.event_id().to_owned(),
        },
    ))
}

struct Inner {
    state: JoinState,
    /// Changed since the gauges were last computed.
    dirty: bool,
    /// Logs applied since the last snapshot (deleted once it is written).
    logged: Vec<String>,
    /// Attempts at unmatched feedback, by event id.
    unmatched_attempts: HashMap<String, u32>,
    /// Versions whose training prevalence is set (or cannot be).
    prevalence_known: HashSet<String>,
}

/// The join, its persistence and its gauges.
pub struct Monitor {
    store: Arc<dyn ObjectStore>,
    settings: MonitorSettings,
    metrics: MonitorMetrics,
    inner: Mutex<Inner>,
}

impl Monitor {
    /// Loads the snapshot and replays the logs written after it.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        settings: MonitorSettings,
        metrics: MonitorMetrics,
    ) -> Result<Arc<Monitor>, EvalError> {
        let store_err = |e: chexvision_store::StoreError| EvalError::Store(e.to_string());
        let snapshot: Option<Snapshot> = get_json(store.as_ref(), SNAPSHOT_KEY)
            .await
            .map_err(store_err)?;
        let mut state = snapshot.map(JoinState::from_snapshot).unwrap_or_default();
        let mut logged = Vec::new();
        // Predictions first: a feedback log names predictions.
        for kind in ["predictions", "feedback"] {
            for object in store
                .list(&format!("{LOG_PREFIX}{kind}/"))
                .await
                .map_err(store_err)?
            {
                let bytes = store.get(&object.key).await.map_err(store_err)?;
                let applied = Envelope::decode_checked(&bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|envelope| match kind {
                        "predictions" => prediction_row(&envelope).map(|row| {
                            state.add_prediction(row);
                        }),
                        _ => feedback_of(&envelope).map(|(target, c)| {
                            state.add_feedback(&target, c);
                        }),
                    });
                if let Err(e) = applied {
                    tracing::warn!(key = %object.key, error = %e, "unreadable monitor log: skipped");
                }
                logged.push(object.key);
            }
        }
        tracing::info!(
            predictions = state.predictions.len(),
            confirmed = state.confirmations.len(),
            replayed = logged.len(),
            "production monitor state loaded"
        );
        metrics.pending.set(state.pending() as i64);
        Ok(Arc::new(Monitor {
            store,
            settings,
            metrics,
            inner: Mutex::new(Inner {
                state,
                dirty: true,
                logged,
                unmatched_attempts: HashMap::new(),
                prevalence_known: HashSet::new(),
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn metrics(&self) -> &MonitorMetrics {
        &self.metrics
    }

    /// Records a prediction event (durably, then in the join).
    pub async fn record_prediction(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        let row = prediction_row(envelope).map_err(HandlerError::Malformed)?;
        if self.lock().state.predictions.contains_key(&row.request_id) {
            self.metrics
                .predictions
                .with_label_values(&["duplicate"])
                .inc();
            return Ok(());
        }
        let key = log_key("predictions", envelope.event_id());
        self.store
            .put(&key, Bytes::from(envelope.to_bytes()))
            .await
            .map_err(|e| chexvision_service::store_failure(&format!("writing {key}"), &e))?;
        let mut inner = self.lock();
        let outcome = inner.state.add_prediction(row);
        inner.logged.push(key);
        inner.dirty = true;
        self.metrics.pending.set(inner.state.pending() as i64);
        let label = match outcome {
            PredictionOutcome::Recorded => "recorded",
            PredictionOutcome::Duplicate => "duplicate",
        };
        self.metrics.predictions.with_label_values(&[label]).inc();
        Ok(())
    }

    /// Records a feedback event; an unmatched one fails (retried), and on
    /// attempt `max_attempts` is malformed (dead-lettered) and counted.
    pub async fn record_feedback(
        &self,
        envelope: &Envelope,
        max_attempts: u32,
    ) -> Result<(), HandlerError> {
        let (target, confirmation) = feedback_of(envelope).map_err(HandlerError::Malformed)?;
        let event_id = envelope.event_id().to_owned();
        {
            let mut inner = self.lock();
            if inner.state.targets(&target).is_empty() {
                let attempts = inner
                    .unmatched_attempts
                    .entry(event_id.clone())
                    .or_insert(0);
                *attempts += 1;
                let what = match &target {
                    Target::Request(id) => format!("request {id}"),
                    Target::Study(sha) => format!("study (sha256 {sha})"),
                };
                let message = format!(
                    "feedback {event_id} names {what}, and no prediction of the last {} days has it",
                    self.settings.retention_days
                );
                if *attempts >= max_attempts {
                    inner.unmatched_attempts.remove(&event_id);
                    self.metrics
                        .feedback
                        .with_label_values(&["unmatched"])
                        .inc();
                    return Err(HandlerError::Malformed(format!(
                        "{message} (after {max_attempts} attempts)"
                    )));
                }
                // The prediction event may be a moment behind: retried.
                return Err(HandlerError::Failed(message));
            }
            inner.unmatched_attempts.remove(&event_id);
        }
        let key = log_key("feedback", &event_id);
        self.store
            .put(&key, Bytes::from(envelope.to_bytes()))
            .await
            .map_err(|e| chexvision_service::store_failure(&format!("writing {key}"), &e))?;
        let mut inner = self.lock();
        let outcome = inner.state.add_feedback(&target, confirmation);
        inner.logged.push(key);
        inner.dirty = true;
        self.metrics.pending.set(inner.state.pending() as i64);
        if let FeedbackOutcome::Applied {
            joined,
            amended,
            duplicate,
        } = outcome
        {
            for (_, delay_ms) in &joined {
                self.metrics
                    .feedback_delay
                    .observe(*delay_ms as f64 / 1000.0);
            }
            let count = |label: &str, n: usize| {
                self.metrics
                    .feedback
                    .with_label_values(&[label])
                    .inc_by(n as u64)
            };
            count("joined", joined.len());
            count("amended", amended);
            count("duplicate", duplicate);
        }
        Ok(())
    }

    /// Every confirmed prediction by model version, oldest first.
    pub fn joined(&self) -> BTreeMap<String, Vec<JoinedRow>> {
        self.lock().state.joined()
    }

    pub fn bootstrap(&self) -> BootstrapConfig {
        BootstrapConfig {
            resamples: self.settings.bootstrap_resamples,
            seed: self.settings.bootstrap_seed,
            confidence: 0.95,
        }
    }

    /// Computes every window of every version at `now_ms` (off the async
    /// threads) and publishes the gauges.
    pub async fn recompute(&self, now_ms: i64) -> Vec<WindowStats> {
        let joined = {
            let mut inner = self.lock();
            inner.dirty = false;
            inner.state.joined()
        };
        self.training_prevalence(joined.keys()).await;
        let windows = self.settings.windows.clone();
        let bootstrap = self.bootstrap();
        let stats = tokio::task::spawn_blocking(move || {
            let mut stats = Vec::new();
            for (version, rows) in &joined {
                for window in &windows {
                    let selected = window.select(rows, now_ms);
                    stats.extend(window_stats(version, &window.name, selected, &bootstrap));
                }
            }
            stats
        })
        .await
        .unwrap_or_default();
        self.metrics.publish(&stats);
        stats
    }

    /// Sets `chexvision_training_prevalence` of versions not seen yet,
    /// from the registry record's ready manifest (train split).
    async fn training_prevalence<'v>(&self, versions: impl Iterator<Item = &'v String>) {
        let new: Vec<String> = {
            let inner = self.lock();
            versions
                .filter(|v| !inner.prevalence_known.contains(*v))
                .cloned()
                .collect()
        };
        let registry = Registry::new(self.store.clone(), "monitor");
        for version in new {
            let record = match registry.record(&version).await {
                Ok(Some(record)) => record,
                Ok(None) => {
                    tracing::info!(%version, "no registry record: no training prevalence for it");
                    self.lock().prevalence_known.insert(version);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(%version, error = %e, "registry unreadable; training prevalence later");
                    continue;
                }
            };
            let key = ready_manifest_key(&record.dataset_id, record.image_size_px);
            match get_json::<ReadyManifest>(self.store.as_ref(), &key).await {
                Ok(Some(ready)) => {
                    let manifest = &ready.manifest;
                    let rows = manifest.rows_per_split.get("train").copied().unwrap_or(0);
                    let counts = manifest.label_counts.get("train");
                    if rows > 0 {
                        let share = |name: &str| {
                            counts.and_then(|c| c.get(name)).copied().unwrap_or(0) as f64
                                / rows as f64
                        };
                        for name in LABELS {
                            self.metrics
                                .training_prevalence
                                .with_label_values(&[&version, name])
                                .set(share(name));
                        }
                        self.metrics
                            .training_prevalence
                            .with_label_values(&[&version, "abnormal"])
                            .set(1.0 - share(NO_FINDING));
                    }
                    self.lock().prevalence_known.insert(version);
                }
                Ok(None) => {
                    tracing::info!(%version, manifest = %key, "the model's ready manifest is gone");
                    self.lock().prevalence_known.insert(version);
                }
                Err(e) => tracing::warn!(%version, error = %e, "ready manifest unreadable"),
            }
        }
    }

    /// Writes the whole join (after eviction) and deletes the logs it
    /// covers.
    pub async fn snapshot(&self) -> Result<(), EvalError> {
        let now = now_ms();
        let oldest = now - i64::from(self.settings.retention_days) * 86_400_000;
        let (snapshot, covered) = {
            let mut inner = self.lock();
            let evicted = inner.state.evict(oldest, self.settings.max_predictions);
            if evicted > 0 {
                inner.dirty = true;
                tracing::info!(evicted, "predictions past retention forgotten");
            }
            self.metrics.pending.set(inner.state.pending() as i64);
            (inner.state.snapshot(now), std::mem::take(&mut inner.logged))
        };
        if let Err(e) = put_json(self.store.as_ref(), SNAPSHOT_KEY, &snapshot).await {
            // Keep the logs: they are still the only durable copy.
            self.lock().logged.extend(covered);
            return Err(EvalError::Store(format!("{SNAPSHOT_KEY}: {e}")));
        }
        for key in covered {
            if let Err(e) = self.store.delete(&key).await {
                tracing::warn!(%key, error = %e, "covered log not deleted; replayed harmlessly at start");
            }
        }
        Ok(())
    }

    fn logged_since_snapshot(&self) -> usize {
        self.lock().logged.len()
    }

    fn is_dirty(&self) -> bool {
        self.lock().dirty
    }

    /// Recomputes the gauges while there is news, and snapshots on a
    /// count or a clock; a last snapshot at shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tick = Duration::from_secs(1);
        let recompute_every = Duration::from_secs(self.settings.recompute_secs);
        let snapshot_every = Duration::from_secs(self.settings.snapshot_secs);
        let mut last_recompute = tokio::time::Instant::now() - recompute_every;
        let mut last_snapshot = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(tick) => {}
            }
            let now = tokio::time::Instant::now();
            // Time windows move even without news: recompute at least
            // every ten periods.
            if now - last_recompute >= recompute_every
                && (self.is_dirty() || now - last_recompute >= recompute_every * 10)
            {
                last_recompute = now;
                self.recompute(now_ms()).await;
            }
            if self.logged_since_snapshot() >= self.settings.snapshot_every
                || (self.logged_since_snapshot() > 0 && now - last_snapshot >= snapshot_every)
            {
                last_snapshot = now;
                if let Err(e) = self.snapshot().await {
                    tracing::warn!(error = %e, "monitor snapshot failed; the logs keep the events");
                }
            }
        }
        if self.logged_since_snapshot() > 0 {
            self.snapshot().await?;
        }
        Ok(())
    }
}

/// Consumes `chexvision.predictions`.
pub struct PredictionHandler {
    pub monitor: Arc<Monitor>,
    pub topics: Topics,
}

#[async_trait]
impl Handler for PredictionHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let envelope = decode_event(delivery, &self.topics)?;
        self.monitor.record_prediction(&envelope).await
    }
}

/// Consumes `chexvision.feedback`.
pub struct FeedbackHandler {
    pub monitor: Arc<Monitor>,
    pub topics: Topics,
    /// The consumer's attempts per record (`kafka.handler_max_attempts`).
    pub max_attempts: u32,
}

#[async_trait]
impl Handler for FeedbackHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<(), HandlerError> {
        let envelope = decode_event(delivery, &self.topics)?;
        self.monitor
            .record_feedback(&envelope, self.max_attempts)
            .await
    }
}
