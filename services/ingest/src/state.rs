//! Ingest progress kept in the store, so a run that was killed resumes where
//! it stopped: a shard recorded here is not read, written or announced again.
//!
//! ```text
//! datasets/{id}/ingest/state.json                  what the run is (fingerprint) and what it announced
//! datasets/{id}/ingest/shards/{split}-{n:05}.json  one finished shard each
//! ```
//!
//! Each shard adds one small object instead of rewriting one file that grows
//! with the dataset (tens of MB for NIH after every shard); a resumed run
//! reads them with one listing.
//!
//! A shard is recorded right after it is announced. A kill between the two
//! can announce the shards in flight (at most `shard_concurrency`) twice;
//! consumers are idempotent by content hash, so that costs nothing but a
//! duplicate record.

use std::collections::BTreeMap;

use chexvision_dataset::RejectedImage;
use serde::{Deserialize, Serialize};

/// 2: finished shards in their own objects (1 kept them in `state.json`,
/// which is still read).
pub const STATE_FORMAT_VERSION: u32 = 2;

/// What must match for a run to resume another's work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub source_uri: String,
    pub source_format: String,
    pub shard_target_rows: u32,
    pub shard_target_bytes: u64,
    pub row_group_rows: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestState {
    pub format_version: u32,
    pub fingerprint: Fingerprint,
    /// Finished shards by shard key: in memory, from the per-shard objects
    /// (format 1 kept them here, in `state.json`).
    #[serde(default, skip_serializing)]
    pub shards: BTreeMap<String, DoneShard>,
    /// sha256 of the manifest whose `DatasetIngested` was announced.
    #[serde(default)]
    pub manifest_announced: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneShard {
    pub split: String,
    pub index: u32,
    /// The plan this shard was built from: first and last image, and count.
    pub first: String,
    pub last: String,
    pub planned_rows: u64,
    /// Empty when every image of the shard was rejected (nothing written).
    pub sha256: String,
    pub size_bytes: u64,
    pub uri: String,
    /// Label bits of each row written, for the manifest's counts.
    pub label_bits: Vec<u16>,
    /// Images set aside while building the shard (unreadable ones).
    pub rejected: Vec<RejectedImage>,
}

impl DoneShard {
    pub fn matches(&self, first: &str, last: &str, planned_rows: u64) -> bool {
        self.first == first && self.last == last && self.planned_rows == planned_rows
    }
}

impl IngestState {
    pub fn new(fingerprint: Fingerprint) -> Self {
        IngestState {
            format_version: STATE_FORMAT_VERSION,
            fingerprint,
            shards: BTreeMap::new(),
            manifest_announced: None,
        }
    }
}
