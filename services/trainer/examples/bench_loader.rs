//! Loader throughput for docs/benchmarks.md: images/s the `ShardLoader`
//! delivers (ready shards on a filesystem store → decode → augment →
//! ImageNet tensor → batches) when nothing consumes them, to set beside
//! what a training step consumes. One JSON line per worker count.
//!
//! `cargo run --release -p chexvision-trainer --example bench_loader -- SIZE IMAGES WORKERS...`

use std::{sync::Arc, time::Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use chexvision_dataset::{write_shard, ImageFormat, LabelSet, ShardOptions, ShardRow, Split};
use chexvision_store::{FsStore, ObjectStore};
use chexvision_trainer::{LoaderConfig, ShardLoader};
use chexvision_vision::AugmentConfig;

/// A smooth gradient with a bright disc: something for the warp and blur
/// to work on (the loader's cost does not depend on the content).
fn image(side: u32, index: usize) -> Vec<u8> {
    let c = side as f32 / 2.0;
    (0..side * side)
        .map(|i| {
            let (x, y) = ((i % side) as f32, (i / side) as f32);
            let disc = if (x - c).hypot(y - c) < side as f32 / 5.0 {
                80.0
            } else {
                0.0
            };
            ((x + y) * 100.0 / side as f32 + disc + (index % 50) as f32) as u8
        })
        .collect()
}

/// Training programs use mimalloc (see `chexvision_trainer::TrainingAllocator`).
#[global_allocator]
static GLOBAL: chexvision_trainer::TrainingAllocator = chexvision_trainer::TrainingAllocator;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [size, images, workers @ ..] = args.as_slice() else {
        bail!("usage: bench_loader SIZE IMAGES WORKERS...");
    };
    let size: u32 = size.parse().context("size")?;
    let images: usize = images.parse().context("images")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn ObjectStore> = runtime.block_on(FsStore::open(dir.path())).map(Arc::new)?;
    let per_shard = 256;
    let mut keys = Vec::new();
    for (shard, first) in (0..images).step_by(per_shard).enumerate() {
        let rows: Vec<ShardRow> = (first..(first + per_shard).min(images))
            .map(|i| ShardRow {
                filename: format!("{i:06}.png"),
                patient_id: i.to_string(),
                follow_up: 0,
                labels: LabelSet::from_bits((i % 7) as u16),
                split: Split::Train,
                view_position: "PA".into(),
                age: None,
                sex: "F".into(),
                original_width: size,
                original_height: size,
                image_format: ImageFormat::Gray8,
                image: Bytes::from(image(size, i)),
            })
            .collect();
        let key = format!("datasets/b/ready/{size}px/train/shard-{shard:05}.parquet");
        let bytes = write_shard(&rows, &ShardOptions::default())?;
        runtime.block_on(store.put(&key, Bytes::from(bytes)))?;
        keys.push(key);
    }
    for workers in workers {
        let workers: usize = workers.parse().context("workers")?;
        let loader = ShardLoader::new(
            store.clone(),
            runtime.handle().clone(),
            keys.clone(),
            LoaderConfig {
                batch_size: 24,
                image_size: size,
                prefetch_shards: 2,
                prefetch_batches: 4,
                shuffle_buffer: 2048,
                workers,
                augment: Some(AugmentConfig::default()),
                seed: 1,
            },
        )?;
        // One untimed epoch warms the page cache and the allocator.
        for batch in loader.epoch(0) {
            batch?;
        }
        let started = Instant::now();
        let mut delivered = 0;
        for batch in loader.epoch(1) {
            delivered += batch?.images.dims()[0];
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{{\"size\":{size},\"workers\":{workers},\"images\":{delivered},\"images_per_s\":{:.1}}}",
            delivered as f64 / seconds
        );
    }
    Ok(())
}
