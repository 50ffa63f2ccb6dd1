//! Validation streams: its peak memory does not grow with the validation
//! split. Measured as the peak of live heap bytes (every allocation of every
//! thread, through a counting global allocator): the part of the resident
//! set the program controls, without the allocator's and the kernel's noise.
//! Before, every validation batch was collected first: about 13 GB per epoch
//! for NIH's validation split at 320 px.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use chexvision_dataset::{write_shard, ImageFormat, LabelSet, ShardOptions, ShardRow, Split};
use chexvision_models::candle_core::Device;
use chexvision_models::{ChestModel, DenseNetConfig, ModelConfig};
use chexvision_store::{FsStore, ObjectStore};
use chexvision_trainer::{validate, LoaderConfig, RecipeConfig, ShardLoader, Trainer};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = System.alloc(layout);
        if !pointer.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        System.dealloc(pointer, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = System.realloc(pointer, layout, new_size);
        if !moved.is_null() {
            if new_size >= layout.size() {
                let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        moved
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SIDE: u32 = 96;
const ROWS: u32 = 48;

fn shard(index: u32) -> Vec<u8> {
    let rows: Vec<ShardRow> = (0..ROWS)
        .map(|i| ShardRow {
            filename: format!("{index}-{i}.png"),
            patient_id: format!("{i}"),
            follow_up: 0,
            labels: LabelSet::from_bits((i % 8) as u16),
            split: Split::Validation,
            view_position: "PA".into(),
            age: None,
            sex: "F".into(),
            original_width: SIDE,
            original_height: SIDE,
            image_format: ImageFormat::Gray8,
            image: Bytes::from(
                (0..SIDE * SIDE)
                    .map(|p| ((p * 7 + i * 13 + index) % 251) as u8)
                    .collect::<Vec<u8>>(),
            ),
        })
        .collect();
    write_shard(&rows, &ShardOptions::default()).unwrap()
}

/// Peak live heap bytes during validation over `shards` shards.
fn peak_of_validation(
    store: &Arc<dyn ObjectStore>,
    runtime: &tokio::runtime::Runtime,
    trainer: &Trainer,
    shards: u32,
) -> (usize, usize) {
    let keys: Vec<String> = (0..shards)
        .map(|i| format!("val/shard-{i:05}.parquet"))
        .collect();
    let loader = ShardLoader::new(
        store.clone(),
        runtime.handle().clone(),
        keys,
        LoaderConfig {
            batch_size: 16,
            image_size: SIDE,
            prefetch_shards: 1,
            prefetch_batches: 2,
            shuffle_buffer: 64,
            workers: 2,
            augment: None,
            seed: 1,
        },
    )
    .unwrap();
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let validation = validate(trainer, &loader, &Device::Cpu, &|| false).unwrap();
    let peak = PEAK.load(Ordering::SeqCst);
    assert_eq!(validation.images, (shards * ROWS) as usize);
    (peak.saturating_sub(before), validation.images)
}

#[test]
fn validation_memory_does_not_grow_with_the_split() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(runtime.block_on(FsStore::open(dir.path())).unwrap());
    for i in 0..16 {
        runtime
            .block_on(store.put(&format!("val/shard-{i:05}.parquet"), Bytes::from(shard(i))))
            .unwrap();
    }
    let model = ModelConfig::Densenet(DenseNetConfig {
        growth_rate: 4,
        block_config: vec![2, 2],
        num_init_features: 8,
        bn_size: 2,
        compression: 0.5,
    });
    let (network, varmap) = ChestModel::init_seeded(&model, 14, &Device::Cpu, 1).unwrap();
    let trainer = Trainer::new(network, varmap, RecipeConfig::default(), &[1.0; 14], 10).unwrap();

    // Warm up thread pools and buffers once.
    peak_of_validation(&store, &runtime, &trainer, 1);
    let (small, small_images) = peak_of_validation(&store, &runtime, &trainer, 2);
    let (large, large_images) = peak_of_validation(&store, &runtime, &trainer, 16);
    // What holding every batch of the larger split would add: its tensors.
    let tensor_bytes = |images: usize| images * 3 * (SIDE * SIDE) as usize * 4;
    let held = tensor_bytes(large_images) - tensor_bytes(small_images);
    println!(
        "peak live heap: {small} bytes over {small_images} images, {large} over {large_images} \
         (holding the batches would add {held})"
    );
    assert!(
        large < small + held / 4,
        "validation memory grows with the split: {small} -> {large} bytes \
         ({small_images} -> {large_images} images)"
    );
}
