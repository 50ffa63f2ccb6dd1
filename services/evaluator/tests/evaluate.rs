//! Evaluations on a filesystem store, against runs trained here on a
//! dataset whose findings are visible (the trainer's test dataset): the
//! report and its outputs, the numbers recomputed from
//! `predictions.parquet`, TTA and ensembles, the registry's decisions, and
//! the errors a caller meets.

use std::sync::Arc;

use bytes::Bytes;
use chexvision_dataset::{Split, LABELS};
use chexvision_evaluator::predictions::read_predictions;
use chexvision_evaluator::promote::register_and_decide;
use chexvision_evaluator::{
    evaluate, CheckpointChoice, EvalError, EvalHooks, EvaluationOutcome, EvaluationRequest,
    EvaluationSettings, ModelChoice, Report,
};
use chexvision_metrics::roc_auc;
use chexvision_models::candle_core::Device;
use chexvision_registry::{Action, PromotionPolicy, Registry};
use chexvision_store::{FsStore, ObjectStore};
use chexvision_trainer::{run_training, RunHooks, TrainSettings};

#[path = "../../trainer/tests/common/mod.rs"]
mod common;

fn train(store: &Arc<dyn ObjectStore>, run_id: &str, settings: &TrainSettings) {
    run_training(
        store.clone(),
        tokio::runtime::Handle::current(),
        run_id,
        "corners",
        settings,
        &Device::Cpu,
        RunHooks {
            progress: &mut |_| {},
            written: &mut |_| true,
            interrupted: &|| false,
            loader_wait: None,
        },
    )
    .unwrap();
}

/// A store with the dataset (test split included), a strong run `a` and a
/// weak run `b`.
async fn setup() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).await.unwrap());
    common::dataset_with(
        store.as_ref(),
        "corners",
        &[(Split::Train, 3), (Split::Validation, 1), (Split::Test, 2)],
        48,
    )
    .await;
    let strong = common::settings();
    let mut weak = common::settings();
    weak.recipe.epochs = 1;
    weak.recipe.learning_rate = 1e-5;
    tokio::task::block_in_place(|| {
        train(&store, "a", &strong);
        train(&store, "b", &weak);
    });
    (dir, store)
}

fn settings() -> EvaluationSettings {
    EvaluationSettings {
        bootstrap_resamples: 1000,
        batch_size: 16,
        ..EvaluationSettings::default()
    }
}

fn request(run_id: &str) -> EvaluationRequest {
    EvaluationRequest {
        model: ModelChoice {
            run_id: run_id.into(),
            checkpoint: CheckpointChoice::Best,
            expected_sha256: None,
        },
        ensemble: Vec::new(),
        dataset_id: None,
        settings: settings(),
    }
}

fn run(
    store: &Arc<dyn ObjectStore>,
    request: &EvaluationRequest,
) -> Result<EvaluationOutcome, EvalError> {
    tokio::task::block_in_place(|| {
        evaluate(
            store.clone(),
            tokio::runtime::Handle::current(),
            request,
            &Device::Cpu,
            EvalHooks {
                progress: &mut |_| {},
                interrupted: &|| false,
            },
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_its_predictions_plots_and_decisions() {
    let (_dir, store) = setup().await;
    let a = run(&store, &request("a")).unwrap();
    let report = &a.report;
    assert_eq!(report.images, 96, "both test shards scored");
    assert_eq!(report.dataset.rows_per_split["test"], 96);
    assert_eq!(report.dataset.rows_per_split["validation"], 48);
    assert_eq!(report.split, "test");
    assert!(report.dataset.synthetic);
    assert_eq!(report.findings.len(), 14);
    // Only the three findings the dataset has are defined.
    let defined: Vec<&str> = report
        .findings
        .iter()
        .filter(|f| f.auc.is_some())
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(defined, LABELS[..3].to_vec());
    assert_eq!(report.undefined_findings.len(), 11);
    let macro_auc = report.macro_auc.unwrap();
    assert!(
        macro_auc > 0.8,
        "the strong run learned the corners: {macro_auc}"
    );
    let [lo, hi] = report.macro_auc_interval.unwrap();
    assert!(lo < macro_auc && macro_auc < hi, "{lo} {macro_auc} {hi}");
    assert!(report.binary.auc.is_some());
    assert!(report.findings[0].validation_threshold.is_some());
    assert_eq!(report.bootstrap.resamples, 1000);
    assert!(a.prefix.starts_with("evaluations/a/"), "{}", a.prefix);

    // Every number can be recomputed from predictions.parquet.
    let predictions = read_predictions(
        store
            .get(&format!("{}predictions.parquet", a.prefix))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(predictions, a.scores);
    for (c, finding) in report.findings.iter().enumerate() {
        assert_eq!(
            roc_auc(&predictions.probability(c), &predictions.label(c)),
            finding.auc,
            "{}",
            finding.name
        );
    }
    // The stored report is the returned one (and reads back); the figures
    // are PNGs.
    let stored = store.get(&a.report_key).await.unwrap();
    assert_eq!(stored.to_vec(), serde_json::to_vec_pretty(report).unwrap());
    let read: Report = serde_json::from_slice(&stored).unwrap();
    assert_eq!(read.findings.len(), 14);
    for plot in [
        "roc.png",
        "pr.png",
        "reliability.png",
        "confusion_binary.png",
        "history.png",
        "auc_intervals.png",
    ] {
        let bytes = store.get(&format!("{}{plot}", a.prefix)).await.unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{plot}");
        assert!(
            bytes.len() > 2000,
            "{plot} has content ({} bytes)",
            bytes.len()
        );
    }
    let md = String::from_utf8(
        store
            .get(&format!("{}report.md", a.prefix))
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(
        md.contains("Synthetic data") && md.contains("Macro AUC"),
        "{md}"
    );
    let card =
        String::from_utf8(store.get("runs/a/MODEL_CARD.md").await.unwrap().to_vec()).unwrap();
    assert!(card.contains("## Test evaluation"), "{card}");

    // TTA: another folder, other probabilities.
    let mut tta = request("a");
    tta.settings.tta = true;
    let with_tta = run(&store, &tta).unwrap();
    assert!(with_tta.prefix.ends_with("-tta/"), "{}", with_tta.prefix);
    assert!(with_tta.report.tta);
    assert_ne!(with_tta.scores.probabilities, a.scores.probabilities);

    // An ensemble averages the members' probabilities.
    let b = run(&store, &request("b")).unwrap();
    let mut both = request("a");
    both.ensemble.push(ModelChoice {
        run_id: "b".into(),
        checkpoint: CheckpointChoice::Best,
        expected_sha256: None,
    });
    let ensemble = run(&store, &both).unwrap();
    assert_eq!(ensemble.report.ensemble.len(), 2);
    assert!(ensemble.prefix.contains("-ensemble-"));
    for ((e, pa), pb) in ensemble
        .scores
        .probabilities
        .iter()
        .zip(&a.scores.probabilities)
        .zip(&b.scores.probabilities)
    {
        assert!((e - (pa + pb) / 2.0).abs() < 1e-6, "{e} vs {pa} and {pb}");
    }

    // The registry: the first model is promoted, the weaker one refused
    // with its numbers, the same model again changes nothing.
    let registry = Registry::new(store.clone(), "test");
    let policy = PromotionPolicy::default();
    let decide = |outcome: &EvaluationOutcome| {
        tokio::task::block_in_place(|| {
            register_and_decide(
                store.clone(),
                &tokio::runtime::Handle::current(),
                &registry,
                outcome,
                &policy,
                &settings(),
                &Device::Cpu,
                "test",
                &|| false,
            )
        })
        .unwrap()
    };
    let first = decide(&a);
    assert_eq!(first.entry.as_ref().unwrap().action, Action::Promoted);
    assert!(first.change.is_some());
    let refused = decide(&b);
    let entry = refused.entry.unwrap();
    assert_eq!(entry.action, Action::Refused, "{}", entry.reason);
    assert!(refused.change.is_none());
    let decision = entry.decision.unwrap();
    assert!(decision.macro_delta.unwrap() < 0.0, "{decision:?}");
    assert_eq!(decision.images, 96);
    assert_eq!(decision.findings.len(), 14);
    let again = decide(&a);
    assert!(again.entry.is_none(), "production already");
    let production = registry.production().await.unwrap().unwrap();
    assert_eq!(production.version, first.record.version);
    let record = registry
        .record(&first.record.version)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.metrics.macro_auc, report.macro_auc);
    assert!(record.thresholds.contains_key(LABELS[0]));
    let checkpoint = store.head(&record.checkpoint.key).await.unwrap();
    assert_eq!(record.checkpoint.size_bytes, checkpoint.size);

    // A challenger evaluated on another dataset: the champion is evaluated
    // on the challenger's images first, into its own `-on-` folder.
    common::dataset_with(
        store.as_ref(),
        "twin",
        &[(Split::Train, 1), (Split::Validation, 1), (Split::Test, 1)],
        40,
    )
    .await;
    let mut on_twin = request("b");
    on_twin.dataset_id = Some("twin".into());
    let b_twin = run(&store, &on_twin).unwrap();
    assert!(b_twin.prefix.ends_with("-on-twin/"), "{}", b_twin.prefix);
    let decided = decide(&b_twin);
    let decision = decided.entry.unwrap().decision.unwrap();
    assert_eq!(decision.images, 40, "compared on the twin's test images");
    let champion_on_twin = format!(
        "evaluations/a/{}-on-twin/predictions.parquet",
        &first.record.checkpoint.sha256[..12]
    );
    assert!(
        store.head(&champion_on_twin).await.is_ok(),
        "{champion_on_twin}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_problem() {
    let (_dir, store) = setup().await;
    let unknown = run(&store, &request("nobody"));
    assert!(
        matches!(unknown, Err(EvalError::UnknownRun(_))),
        "{unknown:?}"
    );

    // A checkpoint whose bytes are not the announced ones.
    let mut wrong = request("a");
    wrong.model.expected_sha256 = Some("0".repeat(64));
    let corrupt = run(&store, &wrong);
    assert!(matches!(corrupt, Err(EvalError::Corrupt(_))), "{corrupt:?}");

    // A checkpoint that is not there.
    let mut missing = request("a");
    missing.model.checkpoint =
        CheckpointChoice::Key("runs/a/checkpoints/epoch-099.safetensors".into());
    let err = run(&store, &missing).unwrap_err();
    assert!(matches!(err, EvalError::MissingCheckpoint(_)), "{err:?}");

    // Damaged bytes (the recorded digest catches them).
    let key = "runs/a/checkpoints/epoch-000.safetensors";
    let mut bytes = store.get(key).await.unwrap().to_vec();
    let n = bytes.len();
    bytes[n - 10] ^= 0xff;
    store
        .put("runs/a/damaged.safetensors", Bytes::from(bytes))
        .await
        .unwrap();
    let mut damaged = request("a");
    damaged.model.checkpoint = CheckpointChoice::Key("runs/a/damaged.safetensors".into());
    let err = run(&store, &damaged).unwrap_err();
    assert!(matches!(err, EvalError::Checkpoint(_)), "{err:?}");

    // A dataset not prepared at the model's size says how to prepare it.
    let mut elsewhere = request("a");
    elsewhere.dataset_id = Some("other".into());
    let err = run(&store, &elsewhere).unwrap_err().to_string();
    assert!(
        err.contains("chexvision preprocess --dataset-id other --size 32"),
        "{err}"
    );

    // Settings out of bounds.
    let mut few = request("a");
    few.settings.bootstrap_resamples = 10;
    let err = run(&store, &few).unwrap_err().to_string();
    assert!(err.contains("bootstrap_resamples"), "{err}");
    let mut crowd = request("a");
    crowd.ensemble = vec![request("b").model; 8];
    let err = run(&store, &crowd).unwrap_err().to_string();
    assert!(err.contains("at most 7"), "{err}");

    // Interrupted between batches.
    let err = tokio::task::block_in_place(|| {
        evaluate(
            store.clone(),
            tokio::runtime::Handle::current(),
            &request("a"),
            &Device::Cpu,
            EvalHooks {
                progress: &mut |_| {},
                interrupted: &|| true,
            },
        )
    })
    .unwrap_err();
    assert!(matches!(err, EvalError::Interrupted), "{err:?}");
}
