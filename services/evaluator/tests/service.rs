//! The evaluator service's handler and worker on the in-process bus and a
//! filesystem store: a checkpoint event becomes one evaluation however
//! often it arrives; bad events are refused with their reason (the
//! consumer dead-letters them); an interrupted evaluation is finished by
//! the next worker; the model gauges come back after a restart.

use std::sync::Arc;
use std::time::Duration;

use chexvision_bus::{Bus, HandlerError, MemoryBus, TopicSpec};
use chexvision_config::Topics;
use chexvision_dataset::Split;
use chexvision_evaluator::service::{
    job_key, pending_jobs, restore_metrics, Accepted, EvaluationJob, EvaluatorHandler,
    EvaluatorWorker, JobOutcome, JobStatus,
};
use chexvision_evaluator::{CheckpointSelection, EvaluatorMetrics, EvaluatorServiceSettings};
use chexvision_events::{Body, CheckpointCreated, Envelope, ObjectRef};
use chexvision_models::candle_core::Device;
use chexvision_registry::Registry;
use chexvision_store::{get_json, FsStore, ObjectStore, OutageStore};
use chexvision_trainer::{run_training, EpochRecord, RunHooks};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[path = "../../trainer/tests/common/mod.rs"]
mod common;

async fn setup() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).await.unwrap());
    common::dataset_with(
        store.as_ref(),
        "corners",
        &[(Split::Train, 2), (Split::Validation, 1), (Split::Test, 1)],
        48,
    )
    .await;
    let mut settings = common::settings();
    settings.recipe.epochs = 2;
    tokio::task::block_in_place(|| {
        run_training(
            store.clone(),
            tokio::runtime::Handle::current(),
            "a",
            "corners",
            &settings,
            &Device::Cpu,
            RunHooks {
                progress: &mut |_| {},
                written: &mut |_| true,
                interrupted: &|| false,
                loader_wait: None,
            },
        )
        .unwrap();
    });
    (dir, store)
}

fn service_settings() -> EvaluatorServiceSettings {
    let mut s = EvaluatorServiceSettings::default();
    s.evaluation.batch_size = 16;
    s.lease_ttl_secs = 5;
    s.lease_settle_ms = 0;
    s.instance_id = "test".into();
    s
}

async fn last_epoch(store: &dyn ObjectStore) -> EpochRecord {
    let history: Vec<EpochRecord> = get_json(store, "runs/a/history.json")
        .await
        .unwrap()
        .unwrap();
    history.last().unwrap().clone()
}

fn event(
    store: &dyn ObjectStore,
    run_id: &str,
    record: &EpochRecord,
    sha256: &str,
) -> (CheckpointCreated, Envelope) {
    let body = CheckpointCreated {
        run_id: run_id.into(),
        dataset_id: "corners".into(),
        model_kind: 2,
        epoch: record.epoch,
        checkpoint: Some(ObjectRef {
            uri: store.uri(&format!(
                "runs/{run_id}/checkpoints/epoch-{:03}.safetensors",
                record.epoch
            )),
            sha256: sha256.into(),
            size_bytes: record.checkpoint_bytes,
        }),
        is_best: true,
        is_final: true,
        val_macro_auc: 0.9,
        val_binary_auc: 0.9,
        request_id: "r".into(),
    };
    let envelope = Envelope::new(body.clone(), "test");
    (body, envelope)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_evaluation_per_checkpoint_and_reasons_for_refusals() {
    let (_dir, store) = setup().await;
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let topics = Topics::default();
    bus.create_topics(&[
        TopicSpec::new(&topics.evaluations, 1),
        TopicSpec::new(&topics.models_promoted, 1),
    ])
    .await
    .unwrap();
    let prometheus = prometheus::Registry::new();
    let metrics = EvaluatorMetrics::register(&prometheus).unwrap();
    let (jobs, mut queue) = mpsc::unbounded_channel();
    let settings = service_settings();
    let handler = EvaluatorHandler {
        store: store.clone(),
        topics: topics.clone(),
        settings: settings.clone(),
        jobs,
        metrics: Some(metrics.clone()),
    };
    let last = last_epoch(store.as_ref()).await;
    let (body, envelope) = event(store.as_ref(), "a", &last, &last.checkpoint_sha256);

    // Accepted once; the same event again (or a duplicate) starts nothing.
    let Accepted::Queued(key) = handler.accept(&body, &envelope).await.unwrap() else {
        panic!("not queued")
    };
    assert_eq!(queue.try_recv().unwrap(), key);
    for _ in 0..2 {
        assert!(matches!(
            handler.accept(&body, &envelope).await.unwrap(),
            Accepted::Duplicate(_)
        ));
    }
    assert!(queue.try_recv().is_err());
    // Not the end of the run: skipped by the default selection.
    let mut not_final = body.clone();
    not_final.is_final = false;
    assert_eq!(
        handler.accept(&not_final, &envelope).await.unwrap(),
        Accepted::Skipped
    );

    // Refused with reasons: unknown run, missing and corrupt checkpoints.
    let malformed = |r: Result<Accepted, HandlerError>| match r {
        Err(HandlerError::Malformed(reason)) => reason,
        other => panic!("expected a malformed event, got {other:?}"),
    };
    let mut unknown = body.clone();
    unknown.run_id = "nobody".into();
    assert!(malformed(handler.accept(&unknown, &envelope).await).contains("unknown run"));
    let every = EvaluatorHandler {
        settings: EvaluatorServiceSettings {
            evaluate: CheckpointSelection::All,
            ..settings.clone()
        },
        store: store.clone(),
        topics: topics.clone(),
        jobs: mpsc::unbounded_channel().0,
        metrics: None,
    };
    let (wrong_sha, _) = event(store.as_ref(), "a", &last, &"ab".repeat(32));
    assert!(malformed(every.accept(&wrong_sha, &envelope).await).contains("corrupt"));
    let mut gone = last.clone();
    gone.epoch = 42;
    let (missing, _) = event(store.as_ref(), "a", &gone, &last.checkpoint_sha256);
    // Same sha, other key: the job of that sha exists, so first a fresh sha.
    let mut missing = missing;
    missing.checkpoint.as_mut().unwrap().sha256 = "cd".repeat(32);
    assert!(malformed(every.accept(&missing, &envelope).await).contains("does not exist"));

    // The worker evaluates the job, announces it, and marks it done.
    let mut evaluations = bus
        .subscribe("t", std::slice::from_ref(&topics.evaluations))
        .await
        .unwrap();
    let mut promotions = bus
        .subscribe("t", std::slice::from_ref(&topics.models_promoted))
        .await
        .unwrap();
    let worker = Arc::new(EvaluatorWorker {
        store: store.clone(),
        bus: bus.clone(),
        topics: topics.clone(),
        settings: settings.clone(),
        device: Device::Cpu,
        metrics: Some(metrics.clone()),
        registry: Registry::new(store.clone(), "evaluator"),
    });
    let outcome = worker
        .clone()
        .run_job(&key, &CancellationToken::new())
        .await;
    assert_eq!(outcome, JobOutcome::Done);
    let job: EvaluationJob = get_json(store.as_ref(), &key).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Done);
    let completed = tokio::time::timeout(Duration::from_secs(5), evaluations.next())
        .await
        .unwrap()
        .unwrap();
    let completed = Envelope::decode_checked(&completed.payload).unwrap();
    let Some(Body::EvaluationCompleted(done)) = &completed.body else {
        panic!("{completed:?}")
    };
    assert!(done.promoted, "the first model is promoted");
    assert_eq!(
        completed.meta.as_ref().unwrap().correlation_id,
        envelope.meta.as_ref().unwrap().correlation_id,
        "the evaluation follows the checkpoint's correlation id"
    );
    let promoted = tokio::time::timeout(Duration::from_secs(5), promotions.next())
        .await
        .unwrap()
        .unwrap();
    let promoted = Envelope::decode_checked(&promoted.payload).unwrap();
    assert!(matches!(promoted.body, Some(Body::ModelPromoted(_))));
    // Done jobs are not pending; running it again does nothing.
    assert!(pending_jobs(store.as_ref()).await.unwrap().is_empty());
    assert_eq!(
        worker
            .clone()
            .run_job(&key, &CancellationToken::new())
            .await,
        JobOutcome::Nothing
    );
    let macro_auc = metrics
        .model_macro_auc
        .get_metric_with_label_values(&[&job_version(&job), "test"])
        .unwrap()
        .get();
    assert!(macro_auc > 0.5, "{macro_auc}");

    // A restarted evaluator shows the same gauges before evaluating anything.
    let fresh = prometheus::Registry::new();
    let restored = EvaluatorMetrics::register(&fresh).unwrap();
    let n = restore_metrics(
        store.as_ref(),
        &Registry::new(store.clone(), "evaluator"),
        &restored,
        20,
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        restored
            .model_macro_auc
            .get_metric_with_label_values(&[&job_version(&job), "test"])
            .unwrap()
            .get(),
        macro_auc
    );
    assert_eq!(
        restored
            .production_model_info
            .get_metric_with_label_values(&[&job_version(&job), "a", "densenet121", "true"])
            .unwrap()
            .get(),
        1
    );
}

fn job_version(job: &EvaluationJob) -> String {
    chexvision_registry::version_of(&job.run_id, &job.checkpoint_sha256)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_evaluation_is_finished_by_the_next_worker() {
    let (_dir, store) = setup().await;
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let topics = Topics::default();
    bus.create_topics(&[
        TopicSpec::new(&topics.evaluations, 1),
        TopicSpec::new(&topics.models_promoted, 1),
    ])
    .await
    .unwrap();
    let settings = service_settings();
    let (jobs, _queue) = mpsc::unbounded_channel();
    let handler = EvaluatorHandler {
        store: store.clone(),
        topics: topics.clone(),
        settings: settings.clone(),
        jobs,
        metrics: None,
    };
    let last = last_epoch(store.as_ref()).await;
    let (body, envelope) = event(store.as_ref(), "a", &last, &last.checkpoint_sha256);
    let Accepted::Queued(key) = handler.accept(&body, &envelope).await.unwrap() else {
        panic!()
    };
    assert_eq!(key, job_key("a", &last.checkpoint_sha256));
    let worker = |id: &str| {
        Arc::new(EvaluatorWorker {
            store: store.clone(),
            bus: bus.clone(),
            topics: topics.clone(),
            settings: EvaluatorServiceSettings {
                instance_id: id.into(),
                ..settings.clone()
            },
            device: Device::Cpu,
            metrics: None,
            registry: Registry::new(store.clone(), "evaluator"),
        })
    };
    // Shutdown during the evaluation: the job stays pending.
    let stopped = CancellationToken::new();
    stopped.cancel();
    assert_eq!(
        worker("first").run_job(&key, &stopped).await,
        JobOutcome::Interrupted
    );
    assert_eq!(
        pending_jobs(store.as_ref()).await.unwrap(),
        vec![key.clone()]
    );
    // The next worker finds it on its start-up scan and finishes it once.
    let shutdown = CancellationToken::new();
    let (_tx, rx) = mpsc::unbounded_channel();
    let next = tokio::spawn(worker("second").run(rx, shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let job: EvaluationJob = get_json(store.as_ref(), &key).await.unwrap().unwrap();
        if job.status == JobStatus::Done {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    next.await.unwrap().unwrap();
    let history = Registry::new(store.clone(), "x").history(10).await.unwrap();
    assert_eq!(history.len(), 1, "evaluated and decided once");
}

/// A handler and a worker over `store` and an in-process bus, each job
/// given a single attempt, so one failed try decides its fate.
async fn single_attempt_service(
    store: Arc<dyn ObjectStore>,
) -> (EvaluatorHandler, Arc<EvaluatorWorker>) {
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let topics = Topics::default();
    bus.create_topics(&[
        TopicSpec::new(&topics.evaluations, 1),
        TopicSpec::new(&topics.models_promoted, 1),
    ])
    .await
    .unwrap();
    let settings = EvaluatorServiceSettings {
        max_attempts: 1,
        ..service_settings()
    };
    let handler = EvaluatorHandler {
        store: store.clone(),
        topics: topics.clone(),
        settings: settings.clone(),
        jobs: mpsc::unbounded_channel().0,
        metrics: None,
    };
    let worker = Arc::new(EvaluatorWorker {
        store: store.clone(),
        bus,
        topics,
        settings,
        device: Device::Cpu,
        metrics: None,
        registry: Registry::new(store, "evaluator"),
    });
    (handler, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_postpones_an_evaluation_instead_of_failing_it() {
    let (_dir, healthy) = setup().await;
    // The run's objects (what the evaluation reads) stop answering; the
    // rest of the store works.
    let outage = Arc::new(OutageStore::new(healthy.clone(), "runs/"));
    let store: Arc<dyn ObjectStore> = outage.clone();
    let (handler, worker) = single_attempt_service(store.clone()).await;
    let last = last_epoch(store.as_ref()).await;
    let (body, envelope) = event(store.as_ref(), "a", &last, &last.checkpoint_sha256);
    // While the run's objects do not answer, the event waits (Unavailable:
    // retried by the consumer, never dead-lettered).
    outage.set_down(true);
    assert!(matches!(
        handler.accept(&body, &envelope).await,
        Err(HandlerError::Unavailable(_))
    ));
    outage.set_down(false);
    let Accepted::Queued(key) = handler.accept(&body, &envelope).await.unwrap() else {
        panic!("not queued")
    };
    // The evaluation's reads fail for its one attempt: postponed, still
    // pending (a failed job would never be evaluated).
    outage.set_down(true);
    let outcome = worker
        .clone()
        .run_job(&key, &CancellationToken::new())
        .await;
    assert!(matches!(outcome, JobOutcome::Postponed(_)), "{outcome:?}");
    let job: EvaluationJob = get_json(healthy.as_ref(), &key).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Pending);
    // The store answers again: the next try evaluates it.
    outage.set_down(false);
    assert_eq!(
        worker.run_job(&key, &CancellationToken::new()).await,
        JobOutcome::Done
    );
}

/// A replica that died while it held the registry's writer claim keeps
/// the registry closed until the claim expires (a minute), longer than a
/// job's retries: the job must stay pending, not fail for good (seen in
/// the fault end-to-end test after a broker restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_held_by_a_dead_writer_postpones_an_evaluation() {
    let (_dir, store) = setup().await;
    let (handler, worker) = single_attempt_service(store.clone()).await;
    let last = last_epoch(store.as_ref()).await;
    let (body, envelope) = event(store.as_ref(), "a", &last, &last.checkpoint_sha256);
    let Accepted::Queued(key) = handler.accept(&body, &envelope).await.unwrap() else {
        panic!("not queued")
    };
    let dead = "evaluator-that-died";
    let claimed = chexvision_store::claim(
        store.as_ref(),
        chexvision_registry::WRITER_CLAIM_KEY,
        dead,
        Duration::from_secs(600),
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(claimed, chexvision_store::ClaimOutcome::Owned);
    let outcome = worker
        .clone()
        .run_job(&key, &CancellationToken::new())
        .await;
    assert!(matches!(outcome, JobOutcome::Postponed(_)), "{outcome:?}");
    let job: EvaluationJob = get_json(store.as_ref(), &key).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Pending);
    // The claim gone (expired), the next try evaluates and decides.
    chexvision_store::release(store.as_ref(), chexvision_registry::WRITER_CLAIM_KEY, dead)
        .await
        .unwrap();
    assert_eq!(
        worker.run_job(&key, &CancellationToken::new()).await,
        JobOutcome::Done
    );
}
