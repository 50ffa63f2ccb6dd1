//! The shard loader over a filesystem store: every row once per epoch,
//! seeded order, bounded channels, errors that name the shard.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use chexvision_dataset::{write_shard, ImageFormat, LabelSet, ShardOptions, ShardRow, Split};
use chexvision_store::{FsStore, ObjectStore};
use chexvision_trainer::{LoaderConfig, ShardLoader};
use chexvision_vision::{to_tensor_imagenet, AugmentConfig, GrayImage8};

const SIDE: u32 = 32;

fn row(index: u16) -> ShardRow {
    // The label bits identify the row (unique below 2^14).
    let pixels: Vec<u8> = (0..SIDE * SIDE)
        .map(|i| ((i as u16).wrapping_mul(7).wrapping_add(index * 13) % 251) as u8)
        .collect();
    ShardRow {
        filename: format!("{index:05}.png"),
        patient_id: format!("{index}"),
        follow_up: 0,
        labels: LabelSet::from_bits(index),
        split: Split::Train,
        view_position: "PA".into(),
        age: Some(40),
        sex: "F".into(),
        original_width: SIDE,
        original_height: SIDE,
        image_format: ImageFormat::Gray8,
        image: Bytes::from(pixels),
    }
}

fn ids(findings: &chexvision_models::candle_core::Tensor) -> Vec<u16> {
    findings
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .map(|v| {
            v.iter()
                .enumerate()
                .filter(|(_, &x)| x > 0.5)
                .map(|(i, _)| 1u16 << i)
                .sum()
        })
        .collect()
}

async fn store_with_shards(
    sizes: &[u16],
) -> (tempfile::TempDir, Arc<dyn ObjectStore>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).await.unwrap());
    let mut keys = Vec::new();
    let mut next = 1u16;
    for (i, &n) in sizes.iter().enumerate() {
        let rows: Vec<ShardRow> = (0..n).map(|k| row(next + k)).collect();
        next += n;
        let bytes = write_shard(&rows, &ShardOptions::default()).unwrap();
        let key = format!("datasets/t/ready/32px/train/shard-{i:05}.parquet");
        store.put(&key, Bytes::from(bytes)).await.unwrap();
        keys.push(key);
    }
    (dir, store, keys)
}

fn config(augment: bool) -> LoaderConfig {
    LoaderConfig {
        batch_size: 4,
        image_size: SIDE,
        prefetch_shards: 1,
        prefetch_batches: 1,
        shuffle_buffer: 8,
        workers: 2,
        augment: augment.then(AugmentConfig::default),
        seed: 9,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_once_per_epoch_in_a_seeded_order() {
    let (_dir, store, keys) = store_with_shards(&[10, 10, 7]).await;
    let handle = tokio::runtime::Handle::current();
    let loader = ShardLoader::new(store, handle, keys, config(true)).unwrap();
    let epoch_ids = |epoch| {
        let mut batches = loader.epoch(epoch);
        let mut order = Vec::new();
        for batch in &mut batches {
            let batch = batch.unwrap();
            assert!(batch.images.dims()[0] <= 4);
            assert_eq!(batch.images.dims()[1..], [3, SIDE as usize, SIDE as usize]);
            order.extend(ids(&batch.findings));
        }
        (order, batches.wait())
    };
    let (first, _) = tokio::task::block_in_place(|| epoch_ids(0));
    let (again, _) = tokio::task::block_in_place(|| epoch_ids(0));
    let (second, wait) = tokio::task::block_in_place(|| epoch_ids(1));
    let expected: BTreeSet<u16> = (1..=27).collect();
    assert_eq!(first.len(), 27);
    assert_eq!(first.iter().copied().collect::<BTreeSet<_>>(), expected);
    assert_eq!(second.iter().copied().collect::<BTreeSet<_>>(), expected);
    assert_eq!(first, again, "the same epoch must give the same order");
    assert_ne!(first, second, "another epoch must shuffle differently");
    // Shuffled across shards: the first batch is not just shard 0 in order.
    assert_ne!(first[..4], [1, 2, 3, 4]);
    assert!(wait.as_nanos() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_reads_in_order_without_augmenting() {
    let (_dir, store, keys) = store_with_shards(&[5, 3]).await;
    let handle = tokio::runtime::Handle::current();
    let histogram = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(
        "chexvision_trainer_loader_wait_seconds",
        "time the training step waited for a batch",
    ))
    .unwrap();
    let loader = ShardLoader::new(store, handle, keys, config(false))
        .unwrap()
        .with_wait_histogram(histogram.clone());
    let batches: Vec<_> =
        tokio::task::block_in_place(|| loader.epoch(0).map(Result::unwrap).collect());
    let order: Vec<u16> = batches.iter().flat_map(|b| ids(&b.findings)).collect();
    assert_eq!(order, (1..=8).collect::<Vec<_>>());
    // The first image is the stored pixels, only normalised.
    let image = GrayImage8::new(SIDE, SIDE, row(1).image.to_vec()).unwrap();
    let want = to_tensor_imagenet(&image);
    let got = batches[0]
        .images
        .get(0)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(got, want);
    // Abnormal = any finding.
    let abnormal = batches[0]
        .abnormal
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(abnormal, vec![1.0; 4]);
    // One observation per batch plus the end of the epoch.
    assert_eq!(histogram.get_sample_count(), batches.len() as u64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_shard_is_an_error_naming_it() {
    let (_dir, store, mut keys) = store_with_shards(&[4]).await;
    keys.push("datasets/t/ready/32px/train/shard-00099.parquet".into());
    let handle = tokio::runtime::Handle::current();
    let loader =
        ShardLoader::new(store.clone(), handle.clone(), keys.clone(), config(false)).unwrap();
    let results: Vec<_> = tokio::task::block_in_place(|| loader.epoch(0).collect());
    let err = results
        .iter()
        .find_map(|r| r.as_ref().err())
        .expect("an error")
        .to_string();
    assert!(err.contains("shard-00099.parquet"), "{err}");

    // A damaged shard names itself too.
    store
        .put("datasets/t/bad.parquet", Bytes::from_static(b"not parquet"))
        .await
        .unwrap();
    let loader = ShardLoader::new(
        store,
        handle,
        vec!["datasets/t/bad.parquet".into()],
        config(true),
    )
    .unwrap();
    let results: Vec<_> = tokio::task::block_in_place(|| loader.epoch(0).collect());
    let err = results[0].as_ref().expect_err("an error").to_string();
    assert!(err.contains("bad.parquet"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_epoch_early_stops_its_threads() {
    let (_dir, store, keys) = store_with_shards(&[20, 20, 20]).await;
    let handle = tokio::runtime::Handle::current();
    let loader = ShardLoader::new(store, handle, keys, config(true)).unwrap();
    tokio::task::block_in_place(|| {
        let mut batches = loader.epoch(0);
        batches.next().unwrap().unwrap();
        drop(batches); // joins the fetch and assemble threads
                       // The loader is still usable.
        assert_eq!(loader.epoch(1).count(), 15);
    });
}
