//! The preprocess service's own settings (`service:` in its YAML config).

use chexvision_config::Validate;
use serde::{Deserialize, Serialize};

/// How ready images are stored in a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadyFormat {
    /// Raw 8-bit pixels, compressed by Parquet (zstd).
    Raw,
    /// PNG bytes (fast compression).
    Png,
}

impl ReadyFormat {
    pub fn name(self) -> &'static str {
        match self {
            ReadyFormat::Raw => "raw",
            ReadyFormat::Png => "png",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessSettings {
    /// Edge of the square ready images, in pixels.
    pub size_px: u32,
    /// CLAHE clip limit (OpenCV's clipLimit).
    pub clahe_clip_limit: f32,
    /// CLAHE tiles per side (OpenCV's tileGridSize).
    pub clahe_tiles: u32,
    pub ready_format: ReadyFormat,
    /// Images larger than this many pixels are rejected before decoding.
    pub max_image_pixels: u64,
    /// Encoded images larger than this are rejected.
    pub max_image_bytes: u64,
    pub row_group_rows: u32,
    /// A raw shard larger than this (bytes) is refused before it is read:
    /// a whole shard is held in memory while it is prepared.
    pub max_shard_bytes: u64,
    /// A raw shard with more rows than this is refused.
    pub max_shard_rows: u32,
    /// Consumer group of the service.
    pub group: String,
}

impl Default for PreprocessSettings {
    fn default() -> Self {
        PreprocessSettings {
            size_px: 320,
            clahe_clip_limit: 2.0,
            clahe_tiles: 8,
            ready_format: ReadyFormat::Raw,
            max_image_pixels: 50_000_000,
            max_image_bytes: 64 * 1024 * 1024,
            row_group_rows: 64,
            max_shard_bytes: 512 * 1024 * 1024,
            max_shard_rows: 65_536,
            group: "chexvision-preprocess".into(),
        }
    }
}

impl Validate for PreprocessSettings {
    fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, key: &str, why: &str| {
            if !ok {
                problems.push((key.to_owned(), why.to_owned()));
            }
        };
        check(
            (16..=2048).contains(&self.size_px),
            "size_px",
            "must be between 16 and 2048",
        );
        check(
            self.clahe_clip_limit.is_finite() && self.clahe_clip_limit >= 0.0,
            "clahe_clip_limit",
            "must be a number >= 0",
        );
        check(
            (1..=64).contains(&self.clahe_tiles),
            "clahe_tiles",
            "must be between 1 and 64",
        );
        check(
            self.max_image_pixels > 0,
            "max_image_pixels",
            "must be at least 1",
        );
        check(
            self.max_image_bytes > 0,
            "max_image_bytes",
            "must be at least 1",
        );
        check(
            self.row_group_rows > 0,
            "row_group_rows",
            "must be at least 1",
        );
        check(
            self.max_shard_bytes >= 1024,
            "max_shard_bytes",
            "must be at least 1024",
        );
        check(
            self.max_shard_rows > 0,
            "max_shard_rows",
            "must be at least 1",
        );
        check(!self.group.is_empty(), "group", "must not be empty");
        problems
    }
}
