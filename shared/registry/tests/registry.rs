//! The registry on a local folder: records are immutable and idempotent,
//! the pointer moves only with a history entry, rollback goes back.

use std::collections::BTreeMap;
use std::sync::Arc;

use chexvision_registry::{
    first_model, record_key, version_of, Action, CheckpointRef, EvaluationRef, MetricsSummary,
    ModelRecord, PromotionPolicy, Registry, RegistryError, POINTER_KEY,
};
use chexvision_store::{FsStore, ObjectStore};

fn record(run_id: &str, sha: &str, macro_auc: f64) -> ModelRecord {
    ModelRecord {
        schema_version: 1,
        version: version_of(run_id, sha),
        run_id: run_id.into(),
        checkpoint: CheckpointRef {
            uri: format!("file:///runs/{run_id}/checkpoints/best.safetensors"),
            key: format!("runs/{run_id}/checkpoints/best.safetensors"),
            sha256: sha.into(),
            size_bytes: 10,
        },
        model_kind: "se_resnet".into(),
        image_size_px: 64,
        dataset_id: "d".into(),
        synthetic: true,
        evaluation: EvaluationRef {
            report_key: "evaluations/x/report.json".into(),
            predictions_key: "evaluations/x/predictions.parquet".into(),
            split: "test".into(),
            images: 100,
            dataset_manifest_sha256: "m".into(),
        },
        metrics: MetricsSummary {
            macro_auc: Some(macro_auc),
            macro_auc_interval: None,
            per_class_auc: BTreeMap::new(),
            binary_auc: None,
            ece: None,
        },
        thresholds: BTreeMap::new(),
        threshold_rule: "max_f1".into(),
        created_at_unix_ms: 1,
    }
}

async fn registry(dir: &tempfile::TempDir) -> Registry {
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).await.unwrap());
    Registry::new(store, "test")
}

#[tokio::test]
async fn records_are_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(&dir).await;
    let a = record("run-a", "aaaaaaaaaaaaaaaa", 0.8);
    assert_eq!(a.version, "run-a.aaaaaaaaaaaa");
    registry.register(&a).await.unwrap();
    // The same checkpoint again (a redelivered event): the stored record.
    let mut again = a.clone();
    again.created_at_unix_ms = 99;
    assert_eq!(registry.register(&again).await.unwrap(), a);
    // Another checkpoint under the same version: refused.
    let mut other = a.clone();
    other.checkpoint.sha256 = "aaaaaaaaaaaabbbb".into();
    assert!(matches!(
        registry.register(&other).await,
        Err(RegistryError::VersionConflict { .. })
    ));
    assert_eq!(registry.list().await.unwrap(), vec![a.clone()]);
    assert!(registry.record("../etc").await.is_err());
}

#[tokio::test]
async fn promotion_refusal_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(&dir).await;
    let policy = PromotionPolicy::default();
    let a = registry
        .register(&record("run-a", "a1", 0.8))
        .await
        .unwrap();
    let b = registry
        .register(&record("run-b", "b1", 0.7))
        .await
        .unwrap();
    let c = registry
        .register(&record("run-c", "c1", 0.9))
        .await
        .unwrap();
    assert!(registry.production().await.unwrap().is_none());

    // Unknown versions move nothing.
    assert!(matches!(
        registry.promote("nope", "why", "cli:me").await,
        Err(RegistryError::UnknownVersion(_))
    ));

    let (entry, change) = registry
        .apply_decision(&a.version, first_model(Some(0.8), &policy), "evaluator")
        .await
        .unwrap();
    assert_eq!(entry.action, Action::Promoted);
    let change = change.expect("pointer moved");
    assert_eq!(change.previous_version, None);
    assert_eq!(
        registry.production().await.unwrap().unwrap().version,
        a.version
    );

    // A refusal is recorded with its numbers and leaves the pointer.
    let mut refusal = first_model(Some(0.7), &policy);
    refusal.promote = false;
    refusal.reason = "macro AUC gain -0.1000 is below the margin 0.0050".into();
    let (entry, change) = registry
        .apply_decision(&b.version, refusal, "evaluator")
        .await
        .unwrap();
    assert!(change.is_none());
    assert_eq!(entry.action, Action::Refused);
    assert_eq!(entry.previous_version.as_deref(), Some(a.version.as_str()));
    assert_eq!(
        registry.production().await.unwrap().unwrap().version,
        a.version
    );

    // A manual promotion needs a reason.
    assert!(matches!(
        registry.promote(&c.version, "  ", "cli:me").await,
        Err(RegistryError::Invalid(_))
    ));
    let change = registry
        .promote(&c.version, "hotfix", "cli:me")
        .await
        .unwrap();
    assert_eq!(change.previous_version.as_deref(), Some(a.version.as_str()));
    assert_eq!(change.entry.action, Action::ManualPromotion);

    // Rollback without a target goes back to what production had before.
    let back = registry
        .rollback(None, "c misbehaves", "cli:me")
        .await
        .unwrap();
    assert_eq!(back.pointer.version, a.version);
    assert_eq!(back.previous_version.as_deref(), Some(c.version.as_str()));
    // To an explicit version; and not to the current one.
    let to_b = registry
        .rollback(Some(&b.version), "try b", "cli:me")
        .await
        .unwrap();
    assert_eq!(to_b.pointer.version, b.version);
    assert!(matches!(
        registry.rollback(Some(&b.version), "again", "cli:me").await,
        Err(RegistryError::NoRollbackTarget(_))
    ));

    let history = registry.history(100).await.unwrap();
    let actions: Vec<Action> = history.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        vec![
            Action::Promoted,
            Action::Refused,
            Action::ManualPromotion,
            Action::RolledBack,
            Action::RolledBack
        ]
    );
    assert_eq!(registry.history(2).await.unwrap().len(), 2);
    // The pointer names its history entry, and the record exists.
    let pointer = registry.production().await.unwrap().unwrap();
    let store = registry.store();
    assert!(store.head(&pointer.history_entry).await.is_ok());
    assert!(store.head(&record_key(&pointer.version)).await.is_ok());
    assert!(store.head(POINTER_KEY).await.is_ok());
    // No writer claim is left behind.
    assert!(store
        .head(chexvision_registry::WRITER_CLAIM_KEY)
        .await
        .is_err());
}

/// A service instance restarted after dying with the writer claim takes
/// it back at once; any other writer still waits for it to expire.
#[tokio::test]
async fn a_restarted_instance_takes_its_writer_claim_back() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).await.unwrap());
    // The claim a process held when it died (it never released it).
    let claimed = chexvision_store::claim(
        store.as_ref(),
        chexvision_registry::WRITER_CLAIM_KEY,
        "evaluator-pod-0",
        std::time::Duration::from_secs(600),
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(claimed, chexvision_store::ClaimOutcome::Owned);
    let a = record("run-a", "aaaaaaaaaaaaaaaa", 0.8);
    let restarted = Registry::for_instance(store.clone(), "evaluator", "pod-0");
    let other = Registry::for_instance(store, "evaluator", "pod-1");
    restarted.register(&a).await.unwrap();
    // Another instance waits for the claim (about 10 s), then gives up.
    assert!(matches!(
        other.promote(&a.version, "first", "test").await,
        Err(RegistryError::Busy { .. })
    ));
    restarted
        .promote(&a.version, "first", "test")
        .await
        .unwrap();
    assert_eq!(
        restarted.production().await.unwrap().unwrap().version,
        a.version
    );
    // The claim is released after each change: the other instance writes.
    let b = record("run-b", "bbbbbbbbbbbbbbbb", 0.9);
    other.register(&b).await.unwrap();
    other.promote(&b.version, "better", "test").await.unwrap();
}
