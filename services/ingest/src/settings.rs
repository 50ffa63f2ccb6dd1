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
    /// Bounds on what a request may set: a shard is built whole in memory
    /// (`shard_concurrency` at a time), so `shard_target_bytes` bounds
    /// memory; the synthetic generator's output bounds a request's time.
    pub max_shard_rows: u32,
    pub max_shard_bytes: u64,
    pub max_synthetic_rows: u32,
    pub max_synthetic_size_px: u32,
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
            max_shard_rows: 65_536,
            max_shard_bytes: 512 * 1024 * 1024,
            max_synthetic_rows: 120_000,
            max_synthetic_size_px: 1024,
            group: "chexvision-ingest".into(),
        }
    }
}

impl IngestSettings {
    /// The settings a request asks for: its shard size where it sets one,
    /// checked against this service's bounds.
    pub fn for_request(
        &self,
        shard_target_rows: u32,
        shard_target_bytes: u64,
    ) -> Result<Self, String> {
        let mut settings = self.clone();
        if shard_target_rows > 0 {
            if shard_target_rows > self.max_shard_rows {
                return Err(format!(
                    "shard_target_rows {shard_target_rows} is above this service's limit of {} (service.max_shard_rows)",
                    self.max_shard_rows
                ));
            }
            settings.shard_target_rows = shard_target_rows;
        }
        if shard_target_bytes > 0 {
            if !(1024..=self.max_shard_bytes).contains(&shard_target_bytes) {
                return Err(format!(
                    "shard_target_bytes {shard_target_bytes} is outside 1024..={} (service.max_shard_bytes)",
                    self.max_shard_bytes
                ));
            }
            settings.shard_target_bytes = shard_target_bytes;
        }
        Ok(settings)
    }

    /// Checks a synthetic request against this service's bounds.
    pub fn check_synthetic(&self, rows: u32, size_px: u32) -> Result<(), String> {
        if rows > self.max_synthetic_rows {
            return Err(format!(
                "synthetic_rows {rows} is above this service's limit of {} (service.max_synthetic_rows)",
                self.max_synthetic_rows
            ));
        }
        if size_px > self.max_synthetic_size_px {
            return Err(format!(
                "synthetic_size_px {size_px} is above this service's limit of {} (service.max_synthetic_size_px)",
                self.max_synthetic_size_px
            ));
        }
        Ok(())
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
        check(
            self.shard_target_rows <= self.max_shard_rows,
            "shard_target_rows",
            "must not exceed max_shard_rows",
        );
        check(
            self.shard_target_bytes <= self.max_shard_bytes,
            "shard_target_bytes",
            "must not exceed max_shard_bytes",
        );
        check(
            self.max_synthetic_rows > 0,
            "max_synthetic_rows",
            "must be at least 1",
        );
        check(
            self.max_synthetic_size_px >= 64,
            "max_synthetic_size_px",
            "must be at least 64 (the generator's smallest size)",
        );
        check(!self.group.is_empty(), "group", "must not be empty");
        problems
    }
}
