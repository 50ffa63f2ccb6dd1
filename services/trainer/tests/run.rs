//! A whole run on a filesystem store: artefacts, a run interrupted
//! mid-epoch and resumed equals the uninterrupted one, completed and
//! conflicting runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use chexvision_dataset::{
    ready_shard_key, write_shard, ImageFormat, LabelSet, Manifest, ManifestShard, ManifestSource,
    ShardOptions, ShardRow, Split, LABELS,
};
use chexvision_models::candle_core::Device;
use chexvision_models::{Checkpoint, DenseNetConfig, ModelConfig};
use chexvision_store::{FsStore, ObjectStore};
use chexvision_trainer::{
    run_training, EpochRecord, RecipeConfig, RunError, RunHooks, RunState, RunStatus, TrainSettings,
};
use chexvision_vision::AugmentConfig;

const SIDE: u32 = 32;

/// (epoch, best, last) of each checkpoint written.
type Written = (u32, bool, bool);

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

async fn dataset(store: &dyn ObjectStore) {
    let mut manifest = Manifest::new(
        "corners",
        true,
        ManifestSource {
            format: "synthetic".into(),
            uri: "test://corners".into(),
        },
    );
    let mut state = 7u64;
    let mut index = 0;
    for (split, shards) in [(Split::Train, 3u32), (Split::Validation, 1)] {
        for shard in 0..shards {
            let rows: Vec<ShardRow> = (0..48)
                .map(|_| {
                    index += 1;
                    row(split, index, &mut state)
                })
                .collect();
            for r in &rows {
                manifest.count_row(split, r.labels);
            }
            let key = ready_shard_key("corners", SIDE, split, shard);
            store
                .put(
                    &key,
                    Bytes::from(write_shard(&rows, &ShardOptions::default()).unwrap()),
                )
                .await
                .unwrap();
            manifest.shards.push(ManifestShard {
                key: format!(
                    "datasets/corners/raw/{}/shard-{shard:05}.parquet",
                    split.name()
                ),
                uri: String::new(),
                split: split.name().into(),
                index: shard,
                sha256: String::new(),
                size_bytes: 0,
                rows: 48,
            });
        }
    }
    store
        .put(
            "datasets/corners/manifest.json",
            Bytes::from(serde_json::to_vec(&manifest).unwrap()),
        )
        .await
        .unwrap();
}

fn settings() -> TrainSettings {
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

fn run(
    store: &Arc<dyn ObjectStore>,
    run_id: &str,
    settings: &TrainSettings,
    interrupt_at: Option<usize>,
) -> (Result<RunState, RunError>, Vec<Written>) {
    let calls = AtomicUsize::new(0);
    let mut written = Vec::new();
    let result = run_training(
        store.clone(),
        tokio::runtime::Handle::current(),
        run_id,
        "corners",
        settings,
        &Device::Cpu,
        RunHooks {
            progress: &mut |_| {},
            written: &mut |w| written.push((w.epoch, w.best, w.last)),
            interrupted: &|| {
                interrupt_at.is_some_and(|k| calls.fetch_add(1, Ordering::SeqCst) + 1 >= k)
            },
        },
    );
    (result, written)
}

async fn history(store: &Arc<dyn ObjectStore>, run_id: &str) -> Vec<EpochRecord> {
    serde_json::from_slice(
        &store
            .get(&format!("runs/{run_id}/history.json"))
            .await
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_interrupted_mid_epoch_resumes_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).await.unwrap());
    dataset(store.as_ref()).await;
    let settings = settings();

    let (whole, written) = tokio::task::block_in_place(|| run(&store, "whole", &settings, None));
    let whole = whole.unwrap();
    assert_eq!((whole.status, whole.epochs_done), (RunStatus::Completed, 4));
    assert_eq!(written.len(), 4);
    assert!(
        written.last().unwrap().2,
        "the last checkpoint is flagged last"
    );
    let whole_history = history(&store, "whole").await;
    let epochs: Vec<u32> = whole_history.iter().map(|h| h.epoch).collect();
    assert_eq!(epochs, vec![0, 1, 2, 3]);
    let best_auc = whole.early_stopping.best.unwrap();
    println!(
        "macro AUC per epoch: {:?}",
        whole_history
            .iter()
            .map(|h| h.val_macro_auc)
            .collect::<Vec<_>>()
    );
    assert!(best_auc > 0.9, "best validation macro AUC {best_auc}");
    // Only the three findings present are defined; the rest are reported undefined.
    let last = whole_history.last().unwrap();
    assert_eq!(
        last.val_per_class_auc
            .values()
            .filter(|a| a.is_some())
            .count(),
        3
    );
    assert!(last.images_per_second > 0.0 && last.train_images == 144);

    for artefact in [
        "state.json",
        "config.yaml",
        "MODEL_CARD.md",
        "checkpoints/best.safetensors",
        "checkpoints/epoch-003.safetensors",
        "checkpoints/epoch-003.optimizer.safetensors",
    ] {
        store
            .head(&format!("runs/whole/{artefact}"))
            .await
            .unwrap_or_else(|e| panic!("{artefact}: {e}"));
    }
    let card = String::from_utf8(
        store
            .get("runs/whole/MODEL_CARD.md")
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(
        card.contains("SYNTHETIC") && card.contains("Not for use on patients"),
        "{card}"
    );
    let best = Checkpoint::from_bytes(
        &store
            .get("runs/whole/checkpoints/best.safetensors")
            .await
            .unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    best.expect(&settings.model, &LABELS).unwrap();
    assert_eq!(best.meta.extra["run_id"], "whole");

    // Interrupted during epoch 2 (after 2 full epochs of 9 batches each).
    let (cut, _) = tokio::task::block_in_place(|| run(&store, "cut", &settings, Some(9 * 2 + 4)));
    assert!(
        matches!(cut, Err(RunError::Interrupted { epoch: 2 })),
        "{cut:?}"
    );
    assert_eq!(history(&store, "cut").await.len(), 2);
    let (resumed, written) = tokio::task::block_in_place(|| run(&store, "cut", &settings, None));
    let resumed = resumed.unwrap();
    assert_eq!(
        written.iter().map(|w| w.0).collect::<Vec<_>>(),
        vec![2, 3],
        "only the missing epochs run"
    );
    assert_eq!(
        (resumed.status, resumed.step),
        (RunStatus::Completed, whole.step)
    );
    let cut_history = history(&store, "cut").await;
    assert_eq!(
        cut_history.iter().map(|h| h.epoch).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    for (a, b) in whole_history.iter().zip(&cut_history) {
        assert_eq!(a.val_macro_auc, b.val_macro_auc, "epoch {}", a.epoch);
        assert!(
            (a.train_loss - b.train_loss).abs() < 1e-9,
            "epoch {}",
            a.epoch
        );
    }
    let final_whole = Checkpoint::from_bytes(
        &store
            .get("runs/whole/checkpoints/epoch-003.safetensors")
            .await
            .unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    let final_cut = Checkpoint::from_bytes(
        &store
            .get("runs/cut/checkpoints/epoch-003.safetensors")
            .await
            .unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        final_whole.meta.tensors_sha256, final_cut.meta.tensors_sha256,
        "resumed model differs"
    );

    // A completed run is not trained again; other settings under its id are refused.
    let (again, written) = tokio::task::block_in_place(|| run(&store, "whole", &settings, None));
    assert_eq!(again.unwrap().status, RunStatus::Completed);
    assert!(written.is_empty());
    let mut other = settings.clone();
    other.recipe.learning_rate = 1e-3;
    let (conflict, _) = tokio::task::block_in_place(|| run(&store, "whole", &other, None));
    assert!(
        matches!(conflict, Err(RunError::Conflict(_))),
        "{conflict:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dataset_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).await.unwrap());
    let (result, _) = tokio::task::block_in_place(|| run(&store, "r", &settings(), None));
    let err = result.unwrap_err().to_string();
    assert!(err.contains("datasets/corners/manifest.json"), "{err}");
}
