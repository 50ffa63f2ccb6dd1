//! A small dataset whose findings are visible (lit corners) and settings
//! that learn it in seconds, shared by the trainer's tests.
#![allow(dead_code)]

use bytes::Bytes;
use chexvision_dataset::{
    dataset_ready_key, ready_manifest_key, ready_shard_key, write_shard, ImageFormat, LabelSet,
    Manifest, ManifestShard, ManifestSource, ReadyManifest, ShardOptions, ShardRow, Split,
};
use chexvision_models::{DenseNetConfig, ModelConfig};
use chexvision_store::ObjectStore;
use chexvision_trainer::{RecipeConfig, TrainSettings};
use chexvision_vision::AugmentConfig;

pub const SIDE: u32 = 32;

/// Findings 0..3 light up corners of the image.
fn row(split: Split, index: u32, state: &mut u64) -> ShardRow {
    let mut next = || {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*state >> 33) as f32 / (1u64 << 31) as f32
    };
    let mut bits = 0u16;
    for k in 0..3 {
        if next() < 0.4 {
            bits |= 1 << k;
        }
    }
    let mut pixels = Vec::with_capacity((SIDE * SIDE) as usize);
    for y in 0..SIDE {
        for x in 0..SIDE {
            let corner = match (y < 12, x < 12, y >= 20, x >= 20) {
                (true, true, _, _) => Some(0),
                (true, _, _, true) => Some(1),
                (_, true, true, _) => Some(2),
                _ => None,
            };
            let lit = corner.is_some_and(|k| bits & (1 << k) != 0);
            let base = if lit { 200.0 } else { 60.0 };
            pixels.push((base + 40.0 * (next() - 0.5)) as u8);
        }
    }
    ShardRow {
        filename: format!("{}-{index:05}.png", split.name()),
        patient_id: format!("{index}"),
        follow_up: 0,
        labels: LabelSet::from_bits(bits),
        split,
        view_position: "PA".into(),
        age: None,
        sex: "M".into(),
        original_width: SIDE,
        original_height: SIDE,
        image_format: ImageFormat::Gray8,
        image: Bytes::from(pixels),
    }
}

/// A 32 px dataset `corners` (3 train shards, 1 validation, 48 rows each),
/// ready at 32 px: ready shards, ready manifest and marker.
pub async fn dataset(store: &dyn ObjectStore) {
    dataset_with(
        store,
        "corners",
        &[(Split::Train, 3), (Split::Validation, 1)],
        48,
    )
    .await;
}

/// `shards` ready shards of `rows` rows per split, as preprocess leaves them.
pub async fn dataset_with(store: &dyn ObjectStore, id: &str, shards: &[(Split, u32)], rows: u32) {
    let mut manifest = Manifest::new(
        id,
        true,
        ManifestSource {
            format: "synthetic".into(),
            uri: "test://corners".into(),
        },
    );
    let mut state = 7u64;
    let mut index = 0;
    for &(split, shards) in shards {
        for shard in 0..shards {
            let rows: Vec<ShardRow> = (0..rows)
                .map(|_| {
                    index += 1;
                    row(split, index, &mut state)
                })
                .collect();
            for r in &rows {
                manifest.count_row(split, r.labels);
            }
            let key = ready_shard_key(id, SIDE, split, shard);
            store
                .put(
                    &key,
                    Bytes::from(write_shard(&rows, &ShardOptions::default()).unwrap()),
                )
                .await
                .unwrap();
            manifest.shards.push(ManifestShard {
                key,
                uri: String::new(),
                split: split.name().into(),
                index: shard,
                sha256: String::new(),
                size_bytes: 0,
                rows: rows.len() as u64,
            });
        }
    }
    let ready = ReadyManifest {
        image_size_px: SIDE,
        raw_manifest_sha256: "0".repeat(64),
        manifest,
    };
    store
        .put(
            &ready_manifest_key(id, SIDE),
            Bytes::from(serde_json::to_vec(&ready).unwrap()),
        )
        .await
        .unwrap();
    store
        .put(&dataset_ready_key(id, SIDE), Bytes::from_static(b"{}"))
        .await
        .unwrap();
}

/// A small DenseNet that learns `corners` in a few epochs.
pub fn settings() -> TrainSettings {
    TrainSettings {
        model: ModelConfig::Densenet(DenseNetConfig {
            growth_rate: 4,
            block_config: vec![2, 2],
            num_init_features: 8,
            bn_size: 2,
            compression: 0.5,
        }),
        recipe: RecipeConfig {
            epochs: 4,
            batch_size: 16,
            accumulation_steps: 2,
            learning_rate: 5e-3,
            warmup_steps: 3,
            patience: 10,
            seed: 3,
            ..RecipeConfig::default()
        },
        image_size: SIDE,
        // Corners carry the labels: no flips or warps here.
        augment: AugmentConfig {
            hflip_p: 0.0,
            rotate_deg: 0.0,
            translate_frac: 0.0,
            shear_deg: 0.0,
            brightness: 0.1,
            contrast: 0.1,
            blur_p: 0.0,
            erase_p: 0.0,
            ..AugmentConfig::default()
        },
        loader_workers: 2,
        prefetch_shards: 1,
        shuffle_buffer: 64,
        pretrained: String::new(),
    }
}
