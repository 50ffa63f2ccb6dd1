//! A run plans from what preprocess made ready, not from what ingest wrote:
//! a raw shard whose every image is undecodable has no ready shard, and the
//! run still trains to completion, on the right number of images, with
//! class weights from the ready rows.

use std::sync::Arc;

use bytes::Bytes;
use chexvision_bus::{Bus, MemoryBus, TopicSpec};
use chexvision_config::Topics;
use chexvision_dataset::{
    manifest_key, raw_shard_key, ready_manifest_key, write_shard, ImageFormat, LabelSet, Manifest,
    ManifestShard, ManifestSource, ReadyManifest, ShardOptions, ShardRow, Split,
};
use chexvision_models::candle_core::Device;
use chexvision_preprocess::{Preprocess, PreprocessSettings};
use chexvision_store::{FsStore, ObjectStore};
use chexvision_trainer::{run_training, RunHooks, RunStatus};

mod common;

const SIDE: u32 = 32;

fn png(pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, SIDE, SIDE);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(pixels).unwrap();
    writer.finish().unwrap();
    out
}

/// A raw row: lit corners for findings 0..3 as a PNG, or bytes no decoder
/// reads.
fn raw_row(split: Split, index: u32, bits: u16, readable: bool) -> ShardRow {
    let pixels: Vec<u8> = (0..SIDE * SIDE)
        .map(|p| {
            let (y, x) = (p / SIDE, p % SIDE);
            let corner = match (y < 12, x < 12, y >= 20, x >= 20) {
                (true, true, _, _) => Some(0),
                (true, _, _, true) => Some(1),
                (_, true, true, _) => Some(2),
                _ => None,
            };
            if corner.is_some_and(|k| bits & (1 << k) != 0) {
                200
            } else {
                60
            }
        })
        .collect();
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
        image_format: ImageFormat::Png,
        image: Bytes::from(if readable {
            png(&pixels)
        } else {
            b"\x89PNG\r\n\x1a\n but nothing after the signature".to_vec()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_with_an_all_undecodable_shard_trains_to_completion() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).await.unwrap());
    let mut manifest = Manifest::new(
        "undecodable",
        true,
        ManifestSource {
            format: "synthetic".into(),
            uri: "test://undecodable".into(),
        },
    );
    // Train shards 0 and 2 are fine; train shard 1 is all undecodable.
    let mut expected_train_positives = [0u64; 3];
    let mut index = 0;
    for (split, shard, readable) in [
        (Split::Train, 0, true),
        (Split::Train, 1, false),
        (Split::Train, 2, true),
        (Split::Validation, 0, true),
    ] {
        let rows: Vec<ShardRow> = (0..48)
            .map(|i| {
                index += 1;
                let bits = ((i * 5 + shard * 3) % 8) as u16;
                if readable && split == Split::Train {
                    for (k, count) in expected_train_positives.iter_mut().enumerate() {
                        *count += u64::from(bits >> k & 1);
                    }
                }
                raw_row(split, index, bits, readable)
            })
            .collect();
        for row in &rows {
            manifest.count_row(split, row.labels);
        }
        let receipt = store
            .put(
                &raw_shard_key("undecodable", split, shard),
                Bytes::from(write_shard(&rows, &ShardOptions::default()).unwrap()),
            )
            .await
            .unwrap();
        manifest.shards.push(ManifestShard {
            key: receipt.key,
            uri: receipt.uri,
            split: split.name().into(),
            index: shard,
            sha256: receipt.sha256,
            size_bytes: receipt.size,
            rows: 48,
        });
    }
    store
        .put(
            &manifest_key("undecodable"),
            Bytes::from(serde_json::to_vec(&manifest).unwrap()),
        )
        .await
        .unwrap();

    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let topics = Topics::default();
    bus.create_topics(&[
        TopicSpec::new(&topics.shards_ready, 1),
        TopicSpec::new(&topics.datasets, 1),
        TopicSpec::new(&topics.shards_raw, 1),
    ])
    .await
    .unwrap();
    let preprocess = Preprocess {
        store: store.clone(),
        bus,
        topics,
        settings: PreprocessSettings {
            size_px: SIDE,
            ..PreprocessSettings::default()
        },
    };
    let (_, announced) = preprocess
        .run_dataset("undecodable", &|_, _| {})
        .await
        .unwrap();
    let announced = announced.expect("the dataset is announced ready");
    assert_eq!(announced.rows_per_split["train"], 96);
    assert_eq!(
        announced.shard_count, 3,
        "no ready shard for the undecodable one"
    );
    assert!(announced.ready_manifest.is_some());

    let ready: ReadyManifest = serde_json::from_slice(
        &store
            .get(&ready_manifest_key("undecodable", SIDE))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ready.manifest.rows_per_split["train"], 96);
    assert_eq!(ready.manifest.rows_per_split["validation"], 48);
    assert_eq!(ready.manifest.rejected_total, 48);
    let counts = &ready.manifest.label_counts["train"];
    for (k, label) in chexvision_dataset::LABELS.iter().take(3).enumerate() {
        assert_eq!(
            counts.get(*label).copied().unwrap_or(0),
            expected_train_positives[k],
            "{label}: counts of the ready rows"
        );
    }

    let mut settings = common::settings();
    settings.recipe.epochs = 2;
    let state = tokio::task::block_in_place(|| {
        run_training(
            store.clone(),
            tokio::runtime::Handle::current(),
            "r",
            "undecodable",
            &settings,
            &Device::Cpu,
            RunHooks {
                progress: &mut |_| {},
                written: &mut |_| true,
                interrupted: &|| false,
                loader_wait: None,
            },
        )
        .map_err(|e| e.to_string())
    })
    .expect("the run completes");
    assert_eq!((state.status, state.epochs_done), (RunStatus::Completed, 2));
    let history: Vec<chexvision_trainer::EpochRecord> =
        serde_json::from_slice(&store.get("runs/r/history.json").await.unwrap()).unwrap();
    assert!(history.iter().all(|e| e.train_images == 96), "{history:?}");
    // 96 images in batches of 16, accumulated by 2: 3 steps per epoch.
    assert_eq!(state.total_steps, 6);
}
