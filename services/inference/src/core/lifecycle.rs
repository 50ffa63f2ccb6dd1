//! Which model serves, and how a new one replaces it: download, verify the
//! sha256, load, warm up with one inference, then swap in one step. Loads
//! run one at a time, in the order asked, so the versions served never go
//! backwards among the promotions this replica sees. A checkpoint that
//! fails any step leaves the serving model in place, logged and counted.

use std::sync::{Arc, Mutex};

use chexvision_registry::{ModelRecord, Registry};
use chexvision_store::ObjectStore;

use crate::core::model::{LoadedModel, ModelOrigin};
use crate::core::slots::ModelSlots;
use crate::metrics::InferenceMetrics;
use crate::settings::ModelSettings;
use crate::InferenceError;

/// What to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// What the registry's production pointer names.
    Production,
    /// A registered version.
    Version(String),
    /// A checkpoint by store key or URI, with its sha256 when known.
    Checkpoint {
        location: String,
        sha256: Option<String>,
    },
    /// A `ModelPromoted` event: loaded when the registry's pointer still
    /// names it (an older event replayed is skipped), from the event's
    /// checkpoint when the store has no registry.
    Promoted {
        version: String,
        location: String,
        sha256: String,
    },
}

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    /// `version` serves now; `previous` served before.
    Swapped {
        version: String,
        previous: Option<String>,
    },
    /// `version` was already serving.
    Unchanged { version: String },
    /// A promotion the registry has moved past since.
    Stale { version: String, production: String },
}

/// Loads models into the slots.
pub struct Lifecycle {
    slots: Arc<ModelSlots>,
    store: Arc<dyn ObjectStore>,
    registry: Registry,
    settings: ModelSettings,
    metrics: InferenceMetrics,
    /// One load at a time, in arrival order (tokio's mutex is fair).
    loading: tokio::sync::Mutex<()>,
    /// The last version that failed to load, so the registry poll does not
    /// retry it every time; an explicit reload still does.
    last_failed: Mutex<Option<String>>,
}

impl Lifecycle {
    pub fn new(
        slots: Arc<ModelSlots>,
        store: Arc<dyn ObjectStore>,
        settings: ModelSettings,
        metrics: InferenceMetrics,
    ) -> Self {
        Lifecycle {
            slots,
            registry: Registry::new(store.clone(), "inference"),
            store,
            settings,
            metrics,
            loading: tokio::sync::Mutex::new(()),
            last_failed: Mutex::new(None),
        }
    }

    pub fn slots(&self) -> &Arc<ModelSlots> {
        &self.slots
    }

    /// The target the service starts from: `model.checkpoint` when set,
    /// else the registry's production model.
    pub fn initial_target(&self) -> Target {
        if self.settings.checkpoint.is_empty() {
            Target::Production
        } else {
            Target::Checkpoint {
                location: self.settings.checkpoint.clone(),
                sha256: Some(self.settings.checkpoint_sha256.clone()).filter(|s| !s.is_empty()),
            }
        }
    }

    /// Loads `target` and swaps it in. On failure the serving model stays,
    /// the failure is counted by reason and returned.
    pub async fn load(&self, target: Target) -> Result<LoadOutcome, InferenceError> {
        let _turn = self.loading.lock().await;
        let result = self.load_locked(&target).await;
        match &result {
            Ok(LoadOutcome::Swapped { version, previous }) => {
                tracing::info!(%version, previous = ?previous, "model swapped in");
                *self.lock_failed() = None;
            }
            Ok(LoadOutcome::Unchanged { .. }) => {}
            Ok(LoadOutcome::Stale {
                version,
                production,
            }) => {
                tracing::info!(%version, %production, "promotion skipped: the registry has moved on");
            }
            Err(e) => {
                self.metrics
                    .swap_failures
                    .with_label_values(&[e.reason()])
                    .inc();
                tracing::error!(target = ?target, error = %e, "model not loaded; the serving model stays");
            }
        }
        result
    }

    fn lock_failed(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.last_failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For the registry poll: loads the production model if it is neither
    /// serving nor the one that failed last.
    pub async fn follow_registry(&self) -> Result<Option<LoadOutcome>, InferenceError> {
        let Some(pointer) = self
            .registry
            .production()
            .await
            .map_err(|e| InferenceError::Registry(e.to_string()))?
        else {
            return Ok(None);
        };
        let serving = self.slots.current().map(|m| m.info.version.clone());
        if serving.as_deref() == Some(pointer.version.as_str())
            || self.lock_failed().as_deref() == Some(pointer.version.as_str())
        {
            return Ok(None);
        }
        self.load(Target::Version(pointer.version)).await.map(Some)
    }

    async fn load_locked(&self, target: &Target) -> Result<LoadOutcome, InferenceError> {
        let registry =
            |e: chexvision_registry::RegistryError| InferenceError::Registry(e.to_string());
        let (key, origin) = match target {
            Target::Production => {
                let record = self
                    .registry
                    .production_record()
                    .await
                    .map_err(registry)?
                    .ok_or_else(|| {
                        InferenceError::NoModel(
                            "the registry has no production model yet (registry/production.json)"
                                .into(),
                        )
                    })?;
                self.record_target(&record)?
            }
            Target::Version(version) => {
                let record = self
                    .registry
                    .record(version)
                    .await
                    .map_err(registry)?
                    .ok_or_else(|| {
                        InferenceError::NoModel(format!(
                            "version `{version}` is not in the registry"
                        ))
                    })?;
                self.record_target(&record)?
            }
            Target::Checkpoint { location, sha256 } => (
                self.key_of(location)?,
                ModelOrigin {
                    expected_sha256: sha256.clone(),
                    ..ModelOrigin::default()
                },
            ),
            Target::Promoted {
                version,
                location,
                sha256,
            } => {
                let pointer = self.registry.production().await.map_err(registry)?;
                match pointer {
                    Some(p) if &p.version != version => {
                        return Ok(LoadOutcome::Stale {
                            version: version.clone(),
                            production: p.version,
                        })
                    }
                    _ => {}
                }
                match self.registry.record(version).await.map_err(registry)? {
                    Some(record) => {
                        if !record.checkpoint.sha256.eq_ignore_ascii_case(sha256) {
                            return Err(InferenceError::Checkpoint(format!(
                                "the event's checkpoint sha256 {sha256} is not the registry record's {}",
                                record.checkpoint.sha256
                            )));
                        }
                        self.record_target(&record)?
                    }
                    None => (
                        self.key_of(location)?,
                        ModelOrigin {
                            version: Some(version.clone()),
                            expected_sha256: Some(sha256.clone()),
                            ..ModelOrigin::default()
                        },
                    ),
                }
            }
        };
        let current = self.slots.current();
        if let (Some(current), Some(version)) = (&current, &origin.version) {
            if &current.info.version == version {
                return Ok(LoadOutcome::Unchanged {
                    version: version.clone(),
                });
            }
        }
        let meta = self
            .store
            .head(&key)
            .await
            .map_err(|e| InferenceError::Checkpoint(format!("checkpoint {key}: {e}")))?;
        if meta.size > self.settings.max_checkpoint_bytes {
            return Err(InferenceError::Checkpoint(format!(
                "checkpoint {key} is {} bytes, over model.max_checkpoint_bytes ({})",
                meta.size, self.settings.max_checkpoint_bytes
            )));
        }
        let bytes = self
            .store
            .get(&key)
            .await
            .map_err(|e| InferenceError::Checkpoint(format!("checkpoint {key}: {e}")))?;
        let loaded = tokio::task::spawn_blocking(move || LoadedModel::load(&bytes, &origin))
            .await
            .map_err(|e| InferenceError::Model(format!("the loading thread failed: {e}")))??;
        let version = loaded.info.version.clone();
        if current.as_ref().is_some_and(|c| c.info.version == version) {
            return Ok(LoadOutcome::Unchanged { version });
        }
        let info = loaded.info.clone();
        let previous = self.slots.install(Arc::new(loaded));
        self.metrics.swaps.inc();
        self.metrics.model_info.reset();
        self.metrics
            .model_info
            .with_label_values(&[
                &info.version,
                &info.architecture,
                &info.synthetic.to_string(),
            ])
            .set(1);
        self.metrics
            .model_loaded_seconds
            .set(info.loaded_at_unix_ms as f64 / 1e3);
        Ok(LoadOutcome::Swapped {
            version,
            previous: previous.map(|p| p.info.version.clone()),
        })
    }

    fn record_target(&self, record: &ModelRecord) -> Result<(String, ModelOrigin), InferenceError> {
        let key = if record.checkpoint.key.is_empty() {
            self.key_of(&record.checkpoint.uri)?
        } else {
            record.checkpoint.key.clone()
        };
        Ok((
            key,
            ModelOrigin {
                version: Some(record.version.clone()),
                synthetic: Some(record.synthetic),
                thresholds: record.thresholds.clone(),
                expected_sha256: Some(record.checkpoint.sha256.clone()),
            },
        ))
    }

    /// A store key from a key or a URI of this store.
    fn key_of(&self, location: &str) -> Result<String, InferenceError> {
        if location.contains("://") {
            chexvision_store::key_of_uri(location, &self.store.uri("")).ok_or_else(|| {
                InferenceError::Checkpoint(format!(
                    "checkpoint {location} is not in this store ({})",
                    self.store.uri("")
                ))
            })
        } else if location.is_empty() {
            Err(InferenceError::Checkpoint("no checkpoint named".into()))
        } else {
            Ok(location.to_string())
        }
    }
}
