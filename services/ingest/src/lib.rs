//! The ingest service: reads a source (NIH layout, the published 320 px
//! Parquet files, or the synthetic generator), writes Parquet shards to
//! `datasets/{id}/raw/{split}/shard-{n:05}.parquet`, announces each on
//! `chexvision.shards.raw` once it is durable, and finishes with
//! `datasets/{id}/manifest.json`.
//!
//! Runs are idempotent and resumable: shard contents and keys depend only on
//! the source and the settings, and finished shards are recorded in the store
//! (see [`state`]), so a re-run announces nothing twice and a killed run
//! completes the dataset without duplicate shards.

pub mod metrics;
pub mod service;
pub mod settings;
pub mod source;
pub mod state;

use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;
use chexvision_bus::{publish_event, Bus, BusError};
use chexvision_config::Topics;
use chexvision_dataset::{
    manifest_key, probe_image, raw_shard_key, write_shard, LabelSet, Manifest, ManifestShard,
    ManifestSource, RejectedImage, ShardOptions, ShardRow, Split,
};
use chexvision_events::{DatasetIngested, Envelope, ObjectRef, ShardStage, ShardWritten};
use chexvision_store::{get_json, put_json, ObjectStore, StoreError};
use futures::{stream, StreamExt};
use tokio::sync::{Mutex, Semaphore};

pub use settings::IngestSettings;
use source::ImageRef;
pub use source::{Source, SourceEvent, SourceFiles, SourceFormat, SourceItem};
use state::{DoneShard, Fingerprint, IngestState};

/// Name written as `producer` in the events ingest sends.
pub const PRODUCER: &str = "chexvision-ingest";

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("source: {0}")]
    Source(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("shard {key}: {detail}")]
    Shard { key: String, detail: String },
    #[error("invalid dataset id `{0}`: use letters, digits, '.', '_' and '-' (at most 128)")]
    InvalidDatasetId(String),
    #[error(
        "dataset `{dataset_id}` was ingested from {existing} with other settings; \
         use a new dataset id or delete datasets/{dataset_id}/"
    )]
    Conflict {
        dataset_id: String,
        existing: String,
    },
    #[error(
        "{rejected} of {seen} images rejected ({share:.1} %), above the limit of {limit:.1} %; \
         first reasons: {examples}"
    )]
    TooManyRejected {
        rejected: u64,
        seen: u64,
        share: f64,
        limit: f64,
        examples: String,
    },
    #[error("ingest state {key} is unreadable: {detail}")]
    State { key: String, detail: String },
}

/// Progress of a run, for a terminal bar or a metric.
pub trait Progress: Send + Sync {
    /// The source holds `images` more images than announced so far.
    fn add_total(&self, images: u64);
    /// `images` more images are written (or rejected).
    fn advance(&self, images: u64);
}

/// Progress that goes nowhere.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn add_total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct IngestReport {
    pub manifest: Manifest,
    pub manifest_uri: String,
    pub manifest_sha256: String,
    /// Shards built and announced by this run.
    pub shards_written: u32,
    /// Shards an earlier run had finished.
    pub shards_skipped: u32,
    /// Whether this run announced the dataset's completion (`DatasetIngested`);
    /// false when an earlier run announced the same manifest.
    pub completion_announced: bool,
}

pub fn validate_dataset_id(id: &str) -> Result<(), IngestError> {
    if chexvision_dataset::is_valid_id(id) {
        Ok(())
    } else {
        Err(IngestError::InvalidDatasetId(id.to_owned()))
    }
}

pub fn state_key(dataset_id: &str) -> String {
    format!("datasets/{dataset_id}/ingest/state.json")
}

/// Folder of the finished-shard records of a dataset's ingest.
pub fn shard_state_prefix(dataset_id: &str) -> String {
    format!("datasets/{dataset_id}/ingest/shards/")
}

/// The record that one shard (by its key) is finished.
pub fn shard_state_key(dataset_id: &str, split: &str, index: u32) -> String {
    format!("{}{split}-{index:05}.json", shard_state_prefix(dataset_id))
}

/// The ingest pipeline over one store and bus.
#[derive(Clone)]
pub struct Ingest {
    pub store: Arc<dyn ObjectStore>,
    pub bus: Arc<dyn Bus>,
    pub topics: Topics,
    pub settings: IngestSettings,
    pub metrics: Option<metrics::IngestMetrics>,
}

/// Images of one split waiting for their shard to close.
struct OpenShard {
    index: u32,
    items: Vec<SourceItem>,
    bytes: u64,
}

/// Everything a shard task needs, shared.
struct Run {
    ingest: Ingest,
    dataset_id: String,
    files: Option<SourceFiles>,
    synthetic: bool,
    cause: Option<Envelope>,
    state: Mutex<IngestState>,
    fetch_limit: usize,
}

type ShardTasks = tokio::task::JoinSet<(String, u64, Result<ShardOutcome, IngestError>)>;

enum ShardOutcome {
    Written(DoneShard),
    Skipped(DoneShard),
}

impl Ingest {
    /// Ingests `source` as `dataset_id`. `cause` is the request event, if any
    /// (its correlation id follows into the announcements).
    pub async fn run(
        &self,
        source: Source,
        dataset_id: &str,
        cause: Option<&Envelope>,
        progress: &dyn Progress,
    ) -> Result<IngestReport, IngestError> {
        validate_dataset_id(dataset_id)?;
        let fingerprint = Fingerprint {
            source_uri: source.uri.clone(),
            source_format: source.format.name().to_owned(),
            shard_target_rows: self.settings.shard_target_rows,
            shard_target_bytes: self.settings.shard_target_bytes,
            row_group_rows: self.settings.row_group_rows,
        };
        let state = self.load_state(dataset_id, &fingerprint).await?;
        let mut manifest = Manifest::new(
            dataset_id,
            source.synthetic,
            ManifestSource {
                format: source.format.name().to_owned(),
                uri: source.uri.clone(),
            },
        );
        let run = Arc::new(Run {
            ingest: self.clone(),
            dataset_id: dataset_id.to_owned(),
            files: source.files(),
            synthetic: source.synthetic,
            cause: cause.cloned(),
            state: Mutex::new(state),
            fetch_limit: self.settings.fetch_concurrency as usize,
        });

        let (mut events, source_task) = source.stream();
        let slots = Arc::new(Semaphore::new(self.settings.shard_concurrency as usize));
        let mut tasks: ShardTasks = tokio::task::JoinSet::new();
        let mut open: BTreeMap<Split, OpenShard> = BTreeMap::new();
        let mut next_index: BTreeMap<Split, u32> = BTreeMap::new();
        let mut planned_keys = Vec::new();
        let mut failure: Option<IngestError> = None;
        let (mut written, mut skipped) = (0u32, 0u32);

        let spawn_shard =
            |tasks: &mut ShardTasks, split: Split, shard: OpenShard, planned: &mut Vec<String>| {
                let key = raw_shard_key(dataset_id, split, shard.index);
                planned.push(key.clone());
                let run = run.clone();
                let slots = slots.clone();
                tasks.spawn(async move {
                    let _slot = slots.acquire_owned().await;
                    let rows = shard.items.len() as u64;
                    let outcome = run.finish_shard(&key, split, shard).await;
                    (key, rows, outcome)
                });
            };

        while let Some(event) = events.recv().await {
            match event {
                SourceEvent::Total(images) => progress.add_total(images),
                SourceEvent::Rejected { image, reason } => {
                    manifest.reject(&image, &reason);
                    self.count_images("rejected", 1);
                    progress.advance(1);
                }
                SourceEvent::Item(item) => {
                    let split = item.split;
                    let shard = open.entry(split).or_insert_with(|| {
                        let index = next_index.entry(split).or_insert(0);
                        *index += 1;
                        OpenShard {
                            index: *index - 1,
                            items: Vec::new(),
                            bytes: 0,
                        }
                    });
                    shard.bytes += item.size;
                    shard.items.push(*item);
                    let full = shard.items.len() as u64
                        >= u64::from(self.settings.shard_target_rows)
                        || shard.bytes >= self.settings.shard_target_bytes;
                    if full {
                        if let Some(shard) = open.remove(&split) {
                            spawn_shard(&mut tasks, split, shard, &mut planned_keys);
                        }
                    }
                }
            }
            // Surface a failed shard early instead of reading on.
            while let Some(done) = tasks.try_join_next() {
                match self.absorb(done, progress) {
                    Ok(true) => written += 1,
                    Ok(false) => skipped += 1,
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
            if failure.is_some() {
                break;
            }
        }
        drop(events);
        if failure.is_none() {
            for (split, shard) in std::mem::take(&mut open) {
                spawn_shard(&mut tasks, split, shard, &mut planned_keys);
            }
        }
        while let Some(done) = tasks.join_next().await {
            match self.absorb(done, progress) {
                Ok(true) => written += 1,
                Ok(false) => skipped += 1,
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        let source_result = source_task.finish().await;
        if let Some(error) = failure {
            return Err(error);
        }
        source_result?;

        self.finish_manifest(&run, &planned_keys, manifest, (written, skipped))
            .await
    }

    fn count_images(&self, outcome: &str, n: u64) {
        if let Some(metrics) = &self.metrics {
            metrics.images.with_label_values(&[outcome]).inc_by(n);
        }
    }

    /// Takes in a finished shard task; true when it wrote a shard.
    fn absorb(
        &self,
        done: Result<(String, u64, Result<ShardOutcome, IngestError>), tokio::task::JoinError>,
        progress: &dyn Progress,
    ) -> Result<bool, IngestError> {
        let (key, rows, outcome) = done.map_err(|e| IngestError::Shard {
            key: "?".into(),
            detail: format!("task failed: {e}"),
        })?;
        let outcome = outcome?;
        progress.advance(rows);
        let (kind, shard) = match &outcome {
            ShardOutcome::Written(shard) => ("written", shard),
            ShardOutcome::Skipped(shard) => ("skipped", shard),
        };
        if let Some(metrics) = &self.metrics {
            metrics.shards.with_label_values(&[kind]).inc();
            metrics
                .images
                .with_label_values(&["written"])
                .inc_by(shard.label_bits.len() as u64);
            metrics
                .images
                .with_label_values(&["rejected"])
                .inc_by(shard.rejected.len() as u64);
        }
        tracing::info!(%key, kind, rows = shard.label_bits.len(), "shard done");
        Ok(matches!(outcome, ShardOutcome::Written(_)))
    }

    async fn load_state(
        &self,
        dataset_id: &str,
        fingerprint: &Fingerprint,
    ) -> Result<IngestState, IngestError> {
        let key = state_key(dataset_id);
        let state_error = |key: &str, e: StoreError| match e {
            StoreError::Decode { detail, .. } => IngestError::State {
                key: key.to_owned(),
                detail,
            },
            other => IngestError::Store(other),
        };
        let Some(mut state) = get_json::<IngestState>(self.store.as_ref(), &key)
            .await
            .map_err(|e| state_error(&key, e))?
        else {
            let state = IngestState::new(fingerprint.clone());
            put_json(self.store.as_ref(), &key, &state).await?;
            return Ok(state);
        };
        if &state.fingerprint != fingerprint {
            return Err(IngestError::Conflict {
                dataset_id: dataset_id.to_owned(),
                existing: state.fingerprint.source_uri,
            });
        }
        // One listing and one read per finished shard, once per run.
        let records = self.store.list(&shard_state_prefix(dataset_id)).await?;
        for record in records {
            if let Some(done) = get_json::<DoneShard>(self.store.as_ref(), &record.key)
                .await
                .map_err(|e| state_error(&record.key, e))?
            {
                let split = Split::from_name(&done.split).unwrap_or(Split::Train);
                state
                    .shards
                    .insert(raw_shard_key(dataset_id, split, done.index), done);
            }
        }
        Ok(state)
    }

    async fn finish_manifest(
        &self,
        run: &Run,
        planned_keys: &[String],
        mut manifest: Manifest,
        (shards_written, shards_skipped): (u32, u32),
    ) -> Result<IngestReport, IngestError> {
        let state = run.state.lock().await;
        let mut entries: Vec<(&String, &DoneShard)> = planned_keys
            .iter()
            .filter_map(|k| state.shards.get(k).map(|s| (k, s)))
            .collect();
        entries.sort_by(|a, b| (&a.1.split, a.1.index).cmp(&(&b.1.split, b.1.index)));
        for (key, shard) in entries {
            let split = Split::from_name(&shard.split).unwrap_or(Split::Train);
            for bits in &shard.label_bits {
                manifest.count_row(split, LabelSet::from_bits(*bits));
            }
            for rejected in &shard.rejected {
                manifest.reject(&rejected.image, &rejected.reason);
            }
            if !shard.sha256.is_empty() {
                manifest.shards.push(ManifestShard {
                    key: key.clone(),
                    uri: shard.uri.clone(),
                    split: shard.split.clone(),
                    index: shard.index,
                    sha256: shard.sha256.clone(),
                    size_bytes: shard.size_bytes,
                    rows: shard.label_bits.len() as u64,
                });
            }
        }
        drop(state);
        // Order-independent: shard tasks finish in any order.
        manifest.rejected.sort();
        let share = manifest.rejected_share();
        if share > self.settings.max_rejected_share {
            let mut reasons: BTreeMap<&str, u64> = BTreeMap::new();
            for r in &manifest.rejected {
                *reasons.entry(r.reason.as_str()).or_default() += 1;
            }
            let mut reasons: Vec<(&str, u64)> = reasons.into_iter().collect();
            reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
            let examples = reasons
                .iter()
                .take(3)
                .map(|(reason, n)| format!("{n}× {reason}"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(IngestError::TooManyRejected {
                rejected: manifest.rejected_total,
                seen: manifest.rejected_total + manifest.rows_total,
                share: share * 100.0,
                limit: self.settings.max_rejected_share * 100.0,
                examples,
            });
        }
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| IngestError::State {
            key: manifest_key(&run.dataset_id),
            detail: e.to_string(),
        })?;
        let receipt = self
            .store
            .put(&manifest_key(&run.dataset_id), Bytes::from(json))
            .await?;
        let completion_announced = run.announce_completion(&manifest, &receipt).await?;
        Ok(IngestReport {
            manifest,
            manifest_uri: receipt.uri,
            manifest_sha256: receipt.sha256,
            shards_written,
            shards_skipped,
            completion_announced,
        })
    }
}

impl Run {
    /// Announces `DatasetIngested` unless this manifest was announced before.
    async fn announce_completion(
        &self,
        manifest: &Manifest,
        receipt: &chexvision_store::PutReceipt,
    ) -> Result<bool, IngestError> {
        let mut state = self.state.lock().await;
        if state.manifest_announced.as_deref() == Some(receipt.sha256.as_str()) {
            return Ok(false);
        }
        let body = DatasetIngested {
            dataset_id: self.dataset_id.clone(),
            manifest: Some(ObjectRef {
                uri: receipt.uri.clone(),
                sha256: receipt.sha256.clone(),
                size_bytes: receipt.size,
            }),
            shard_count: u32::try_from(manifest.shards.len()).unwrap_or(u32::MAX),
            rows_per_split: manifest.rows_per_split.clone().into_iter().collect(),
            rejected_count: manifest.rejected_total,
            synthetic: manifest.synthetic,
        };
        let event = Envelope::follow(self.cause.as_ref(), body, PRODUCER);
        publish_event(
            self.ingest.bus.as_ref(),
            &self.ingest.topics.shards_raw,
            &self.dataset_id,
            &event,
        )
        .await?;
        state.manifest_announced = Some(receipt.sha256.clone());
        self.save_state(&state).await?;
        Ok(true)
    }

    async fn save_state(&self, state: &IngestState) -> Result<(), IngestError> {
        put_json(
            self.ingest.store.as_ref(),
            &state_key(&self.dataset_id),
            state,
        )
        .await?;
        Ok(())
    }

    async fn finish_shard(
        &self,
        key: &str,
        split: Split,
        shard: OpenShard,
    ) -> Result<ShardOutcome, IngestError> {
        let first = shard
            .items
            .first()
            .map(|i| i.filename.clone())
            .unwrap_or_default();
        let last = shard
            .items
            .last()
            .map(|i| i.filename.clone())
            .unwrap_or_default();
        let planned_rows = shard.items.len() as u64;
        if let Some(done) = self.state.lock().await.shards.get(key) {
            if done.matches(&first, &last, planned_rows) {
                return Ok(ShardOutcome::Skipped(done.clone()));
            }
        }
        let (rows, rejected) = self.resolve_images(shard.items).await?;
        let label_bits: Vec<u16> = rows.iter().map(|r| r.labels.bits()).collect();
        let mut done = DoneShard {
            split: split.name().to_owned(),
            index: shard.index,
            first,
            last,
            planned_rows,
            sha256: String::new(),
            size_bytes: 0,
            uri: String::new(),
            label_bits,
            rejected,
        };
        if !rows.is_empty() {
            let options = ShardOptions {
                row_group_rows: self.ingest.settings.row_group_rows as usize,
                metadata: vec![
                    ("chexvision.dataset_id".into(), self.dataset_id.clone()),
                    ("chexvision.stage".into(), "raw".into()),
                    ("chexvision.synthetic".into(), self.synthetic.to_string()),
                ],
                ..ShardOptions::default()
            };
            let encoded = tokio::task::spawn_blocking(move || write_shard(&rows, &options))
                .await
                .map_err(|e| IngestError::Shard {
                    key: key.to_owned(),
                    detail: e.to_string(),
                })?
                .map_err(|e| IngestError::Shard {
                    key: key.to_owned(),
                    detail: e.to_string(),
                })?;
            let receipt = self.ingest.store.put(key, Bytes::from(encoded)).await?;
            done.sha256 = receipt.sha256.clone();
            done.size_bytes = receipt.size;
            done.uri = receipt.uri.clone();
            self.announce(split, &done).await?;
        }
        put_json(
            self.ingest.store.as_ref(),
            &shard_state_key(&self.dataset_id, split.name(), shard.index),
            &done,
        )
        .await?;
        self.state
            .lock()
            .await
            .shards
            .insert(key.to_owned(), done.clone());
        Ok(ShardOutcome::Written(done))
    }

    async fn announce(&self, split: Split, shard: &DoneShard) -> Result<(), IngestError> {
        let body = ShardWritten {
            dataset_id: self.dataset_id.clone(),
            stage: ShardStage::Raw as i32,
            split: split.to_proto() as i32,
            shard_index: shard.index,
            shard: Some(ObjectRef {
                uri: shard.uri.clone(),
                sha256: shard.sha256.clone(),
                size_bytes: shard.size_bytes,
            }),
            row_count: shard.label_bits.len() as u64,
            image_size_px: 0,
            // Written after the last shard: its URI is known, its hash is not.
            manifest: Some(ObjectRef {
                uri: self.ingest.store.uri(&manifest_key(&self.dataset_id)),
                sha256: String::new(),
                size_bytes: 0,
            }),
        };
        let event = Envelope::follow(self.cause.as_ref(), body, PRODUCER);
        publish_event(
            self.ingest.bus.as_ref(),
            &self.ingest.topics.shards_raw,
            &shard.sha256,
            &event,
        )
        .await?;
        Ok(())
    }

    /// Fetches and checks the images of a shard, in order.
    async fn resolve_images(
        &self,
        items: Vec<SourceItem>,
    ) -> Result<(Vec<ShardRow>, Vec<RejectedImage>), IngestError> {
        let files = self.files.clone();
        let fetched: Vec<(SourceItem, Result<Bytes, IngestError>)> = stream::iter(items)
            .map(|item| {
                let files = files.clone();
                async move {
                    let bytes = match (&item.image, &files) {
                        (ImageRef::Inline(bytes), _) => Ok(bytes.clone()),
                        (ImageRef::File(key), Some(files)) => files.get(key).await,
                        (ImageRef::File(key), None) => {
                            Err(IngestError::Source(format!("no files to read {key} from")))
                        }
                    };
                    (item, bytes)
                }
            })
            .buffered(self.fetch_limit.max(1))
            .collect()
            .await;
        let mut rows = Vec::with_capacity(fetched.len());
        let mut rejected = Vec::new();
        for (item, bytes) in fetched {
            let bytes = match bytes {
                Ok(bytes) => bytes,
                // A file that vanished is the image's problem; a store that
                // is down is the run's (retried by the caller).
                Err(IngestError::Store(e)) if e.is_not_found() => {
                    rejected.push(RejectedImage {
                        image: item.filename,
                        reason: "image file disappeared".into(),
                    });
                    continue;
                }
                Err(IngestError::Source(detail)) if detail.starts_with("read ") => {
                    rejected.push(RejectedImage {
                        image: item.filename,
                        reason: format!("unreadable: {detail}"),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            let info = match probe_image(&bytes) {
                Ok(info) => info,
                Err(e) => {
                    rejected.push(RejectedImage {
                        image: item.filename,
                        reason: format!("unreadable image: {e}"),
                    });
                    continue;
                }
            };
            let (width, height) = if item.original_width > 0 && item.original_height > 0 {
                (item.original_width, item.original_height)
            } else {
                (info.width, info.height)
            };
            rows.push(ShardRow {
                filename: item.filename,
                patient_id: item.patient_id,
                follow_up: item.follow_up,
                labels: item.labels,
                split: item.split,
                view_position: item.view_position,
                age: item.age,
                sex: item.sex,
                original_width: width,
                original_height: height,
                image_format: info.format,
                image: bytes,
            });
        }
        Ok((rows, rejected))
    }
}
