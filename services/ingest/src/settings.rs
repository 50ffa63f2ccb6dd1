//! The ingest service's own settings (`service:` in its YAML config).

use chexvision_config::Validate;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// A shard is closed when it reaches this many rows...
    pub shard_target_rows: u32,
    /// ...or this many bytes of images, whichever comes first.
    pub shard_target_bytes: u64,
    /// Rows per Parquet row group.
    pub row_group_rows: u32,
    /// The run fails when more than this share of the source is rejected.
    pub max_rejected_share: f64,
    /// Images fetched from the source at once.
    pub fetch_concurrency: u32,
    /// Shards encoded and uploaded at once.
    pub shard_concurrency: u32,
    /// Consumer group of the service.
    pub group: String,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            shard_target_rows: 2048,
            shard_target_bytes: 64 * 1024 * 1024,
            row_group_rows: 128,
            max_rejected_share: 0.05,
            fetch_concurrency: 16,
            shard_concurrency: 2,
            group: "chexvision-ingest".into(),
        }
    }
}

impl Validate for IngestSettings {
    fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, key: &str, why: &str| {
            if !ok {
                problems.push((key.to_owned(), why.to_owned()));
            }
        };
        check(
            self.shard_target_rows > 0,
            "shard_target_rows",
            "must be at least 1",
        );
        check(
            self.shard_target_bytes >= 1024,
            "shard_target_bytes",
            "must be at least 1024",
        );
        check(
            self.row_group_rows > 0,
            "row_group_rows",
            "must be at least 1",
        );
        check(
            (0.0..=1.0).contains(&self.max_rejected_share),
            "max_rejected_share",
            "must be between 0 and 1",
        );
        check(
            self.fetch_concurrency > 0,
            "fetch_concurrency",
            "must be at least 1",
        );
        check(
            self.shard_concurrency > 0,
            "shard_concurrency",
            "must be at least 1",
        );
        check(!self.group.is_empty(), "group", "must not be empty");
        problems
    }
}
