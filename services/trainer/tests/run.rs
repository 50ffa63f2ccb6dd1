//! A whole run on a filesystem store: artefacts, a run interrupted
//! mid-epoch and resumed equals the uninterrupted one, completed and
//! conflicting runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chexvision_dataset::LABELS;
use chexvision_models::candle_core::Device;
use chexvision_models::Checkpoint;
use chexvision_store::{FsStore, ObjectStore};
use chexvision_trainer::{
    run_training, EpochRecord, RunError, RunHooks, RunState, RunStatus, TrainSettings,
};

mod common;
use common::{dataset, settings};

/// (epoch, best, last) of each checkpoint written.
type Written = (u32, bool, bool);

fn run(
    store: &Arc<dyn ObjectStore>,
    run_id: &str,
    settings: &TrainSettings,
    interrupt_at: Option<usize>,
) -> (Result<RunState, RunError>, Vec<Written>) {
    run_announcing(store, run_id, settings, interrupt_at, true)
}

/// `announce`: what the `written` hook answers (false: the bus is down).
fn run_announcing(
    store: &Arc<dyn ObjectStore>,
    run_id: &str,
    settings: &TrainSettings,
    interrupt_at: Option<usize>,
    announce: bool,
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
            written: &mut |w| {
                assert_eq!(w.sha256.len(), 64, "announced with its sha256");
                written.push((w.epoch, w.best, w.last));
                announce
            },
            interrupted: &|| {
                interrupt_at.is_some_and(|k| calls.fetch_add(1, Ordering::SeqCst) + 1 >= k)
            },
            loader_wait: None,
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

    // Interrupted during epoch 2 (after 2 full epochs of 9 training and 3
    // validation batches each: the hook is polled before every one).
    let (cut, _) = tokio::task::block_in_place(|| run(&store, "cut", &settings, Some(12 * 2 + 4)));
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
async fn a_dataset_not_prepared_at_the_size_is_named_with_the_command_that_prepares_it() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).await.unwrap());
    let (result, _) = tokio::task::block_in_place(|| run(&store, "r", &settings(), None));
    let err = result.unwrap_err();
    assert!(matches!(err, RunError::NotPrepared(_)), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("not prepared at 32 px"), "{err}");
    assert!(
        err.contains("datasets/corners/ready/32px/manifest.json"),
        "{err}"
    );
    assert!(
        err.contains("chexvision preprocess --dataset-id corners --size 32"),
        "{err}"
    );
    // Prepared at 32 px only: a 64 px run says so too.
    dataset(store.as_ref()).await;
    let mut at_64 = settings();
    at_64.image_size = 64;
    let (result, _) = tokio::task::block_in_place(|| run(&store, "r64", &at_64, None));
    let err = result.unwrap_err().to_string();
    assert!(err.contains("not prepared at 64 px"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_not_announced_are_offered_again_without_training_again() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).await.unwrap());
    dataset(store.as_ref()).await;
    let mut settings = settings();
    settings.recipe.epochs = 2;

    // The bus is down for the whole run: every checkpoint is offered after
    // each epoch, none is taken.
    let (down, offered) =
        tokio::task::block_in_place(|| run_announcing(&store, "r", &settings, None, false));
    let down = down.unwrap();
    assert_eq!(
        (down.status, down.announced_epochs),
        (RunStatus::Completed, 0)
    );
    assert!(down.needs_work(), "a restarted trainer must pick it up");
    assert_eq!(
        offered.iter().map(|w| w.0).collect::<Vec<_>>(),
        vec![0, 0],
        "epoch 0 offered again after epoch 1, and epoch 1 not before it"
    );
    let steps = down.step;

    // Back up: both are announced in order, the last flagged, nothing retrained.
    let (up, announced) = tokio::task::block_in_place(|| run(&store, "r", &settings, None));
    let up = up.unwrap();
    assert_eq!(
        announced,
        vec![(0, announced[0].1, false), (1, announced[1].1, true)]
    );
    assert_eq!((up.announced_epochs, up.step), (2, steps));
    assert!(!up.needs_work());
    assert_eq!(history(&store, "r").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_with_dropout_resumes_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).await.unwrap());
    dataset(store.as_ref()).await;
    let mut settings = settings();
    settings.recipe.epochs = 2;
    settings.model = chexvision_models::ModelConfig::SeResnet(chexvision_models::SeResNetConfig {
        blocks: vec![1, 1],
        widths: vec![8, 16],
        stem_width: 8,
        se_reduction: 4,
        dropout: 0.5,
    });
    let (whole, _) = tokio::task::block_in_place(|| run(&store, "whole", &settings, None));
    whole.unwrap();
    // Cut in epoch 1, after 2 of its micro-batches (epoch 0: 9 training and
    // 3 validation batches).
    let (cut, _) = tokio::task::block_in_place(|| run(&store, "cut", &settings, Some(12 + 3)));
    assert!(
        matches!(cut, Err(RunError::Interrupted { epoch: 1 })),
        "{cut:?}"
    );
    let (resumed, _) = tokio::task::block_in_place(|| run(&store, "cut", &settings, None));
    resumed.unwrap();
    let digest = |run: &'static str| {
        let store = store.clone();
        async move {
            Checkpoint::from_bytes(
                &store
                    .get(&format!("runs/{run}/checkpoints/epoch-001.safetensors"))
                    .await
                    .unwrap(),
                &Device::Cpu,
            )
            .unwrap()
            .meta
            .tensors_sha256
        }
    };
    assert_eq!(
        digest("whole").await,
        digest("cut").await,
        "dropout masks are seeded"
    );
}
