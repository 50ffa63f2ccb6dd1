//! The preprocess service: turns each raw shard into a ready shard (decoded,
//! resized to `size_px` square, contrast-equalised with CLAHE) under
//! `datasets/{id}/ready/{size}px/{split}/shard-{n:05}.parquet`, announces it
//! on `chexvision.shards.ready`, and once every shard of the dataset's
//! manifest is ready writes the ready manifest
//! (`datasets/{id}/ready/{size}px/manifest.json`: ready shards, rows, label
//! counts) and announces `DatasetReady` on `chexvision.datasets`.
//!
//! Idempotent: each ready shard is recorded under a name that holds the
//! sha256 of the raw shard it came from, so a redelivered event does no work
//! and announces nothing, and completeness is one listing whatever the
//! dataset's size. `DatasetReady` is recorded too. A corrupt image is set
//! aside with its reason; the rest of its shard is kept.

pub mod service;
pub mod settings;

use std::{collections::BTreeSet, sync::Arc};

use bytes::Bytes;
use chexvision_bus::{publish_event, Bus, BusError};
use chexvision_config::Topics;
use chexvision_dataset::{
    dataset_ready_key, is_valid_id, manifest_key, raw_shard_key, read_shard, ready_manifest_key,
    ready_shard_key, write_shard, ImageFormat, LabelSet, Manifest, ManifestShard, ReadyManifest,
    RejectedImage, ShardOptions, ShardRow, Split,
};
use chexvision_events::{
    DatasetIngested, DatasetReady, Envelope, ObjectRef, ShardStage, ShardWritten,
};
use chexvision_store::{get_json, put_json, sha256_hex, ObjectStore, StoreError};
use chexvision_vision::{clahe, decode_gray8, resize_gray8, DecodeLimits, ResizeFilter};
use serde::{Deserialize, Serialize};

pub use settings::{PreprocessSettings, ReadyFormat};

pub const PRODUCER: &str = "chexvision-preprocess";

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The event cannot be acted on; retrying will not help.
    #[error("bad event: {0}")]
    BadEvent(String),
    #[error(
        "raw shard {key} has sha256 {found}, the event announced {expected}: \
         the dataset was re-ingested differently"
    )]
    Stale {
        key: String,
        found: String,
        expected: String,
    },
    #[error("no manifest at {0}: ingest the dataset first")]
    NoManifest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("shard {key}: {detail}")]
    Shard { key: String, detail: String },
}

/// What preprocessing one raw shard did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadyShard {
    pub split: String,
    pub index: u32,
    pub raw_sha256: String,
    pub key: String,
    pub uri: String,
    /// Empty when every image of the raw shard was rejected.
    pub sha256: String,
    pub size_bytes: u64,
    pub rows: u64,
    /// Label bits of each ready row, for the ready manifest's counts.
    #[serde(default)]
    pub label_bits: Vec<u16>,
    pub rejected: Vec<RejectedImage>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ShardOutcome {
    Written(ReadyShard),
    /// Done before (a redelivery): nothing written or announced.
    Skipped(ReadyShard),
}

/// Folder of the per-shard records at `size_px`.
pub fn shard_state_prefix(dataset_id: &str, size_px: u32) -> String {
    format!("datasets/{dataset_id}/ready/{size_px}px/state/")
}

/// The record that a raw shard (known by its sha256) is ready. The raw
/// shard's hash is in the name, so one listing of [`shard_state_prefix`]
/// tells which shards of a manifest are ready, without reading any record.
pub fn shard_state_key(
    dataset_id: &str,
    size_px: u32,
    split: &str,
    index: u32,
    raw_sha256: &str,
) -> String {
    let short = &raw_sha256[..raw_sha256.len().min(16)];
    format!(
        "{}{split}-{index:05}-{short}.json",
        shard_state_prefix(dataset_id, size_px)
    )
}

/// Decodes, resizes and equalises one image; returns the stored bytes.
pub fn prepare_image(
    bytes: &[u8],
    settings: &PreprocessSettings,
) -> Result<Vec<u8>, chexvision_vision::VisionError> {
    let limits = DecodeLimits {
        max_pixels: settings.max_image_pixels,
        max_bytes: settings.max_image_bytes,
    };
    let image = decode_gray8(bytes, &limits)?;
    let resized = resize_gray8(
        &image,
        settings.size_px,
        settings.size_px,
        ResizeFilter::Bilinear,
    )?;
    let equalised = clahe(
        &resized,
        settings.clahe_clip_limit,
        (settings.clahe_tiles, settings.clahe_tiles),
    )?;
    match settings.ready_format {
        ReadyFormat::Raw => Ok(equalised.pixels),
        ReadyFormat::Png => encode_png(equalised.width, equalised.height, &equalised.pixels)
            .map_err(|detail| chexvision_vision::VisionError::InvalidParameter { detail }),
    }
}

fn encode_png(width: u32, height: u32, pixels: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(pixels).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Prepares every row of a raw shard (on all cores); corrupt images are set
/// aside with the reason.
fn prepare_rows(
    rows: Vec<ShardRow>,
    settings: &PreprocessSettings,
) -> (Vec<ShardRow>, Vec<RejectedImage>) {
    let format = match settings.ready_format {
        ReadyFormat::Raw => ImageFormat::Gray8,
        ReadyFormat::Png => ImageFormat::Png,
    };
    prepare_rows_with(rows, format, |row| {
        prepare_image(&row.image, settings).map_err(|e| format!("undecodable: {e}"))
    })
}

/// [`prepare_rows`] with the per-image step given. A panic in it (a
/// decoder bug) rejects that image, named, and keeps the others.
fn prepare_rows_with(
    rows: Vec<ShardRow>,
    format: ImageFormat,
    prepare: impl Fn(&ShardRow) -> Result<Vec<u8>, String> + Sync,
) -> (Vec<ShardRow>, Vec<RejectedImage>) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = rows.len().div_ceil(threads).max(1);
    let prepare = &prepare;
    let one = |row: &ShardRow| -> Result<ShardRow, RejectedImage> {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| prepare(row)))
            .unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(format!("the decoder panicked: {message}"))
            });
        match result {
            Ok(bytes) => Ok(ShardRow {
                image_format: format,
                image: Bytes::from(bytes),
                ..row.clone()
            }),
            Err(reason) => Err(RejectedImage {
                image: row.filename.clone(),
                reason,
            }),
        }
    };
    let one = &one;
    let results: Vec<Result<ShardRow, RejectedImage>> = std::thread::scope(|scope| {
        let handles: Vec<_> = rows
            .chunks(chunk)
            .map(|part| {
                (
                    part,
                    scope.spawn(move || part.iter().map(one).collect::<Vec<_>>()),
                )
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(part, handle)| {
                // Only a panic outside the per-image guard gets here: name
                // every image of the chunk rather than lose them silently.
                handle.join().unwrap_or_else(|_| {
                    part.iter()
                        .map(|row| {
                            Err(RejectedImage {
                                image: row.filename.clone(),
                                reason: "worker thread failed".into(),
                            })
                        })
                        .collect()
                })
            })
            .collect()
    });
    let mut ready = Vec::with_capacity(results.len());
    let mut rejected = Vec::new();
    for result in results {
        match result {
            Ok(row) => ready.push(row),
            Err(r) => rejected.push(r),
        }
    }
    (ready, rejected)
}

#[derive(Clone)]
pub struct Preprocess {
    pub store: Arc<dyn ObjectStore>,
    pub bus: Arc<dyn Bus>,
    pub topics: Topics,
    pub settings: PreprocessSettings,
}

/// A dataset whose every raw shard is ready, not yet announced.
#[derive(Debug)]
pub struct Complete {
    pub manifest: Manifest,
    pub manifest_sha256: String,
    pub manifest_size: u64,
}

impl Preprocess {
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, PreprocessError> {
        Ok(get_json(self.store.as_ref(), key).await?)
    }

    /// Makes the ready shard of one raw shard announcement.
    pub async fn process_raw_shard(
        &self,
        raw: &ShardWritten,
        cause: Option<&Envelope>,
    ) -> Result<ShardOutcome, PreprocessError> {
        if raw.stage() != ShardStage::Raw {
            return Err(PreprocessError::BadEvent(format!(
                "expected a raw shard, got stage {:?}",
                raw.stage()
            )));
        }
        let split = Split::from_proto(raw.split)
            .ok_or_else(|| PreprocessError::BadEvent(format!("unknown split {}", raw.split)))?;
        let shard_ref = raw
            .shard
            .as_ref()
            .filter(|s| is_sha256_hex(&s.sha256))
            .ok_or_else(|| PreprocessError::BadEvent("no valid shard sha256".into()))?;
        if !is_valid_id(&raw.dataset_id) {
            return Err(PreprocessError::BadEvent(format!(
                "invalid dataset id `{}`",
                raw.dataset_id
            )));
        }
        if raw.shard_index > MAX_SHARD_INDEX {
            return Err(PreprocessError::BadEvent(format!(
                "shard index {} is above the limit of {MAX_SHARD_INDEX}",
                raw.shard_index
            )));
        }
        let size = self.settings.size_px;
        let state = shard_state_key(
            &raw.dataset_id,
            size,
            split.name(),
            raw.shard_index,
            &shard_ref.sha256,
        );
        if let Some(done) = self.get_json::<ReadyShard>(&state).await? {
            if done.raw_sha256 == shard_ref.sha256 {
                return Ok(ShardOutcome::Skipped(done));
            }
        }
        let source_key = raw_shard_key(&raw.dataset_id, split, raw.shard_index);
        let head = self.store.head(&source_key).await?;
        if head.size > self.settings.max_shard_bytes {
            return Err(PreprocessError::BadEvent(format!(
                "raw shard {source_key} holds {} bytes, above service.max_shard_bytes ({})",
                head.size, self.settings.max_shard_bytes
            )));
        }
        let bytes = self.store.get(&source_key).await?;
        let settings = self.settings.clone();
        let dataset_id = raw.dataset_id.clone();
        let expected = shard_ref.sha256.clone();
        let shard_error = |detail: String| PreprocessError::Shard {
            key: source_key.clone(),
            detail,
        };
        let key = ready_shard_key(&raw.dataset_id, size, split, raw.shard_index);
        let prepared = tokio::task::spawn_blocking(move || {
            // Hashing and decoding a shard of 64 MB are CPU work: here, not
            // on the async threads.
            let found = sha256_hex(&bytes);
            if found != expected {
                return Err(Err(found));
            }
            prepare_shard(bytes, &settings, dataset_id).map_err(Ok)
        })
        .await
        .map_err(|e| shard_error(e.to_string()))?;
        let (encoded, label_bits, rejected) = match prepared {
            Ok(prepared) => prepared,
            Err(Err(found)) => {
                return Err(PreprocessError::Stale {
                    key: source_key,
                    found,
                    expected: shard_ref.sha256.clone(),
                })
            }
            Err(Ok(detail)) => return Err(shard_error(detail)),
        };

        let mut done = ReadyShard {
            split: split.name().to_owned(),
            index: raw.shard_index,
            raw_sha256: shard_ref.sha256.clone(),
            key: key.clone(),
            uri: String::new(),
            sha256: String::new(),
            size_bytes: 0,
            rows: label_bits.len() as u64,
            label_bits,
            rejected,
        };
        if let Some(encoded) = encoded {
            let receipt = self.store.put(&key, Bytes::from(encoded)).await?;
            done.uri = receipt.uri;
            done.sha256 = receipt.sha256;
            done.size_bytes = receipt.size;
            let body = ShardWritten {
                dataset_id: raw.dataset_id.clone(),
                stage: ShardStage::Ready as i32,
                split: split.to_proto() as i32,
                shard_index: raw.shard_index,
                shard: Some(ObjectRef {
                    uri: done.uri.clone(),
                    sha256: done.sha256.clone(),
                    size_bytes: done.size_bytes,
                }),
                row_count: done.rows,
                image_size_px: size,
                manifest: raw.manifest.clone(),
            };
            let event = Envelope::follow(cause, body, PRODUCER);
            publish_event(
                self.bus.as_ref(),
                &self.topics.shards_ready,
                &done.sha256,
                &event,
            )
            .await?;
        }
        put_json(self.store.as_ref(), &state, &done).await?;
        Ok(ShardOutcome::Written(done))
    }

    /// Whether every shard of the dataset's manifest is ready and the
    /// dataset not yet announced for that manifest. A fixed number of
    /// requests whatever the dataset's size: the manifest, the ready marker
    /// and one listing of the shard records.
    pub async fn completeness(
        &self,
        dataset_id: &str,
    ) -> Result<Option<Complete>, PreprocessError> {
        if !is_valid_id(dataset_id) {
            return Err(PreprocessError::BadEvent(format!(
                "invalid dataset id `{dataset_id}`"
            )));
        }
        let manifest_key = manifest_key(dataset_id);
        let manifest_bytes = match self.store.get(&manifest_key).await {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| PreprocessError::Shard {
                key: manifest_key.clone(),
                detail: format!("unreadable manifest: {e}"),
            })?;
        let manifest_sha = sha256_hex(&manifest_bytes);
        let size = self.settings.size_px;
        let marker = dataset_ready_key(dataset_id, size);
        if let Some(previous) = self.get_json::<ReadyMarker>(&marker).await? {
            if previous.manifest_sha256 == manifest_sha {
                return Ok(None);
            }
        }
        let present: BTreeSet<String> = self
            .store
            .list(&shard_state_prefix(dataset_id, size))
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let all_ready = manifest.shards.iter().all(|shard| {
            present.contains(&shard_state_key(
                dataset_id,
                size,
                &shard.split,
                shard.index,
                &shard.sha256,
            ))
        });
        Ok(all_ready.then(|| Complete {
            manifest,
            manifest_sha256: manifest_sha,
            manifest_size: manifest_bytes.len() as u64,
        }))
    }

    /// When the dataset is complete and not yet announced: writes the ready
    /// manifest (reading each shard's record once), announces
    /// `DatasetReady` and records the announcement. Returns the event's body
    /// when this call announced it.
    ///
    /// Called by the CLI, and in the service only for `DatasetIngested`
    /// records, which are keyed by dataset id: the one replica that owns
    /// that partition announces, so two replicas do not both announce.
    pub async fn announce_if_complete(
        &self,
        dataset_id: &str,
        cause: Option<&Envelope>,
    ) -> Result<Option<DatasetReady>, PreprocessError> {
        let Some(complete) = self.completeness(dataset_id).await? else {
            return Ok(None);
        };
        let size = self.settings.size_px;
        let raw = &complete.manifest;
        let mut ready = ReadyManifest {
            image_size_px: size,
            raw_manifest_sha256: complete.manifest_sha256.clone(),
            manifest: Manifest::new(dataset_id, raw.synthetic, raw.source.clone()),
        };
        for shard in &raw.shards {
            let state = shard_state_key(dataset_id, size, &shard.split, shard.index, &shard.sha256);
            let Some(done) = self.get_json::<ReadyShard>(&state).await? else {
                // Deleted between the listing and now: not complete after all.
                return Ok(None);
            };
            let split = Split::from_name(&done.split).ok_or_else(|| PreprocessError::Shard {
                key: state.clone(),
                detail: format!("unknown split `{}`", done.split),
            })?;
            for bits in &done.label_bits {
                ready.manifest.count_row(split, LabelSet::from_bits(*bits));
            }
            for rejected in &done.rejected {
                ready.manifest.reject(&rejected.image, &rejected.reason);
            }
            if !done.sha256.is_empty() {
                ready.manifest.shards.push(ManifestShard {
                    key: done.key.clone(),
                    uri: done.uri.clone(),
                    split: done.split.clone(),
                    index: done.index,
                    sha256: done.sha256.clone(),
                    size_bytes: done.size_bytes,
                    rows: done.rows,
                });
            }
        }
        ready.manifest.rejected.sort();
        let ready_key = ready_manifest_key(dataset_id, size);
        let receipt = put_json(self.store.as_ref(), &ready_key, &ready).await?;
        let manifest_key = manifest_key(dataset_id);
        let body = DatasetReady {
            dataset_id: dataset_id.to_owned(),
            manifest: Some(ObjectRef {
                uri: self.store.uri(&manifest_key),
                sha256: complete.manifest_sha256.clone(),
                size_bytes: complete.manifest_size,
            }),
            image_size_px: size,
            shard_count: u32::try_from(ready.manifest.shards.len()).unwrap_or(u32::MAX),
            rows_per_split: ready.manifest.rows_per_split.clone().into_iter().collect(),
            synthetic: raw.synthetic,
            ready_manifest: Some(ObjectRef {
                uri: receipt.uri,
                sha256: receipt.sha256,
                size_bytes: receipt.size,
            }),
        };
        let event = Envelope::follow(cause, body.clone(), PRODUCER);
        publish_event(
            self.bus.as_ref(),
            &self.topics.datasets,
            &format!("{dataset_id}@{size}px"),
            &event,
        )
        .await?;
        put_json(
            self.store.as_ref(),
            &dataset_ready_key(dataset_id, size),
            &ReadyMarker {
                manifest_sha256: complete.manifest_sha256,
            },
        )
        .await?;
        Ok(Some(body))
    }

    /// Hands the announcement of a complete dataset to the replica that
    /// owns its partition: a `DatasetIngested` for it, keyed by dataset id,
    /// on the raw shards topic (ingest sends the first one; this one follows
    /// the last shard to be ready). Returns whether the dataset was complete.
    pub async fn hand_over_if_complete(
        &self,
        dataset_id: &str,
        cause: Option<&Envelope>,
    ) -> Result<bool, PreprocessError> {
        let Some(complete) = self.completeness(dataset_id).await? else {
            return Ok(false);
        };
        let raw = &complete.manifest;
        let body = DatasetIngested {
            dataset_id: dataset_id.to_owned(),
            manifest: Some(ObjectRef {
                uri: self.store.uri(&manifest_key(dataset_id)),
                sha256: complete.manifest_sha256.clone(),
                size_bytes: complete.manifest_size,
            }),
            shard_count: u32::try_from(raw.shards.len()).unwrap_or(u32::MAX),
            rows_per_split: raw.rows_per_split.clone().into_iter().collect(),
            rejected_count: raw.rejected_total,
            synthetic: raw.synthetic,
        };
        let event = Envelope::follow(cause, body, PRODUCER);
        publish_event(
            self.bus.as_ref(),
            &self.topics.shards_raw,
            dataset_id,
            &event,
        )
        .await?;
        Ok(true)
    }

    /// Preprocesses every shard of a dataset's manifest (the CLI's path),
    /// then announces the dataset. `progress` is called after each shard.
    pub async fn run_dataset(
        &self,
        dataset_id: &str,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<(Vec<ShardOutcome>, Option<DatasetReady>), PreprocessError> {
        let manifest_key = manifest_key(dataset_id);
        let manifest: Manifest = self
            .get_json(&manifest_key)
            .await?
            .ok_or_else(|| PreprocessError::NoManifest(self.store.uri(&manifest_key)))?;
        let mut outcomes = Vec::new();
        for (done, shard) in manifest.shards.iter().enumerate() {
            let split = Split::from_name(&shard.split).ok_or_else(|| {
                PreprocessError::BadEvent(format!("manifest split `{}`", shard.split))
            })?;
            let event = ShardWritten {
                dataset_id: dataset_id.to_owned(),
                stage: ShardStage::Raw as i32,
                split: split.to_proto() as i32,
                shard_index: shard.index,
                shard: Some(ObjectRef {
                    uri: shard.uri.clone(),
                    sha256: shard.sha256.clone(),
                    size_bytes: shard.size_bytes,
                }),
                row_count: shard.rows,
                image_size_px: 0,
                manifest: None,
            };
            outcomes.push(self.process_raw_shard(&event, None).await?);
            progress(done + 1, manifest.shards.len());
        }
        let ready = self.announce_if_complete(dataset_id, None).await?;
        Ok((outcomes, ready))
    }
}

/// Reads a raw shard, prepares its images (on all cores) and encodes the
/// ready shard: `None` when every image was rejected.
type PreparedShard = (Option<Vec<u8>>, Vec<u16>, Vec<RejectedImage>);

fn prepare_shard(
    bytes: Bytes,
    settings: &PreprocessSettings,
    dataset_id: String,
) -> Result<PreparedShard, String> {
    let reader = read_shard(bytes).map_err(|e| e.to_string())?;
    let synthetic = reader
        .metadata()
        .iter()
        .find(|(k, _)| k == "chexvision.synthetic")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "false".into());
    let rows: Vec<ShardRow> = reader
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if rows.len() as u64 > u64::from(settings.max_shard_rows) {
        return Err(format!(
            "{} rows, above service.max_shard_rows ({})",
            rows.len(),
            settings.max_shard_rows
        ));
    }
    let (ready, rejected) = prepare_rows(rows, settings);
    let label_bits: Vec<u16> = ready.iter().map(|r| r.labels.bits()).collect();
    if ready.is_empty() {
        return Ok((None, label_bits, rejected));
    }
    let options = ShardOptions {
        row_group_rows: settings.row_group_rows as usize,
        metadata: vec![
            ("chexvision.dataset_id".into(), dataset_id),
            ("chexvision.stage".into(), "ready".into()),
            (
                "chexvision.image_size_px".into(),
                settings.size_px.to_string(),
            ),
            (
                "chexvision.ready_format".into(),
                settings.ready_format.name().into(),
            ),
            (
                "chexvision.clahe".into(),
                format!(
                    "clip {} tiles {}x{}",
                    settings.clahe_clip_limit, settings.clahe_tiles, settings.clahe_tiles
                ),
            ),
            ("chexvision.synthetic".into(), synthetic),
        ],
        ..ShardOptions::default()
    };
    let encoded = write_shard(&ready, &options).map_err(|e| e.to_string())?;
    Ok((Some(encoded), label_bits, rejected))
}

/// Highest shard index an event may name (NIH at 64 MB shards has ~650).
pub const MAX_SHARD_INDEX: u32 = 99_999;

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `dataset-ready.json`: `DatasetReady` was announced for this manifest.
#[derive(Debug, Serialize, Deserialize)]
struct ReadyMarker {
    manifest_sha256: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chexvision_dataset::LabelSet;

    fn row(name: &str) -> ShardRow {
        ShardRow {
            filename: name.into(),
            patient_id: "1".into(),
            follow_up: 0,
            labels: LabelSet::from_bits(0),
            split: Split::Train,
            view_position: "PA".into(),
            age: None,
            sex: "M".into(),
            original_width: 1,
            original_height: 1,
            image_format: ImageFormat::Png,
            image: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn a_panicking_decoder_rejects_that_image_by_name_and_keeps_the_rest() {
        let rows: Vec<ShardRow> = (0..9).map(|i| row(&format!("{i}.png"))).collect();
        let (ready, rejected) = prepare_rows_with(rows, ImageFormat::Gray8, |row| {
            match row.filename.as_str() {
                "4.png" => panic!("bug in a decoder"),
                "7.png" => Err("undecodable: truncated".into()),
                _ => Ok(vec![1, 2, 3]),
            }
        });
        let names: Vec<&str> = ready.iter().map(|r| r.filename.as_str()).collect();
        assert_eq!(
            names,
            ["0.png", "1.png", "2.png", "3.png", "5.png", "6.png", "8.png"]
        );
        assert!(ready.iter().all(|r| r.image_format == ImageFormat::Gray8));
        assert_eq!(rejected.len(), 2);
        assert_eq!(rejected[0].image, "4.png");
        assert!(
            rejected[0].reason.contains("panicked: bug in a decoder"),
            "{}",
            rejected[0].reason
        );
        assert_eq!(rejected[1].image, "7.png");
    }
}
