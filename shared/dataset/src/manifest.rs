//! `datasets/{id}/manifest.json`: what a dataset is made of. Written by
//! ingest after its last shard; read by preprocess and the trainer.
//!
//! It holds no timestamps, so the same ingest writes the same bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{LabelSet, Split, LABELS, NO_FINDING};

pub const MANIFEST_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub dataset_id: String,
    /// True when the images come from the synthetic generator: any figure
    /// computed on them says nothing about clinical performance.
    pub synthetic: bool,
    pub source: ManifestSource,
    pub label_order: Vec<String>,
    pub shards: Vec<ManifestShard>,
    pub rows_total: u64,
    pub rows_per_split: BTreeMap<String, u64>,
    /// Per split: images per label, plus "No Finding" and "abnormal".
    pub label_counts: BTreeMap<String, BTreeMap<String, u64>>,
    pub rejected_total: u64,
    pub rejected: Vec<RejectedImage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestSource {
    /// "nih", "hf-parquet" or "synthetic".
    pub format: String,
    pub uri: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestShard {
    pub key: String,
    pub uri: String,
    pub split: String,
    pub index: u32,
    pub sha256: String,
    pub size_bytes: u64,
    pub rows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RejectedImage {
    pub image: String,
    pub reason: String,
}

impl Manifest {
    pub fn new(dataset_id: &str, synthetic: bool, source: ManifestSource) -> Self {
        Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            dataset_id: dataset_id.to_owned(),
            synthetic,
            source,
            label_order: LABELS.iter().map(|l| (*l).to_owned()).collect(),
            shards: Vec::new(),
            rows_total: 0,
            rows_per_split: Split::ALL
                .iter()
                .map(|s| (s.name().to_owned(), 0))
                .collect(),
            label_counts: Split::ALL
                .iter()
                .map(|s| (s.name().to_owned(), BTreeMap::new()))
                .collect(),
            rejected_total: 0,
            rejected: Vec::new(),
        }
    }

    /// Counts one image that went into a shard.
    pub fn count_row(&mut self, split: Split, labels: LabelSet) {
        self.rows_total += 1;
        *self
            .rows_per_split
            .entry(split.name().to_owned())
            .or_default() += 1;
        let counts = self
            .label_counts
            .entry(split.name().to_owned())
            .or_default();
        for name in labels.names() {
            *counts.entry(name.to_owned()).or_default() += 1;
        }
        let summary = if labels.is_abnormal() {
            "abnormal"
        } else {
            NO_FINDING
        };
        *counts.entry(summary.to_owned()).or_default() += 1;
    }

    pub fn reject(&mut self, image: &str, reason: &str) {
        self.rejected_total += 1;
        self.rejected.push(RejectedImage {
            image: image.to_owned(),
            reason: reason.to_owned(),
        });
    }

    /// Share of the source's images that were set aside.
    pub fn rejected_share(&self) -> f64 {
        let seen = self.rows_total + self.rejected_total;
        if seen == 0 {
            0.0
        } else {
            self.rejected_total as f64 / seen as f64
        }
    }
}

/// `datasets/{id}/ready/{size}px/manifest.json`: the dataset as the trainer
/// sees it. Its shards are the ready shards (a raw shard whose every image
/// was rejected has none); its rows and label counts are those of the ready
/// rows; `rejected` lists what preprocess set aside (ingest's rejections
/// stay in the raw manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadyManifest {
    pub image_size_px: u32,
    /// sha256 of the raw manifest (`datasets/{id}/manifest.json`) the
    /// shards were prepared from.
    pub raw_manifest_sha256: String,
    #[serde(flatten)]
    pub manifest: Manifest,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rows_labels_and_rejections() {
        let source = ManifestSource {
            format: "nih".into(),
            uri: "file:///x".into(),
        };
        let mut manifest = Manifest::new("d", false, source);
        manifest.count_row(Split::Train, LabelSet::parse("Mass|Nodule").unwrap());
        manifest.count_row(Split::Train, LabelSet::parse("No Finding").unwrap());
        manifest.count_row(Split::Test, LabelSet::parse("Mass").unwrap());
        manifest.reject("x.png", "missing image");
        assert_eq!(manifest.rows_total, 3);
        assert_eq!(manifest.rows_per_split["train"], 2);
        assert_eq!(manifest.rows_per_split["validation"], 0);
        let train = &manifest.label_counts["train"];
        assert_eq!(
            (
                train["Mass"],
                train["Nodule"],
                train["abnormal"],
                train[NO_FINDING]
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(manifest.rejected_share(), 0.25);
        assert_eq!(manifest.label_order.len(), 14);
    }
}
