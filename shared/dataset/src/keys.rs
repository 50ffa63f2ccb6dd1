//! Where a dataset's objects live in the store (one place, so ingest,
//! preprocess and the trainer agree).

use crate::Split;

pub fn manifest_key(dataset_id: &str) -> String {
    format!("datasets/{dataset_id}/manifest.json")
}

pub fn raw_shard_key(dataset_id: &str, split: Split, index: u32) -> String {
    format!(
        "datasets/{dataset_id}/raw/{}/shard-{index:05}.parquet",
        split.name()
    )
}

pub fn ready_shard_key(dataset_id: &str, size_px: u32, split: Split, index: u32) -> String {
    format!(
        "datasets/{dataset_id}/ready/{size_px}px/{}/shard-{index:05}.parquet",
        split.name()
    )
}

/// Written by preprocess once every shard of the manifest is ready at
/// `size_px` (the trainer's "is this dataset ready" and "latest").
pub fn dataset_ready_key(dataset_id: &str, size_px: u32) -> String {
    format!("datasets/{dataset_id}/ready/{size_px}px/dataset-ready.json")
}

/// The ready manifest: the ready shards at `size_px` with their rows, sha256
/// and label counts. Written by preprocess when the last shard is ready;
/// the trainer plans a run from it alone.
pub fn ready_manifest_key(dataset_id: &str, size_px: u32) -> String {
    format!("datasets/{dataset_id}/ready/{size_px}px/manifest.json")
}

/// Dataset and run ids: one key segment of 1 to 128 characters from
/// `[A-Za-z0-9._-]`, not starting with a dot.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !id.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_the_architecture() {
        assert_eq!(manifest_key("d"), "datasets/d/manifest.json");
        assert_eq!(
            raw_shard_key("d", Split::Validation, 7),
            "datasets/d/raw/validation/shard-00007.parquet"
        );
        assert_eq!(
            ready_shard_key("d", 320, Split::Test, 12),
            "datasets/d/ready/320px/test/shard-00012.parquet"
        );
        assert_eq!(
            dataset_ready_key("d", 64),
            "datasets/d/ready/64px/dataset-ready.json"
        );
        assert_eq!(
            ready_manifest_key("d", 64),
            "datasets/d/ready/64px/manifest.json"
        );
    }

    #[test]
    fn ids_are_one_key_segment() {
        for good in ["nih", "synth-2000.v2", "a_b", &"x".repeat(128)] {
            assert!(is_valid_id(good), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "../x", "a b", "é", &"x".repeat(129)] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }
}
