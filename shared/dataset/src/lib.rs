//! The dataset layer: the fixed label schema every component uses, the NIH
//! and published-Parquet sources, patient-wise splits, Parquet shards and the
//! dataset manifest.

mod hf;
mod image_header;
mod keys;
mod labels;
mod layout;
mod manifest;
mod nih;
mod shard;
mod split;

pub use hf::{patient_from_filename, read_hf_parquet, HfItem, HfReader, HfRow};
pub use image_header::{probe_image, ImageFormat, ImageHeaderError, ImageInfo, MAX_EDGE};
pub use keys::{
    dataset_ready_key, is_valid_id, manifest_key, raw_shard_key, ready_manifest_key,
    ready_shard_key,
};
pub use labels::{LabelError, LabelSet, LABELS, NO_FINDING};
pub use layout::{is_image_name, LayoutError, NihLayout, SYNTHETIC_MARKER};
pub use manifest::{
    Manifest, ManifestShard, ManifestSource, ReadyManifest, RejectedImage, MANIFEST_FORMAT_VERSION,
};
pub use nih::{read_nih_metadata, NihError, NihMetadata, NihRecord, RejectedRow};
pub use shard::{
    read_shard, write_shard, ShardError, ShardOptions, ShardReader, ShardRow, SHARD_FORMAT_VERSION,
};
pub use split::{split_for_patient, OfficialSplits, Split};
