//! The model registry, in the object store:
//!
//! ```text
//! registry/models/{version}.json   immutable record of an evaluated model
//! registry/production.json         the pointer: which version is served
//! registry/history/{id}.json       append-only: promotions, refusals, rollbacks
//! registry/writer.claim            who may write right now (see below)
//! ```
//!
//! A version is `{run_id}.{first 12 hex of the checkpoint's sha256}`: the
//! same checkpoint always gets the same version, so registering it again
//! (a redelivered event) changes nothing. History ids are UUID v7, so the
//! listing is in time order.
//!
//! **One writer at a time.** Every change (a decision, a manual promotion,
//! a rollback) runs under the claim `registry/writer.claim` (a lease with
//! expiry, [`chexvision_store::claim`]), and writes in the order record →
//! history entry → pointer, so a pointer never names a version without a
//! record and every pointer change has its history entry. New records use
//! conditional writes (`If-None-Match: *`) where the store has them. On an
//! S3-compatible server that ignores conditions the claim is best effort
//! (see the claim module): two writers that both stall past its settle time
//! could interleave, and the later pointer write wins; both changes are
//! still in the history.

pub mod policy;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chexvision_store::{claim, get_json, put_json, release, ClaimOutcome, ObjectStore, StoreError};
use serde::{Deserialize, Serialize};

pub use policy::{decide, first_model, Decision, FindingComparison, PromotionPolicy, ScoredSplit};

pub const RECORDS_PREFIX: &str = "registry/models/";
pub const POINTER_KEY: &str = "registry/production.json";
pub const HISTORY_PREFIX: &str = "registry/history/";
pub const WRITER_CLAIM_KEY: &str = "registry/writer.claim";
/// Schema version of records, the pointer and history entries.
pub const SCHEMA_VERSION: u32 = 1;

/// The version name of a checkpoint of a run.
pub fn version_of(run_id: &str, checkpoint_sha256: &str) -> String {
    let prefix: String = checkpoint_sha256.chars().take(12).collect();
    format!("{run_id}.{prefix}")
}

pub fn record_key(version: &str) -> String {
    format!("{RECORDS_PREFIX}{version}.json")
}

/// The checkpoint a record serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    pub uri: String,
    /// Key in the store the registry lives in.
    pub key: String,
    pub sha256: String,
    pub size_bytes: u64,
}

/// The evaluation behind a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationRef {
    pub report_key: String,
    pub predictions_key: String,
    pub split: String,
    pub images: u64,
    pub dataset_manifest_sha256: String,
}

/// What a person compares models by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSummary {
    pub macro_auc: Option<f64>,
    /// 95 % patient-bootstrap interval.
    pub macro_auc_interval: Option<[f64; 2]>,
    pub per_class_auc: std::collections::BTreeMap<String, Option<f64>>,
    pub binary_auc: Option<f64>,
    pub ece: Option<f64>,
}

/// `registry/models/{version}.json`: written once, never changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub schema_version: u32,
    pub version: String,
    pub run_id: String,
    pub checkpoint: CheckpointRef,
    /// `densenet121` or `se_resnet`.
    pub model_kind: String,
    pub image_size_px: u32,
    pub dataset_id: String,
    /// Trained on synthetic images: its numbers say nothing clinical.
    pub synthetic: bool,
    pub evaluation: EvaluationRef,
    pub metrics: MetricsSummary,
    /// Per-finding decision thresholds chosen on the validation split
    /// (`abnormal` for the binary head), and the rule that chose them.
    pub thresholds: std::collections::BTreeMap<String, f64>,
    pub threshold_rule: String,
    pub created_at_unix_ms: u64,
}

/// `registry/production.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductionPointer {
    pub schema_version: u32,
    pub version: String,
    pub run_id: String,
    pub checkpoint_uri: String,
    pub checkpoint_sha256: String,
    pub changed_at_unix_ms: u64,
    pub reason: String,
    /// Key of the history entry of this change.
    pub history_entry: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The policy promoted a challenger (or the first model).
    Promoted,
    /// The policy kept the champion.
    Refused,
    /// A person promoted a version by hand.
    ManualPromotion,
    /// A person moved the pointer back.
    RolledBack,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Promoted => "promoted",
            Action::Refused => "refused",
            Action::ManualPromotion => "manual_promotion",
            Action::RolledBack => "rolled_back",
        }
    }

    /// Whether the action moves the pointer.
    pub fn moves_pointer(self) -> bool {
        self != Action::Refused
    }
}

/// `registry/history/{id}.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub schema_version: u32,
    pub id: String,
    pub at_unix_ms: u64,
    pub action: Action,
    pub version: String,
    /// Production version before the change (for a refusal: the champion).
    pub previous_version: Option<String>,
    pub reason: String,
    /// Who decided: `evaluator`, or `cli:{user}`.
    pub by: String,
    /// The policy's numbers, for decisions the policy made.
    pub decision: Option<Decision>,
}

/// A change of the production pointer, to announce as `ModelPromoted`.
#[derive(Debug, Clone, PartialEq)]
pub struct PointerChange {
    pub record: ModelRecord,
    pub pointer: ProductionPointer,
    pub previous_version: Option<String>,
    pub entry: HistoryEntry,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no model version `{0}` in the registry")]
    UnknownVersion(String),
    #[error("model version `{version}` is already registered for another checkpoint ({existing})")]
    VersionConflict { version: String, existing: String },
    #[error("the registry is being changed by {owner}; try again when its claim expires")]
    Busy { owner: String },
    #[error("nothing to roll back to: {0}")]
    NoRollbackTarget(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, RegistryError>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long a writer's claim lasts; a change takes a few store calls.
const WRITER_TTL: Duration = Duration::from_secs(60);
/// How often and how long to wait for another writer.
const WRITER_WAIT: Duration = Duration::from_millis(200);
const WRITER_ATTEMPTS: u32 = 50;
/// How long a new claim waits before reading itself back (see the claim
/// module: the later of two racing writers wins).
const WRITER_SETTLE: Duration = Duration::from_millis(100);

/// The registry in a store.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
    /// Identifies this writer in the claim (`cli-{uuid}`, or a service's
    /// instance).
    owner: String,
}

impl Registry {
    /// A writer of its own: `{owner_kind}-{uuid}`, new in every process.
    pub fn new(store: Arc<dyn ObjectStore>, owner_kind: &str) -> Self {
        Registry {
            store,
            owner: format!("{owner_kind}-{}", uuid::Uuid::now_v7()),
        }
    }

    /// The writer of a service instance (`{owner_kind}-{instance}`, the
    /// instance being the pod name under a StatefulSet): restarted, it
    /// takes its own claim back at once instead of waiting a minute for
    /// the claim its previous process held when it died.
    pub fn for_instance(store: Arc<dyn ObjectStore>, owner_kind: &str, instance: &str) -> Self {
        Registry {
            store,
            owner: format!("{owner_kind}-{instance}"),
        }
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Writes `record` unless its version exists. Registering the same
    /// checkpoint again returns the stored record; another checkpoint under
    /// the same version is a conflict.
    pub async fn register(&self, record: &ModelRecord) -> Result<ModelRecord> {
        validate_version(&record.version)?;
        let key = record_key(&record.version);
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| RegistryError::Invalid(format!("record: {e}")))?;
        match self.store.put_if_absent(&key, Bytes::from(bytes)).await {
            Ok(_) => Ok(record.clone()),
            Err(e) if e.is_exists() => {
                let existing = self
                    .record(&record.version)
                    .await?
                    .ok_or_else(|| RegistryError::UnknownVersion(record.version.clone()))?;
                if existing.checkpoint.sha256 == record.checkpoint.sha256 {
                    Ok(existing)
                } else {
                    Err(RegistryError::VersionConflict {
                        version: record.version.clone(),
                        existing: existing.checkpoint.sha256,
                    })
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn record(&self, version: &str) -> Result<Option<ModelRecord>> {
        validate_version(version)?;
        Ok(get_json(self.store.as_ref(), &record_key(version)).await?)
    }

    /// Every record, oldest first.
    pub async fn list(&self) -> Result<Vec<ModelRecord>> {
        let mut records = Vec::new();
        for meta in self.store.list(RECORDS_PREFIX).await? {
            if !meta.key.ends_with(".json") {
                continue;
            }
            if let Some(record) = get_json::<ModelRecord>(self.store.as_ref(), &meta.key).await? {
                records.push(record);
            }
        }
        records.sort_by_key(|r| r.created_at_unix_ms);
        Ok(records)
    }

    pub async fn production(&self) -> Result<Option<ProductionPointer>> {
        Ok(get_json(self.store.as_ref(), POINTER_KEY).await?)
    }

    /// The production record, if any.
    pub async fn production_record(&self) -> Result<Option<ModelRecord>> {
        match self.production().await? {
            Some(pointer) => Ok(self.record(&pointer.version).await?),
            None => Ok(None),
        }
    }

    /// The newest `limit` history entries, oldest first.
    pub async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>> {
        let listing = self.store.list(HISTORY_PREFIX).await?;
        let start = listing.len().saturating_sub(limit);
        let mut entries = Vec::new();
        for meta in &listing[start..] {
            if let Some(entry) = get_json::<HistoryEntry>(self.store.as_ref(), &meta.key).await? {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// Records the policy's `decision` on `version` (already registered):
    /// a history entry, and the pointer when it promotes.
    pub async fn apply_decision(
        &self,
        version: &str,
        decision: Decision,
        by: &str,
    ) -> Result<(HistoryEntry, Option<PointerChange>)> {
        let action = if decision.promote {
            Action::Promoted
        } else {
            Action::Refused
        };
        let reason = decision.reason.clone();
        self.change(version, action, reason, by, Some(decision))
            .await
    }

    /// A person's promotion of `version`, whatever the policy would say.
    pub async fn promote(&self, version: &str, reason: &str, by: &str) -> Result<PointerChange> {
        require_reason(reason)?;
        let (_, change) = self
            .change(
                version,
                Action::ManualPromotion,
                reason.to_owned(),
                by,
                None,
            )
            .await?;
        change.ok_or_else(|| RegistryError::Invalid("promotion did not move the pointer".into()))
    }

    /// Moves the pointer back: to `to`, or to the version production had
    /// before the current one.
    pub async fn rollback(
        &self,
        to: Option<&str>,
        reason: &str,
        by: &str,
    ) -> Result<PointerChange> {
        require_reason(reason)?;
        let current = self
            .production()
            .await?
            .ok_or_else(|| RegistryError::NoRollbackTarget("no production model".into()))?;
        let target = match to {
            Some(v) => v.to_owned(),
            None => self
                .previous_production(&current.version)
                .await?
                .ok_or_else(|| {
                    RegistryError::NoRollbackTarget(format!(
                        "{} is the only version production has had",
                        current.version
                    ))
                })?,
        };
        if target == current.version {
            return Err(RegistryError::NoRollbackTarget(format!(
                "{target} is already in production"
            )));
        }
        let (_, change) = self
            .change(&target, Action::RolledBack, reason.to_owned(), by, None)
            .await?;
        change.ok_or_else(|| RegistryError::Invalid("rollback did not move the pointer".into()))
    }

    /// The version the pointer held before it last moved to `current`.
    async fn previous_production(&self, current: &str) -> Result<Option<String>> {
        let entries = self.history(usize::MAX).await?;
        Ok(entries
            .iter()
            .rev()
            .find(|e| e.action.moves_pointer() && e.version == current)
            .and_then(|e| e.previous_version.clone()))
    }

    /// One change under the writer claim: history entry, then pointer.
    async fn change(
        &self,
        version: &str,
        action: Action,
        reason: String,
        by: &str,
        decision: Option<Decision>,
    ) -> Result<(HistoryEntry, Option<PointerChange>)> {
        let record = self
            .record(version)
            .await?
            .ok_or_else(|| RegistryError::UnknownVersion(version.to_owned()))?;
        self.acquire().await?;
        let result = self.change_held(record, action, reason, by, decision).await;
        if let Err(e) = release(self.store.as_ref(), WRITER_CLAIM_KEY, &self.owner).await {
            tracing::warn!(error = %e, "releasing the registry writer claim");
        }
        result
    }

    async fn change_held(
        &self,
        record: ModelRecord,
        action: Action,
        reason: String,
        by: &str,
        decision: Option<Decision>,
    ) -> Result<(HistoryEntry, Option<PointerChange>)> {
        let previous = self.production().await?;
        let id = uuid::Uuid::now_v7().to_string();
        let entry = HistoryEntry {
            schema_version: SCHEMA_VERSION,
            id: id.clone(),
            at_unix_ms: now_ms(),
            action,
            version: record.version.clone(),
            previous_version: previous.as_ref().map(|p| p.version.clone()),
            reason: reason.clone(),
            by: by.to_owned(),
            decision,
        };
        let entry_key = format!("{HISTORY_PREFIX}{id}.json");
        put_json(self.store.as_ref(), &entry_key, &entry).await?;
        if !action.moves_pointer() {
            return Ok((entry, None));
        }
        let pointer = ProductionPointer {
            schema_version: SCHEMA_VERSION,
            version: record.version.clone(),
            run_id: record.run_id.clone(),
            checkpoint_uri: record.checkpoint.uri.clone(),
            checkpoint_sha256: record.checkpoint.sha256.clone(),
            changed_at_unix_ms: entry.at_unix_ms,
            reason,
            history_entry: entry_key,
        };
        put_json(self.store.as_ref(), POINTER_KEY, &pointer).await?;
        let change = PointerChange {
            record,
            pointer,
            previous_version: entry.previous_version.clone(),
            entry: entry.clone(),
        };
        Ok((entry, Some(change)))
    }

    async fn acquire(&self) -> Result<()> {
        let mut holder = String::new();
        for _ in 0..WRITER_ATTEMPTS {
            match claim(
                self.store.as_ref(),
                WRITER_CLAIM_KEY,
                &self.owner,
                WRITER_TTL,
                WRITER_SETTLE,
            )
            .await?
            {
                ClaimOutcome::Owned => return Ok(()),
                ClaimOutcome::HeldBy(c) => holder = c.owner,
            }
            tokio::time::sleep(WRITER_WAIT).await;
        }
        Err(RegistryError::Busy { owner: holder })
    }
}

fn require_reason(reason: &str) -> Result<()> {
    if reason.trim().is_empty() {
        return Err(RegistryError::Invalid(
            "a reason is required (--reason TEXT): it goes into the registry's history".into(),
        ));
    }
    if reason.len() > 2000 {
        return Err(RegistryError::Invalid(format!(
            "the reason is {} bytes; at most 2000",
            reason.len()
        )));
    }
    Ok(())
}

/// Versions become object keys and metric labels: letters, digits, `.`,
/// `_` and `-`, at most 160 characters.
pub fn validate_version(version: &str) -> Result<()> {
    let ok = !version.is_empty()
        && version.len() <= 160
        && !version.starts_with('.')
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "`{version}` is not a model version (letters, digits, `.`, `_`, `-`; at most 160)"
        )))
    }
}
