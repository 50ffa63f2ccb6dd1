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
    }
}
