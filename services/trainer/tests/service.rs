//! The trainer service in process (memory bus, filesystem store): requests
//! become durable runs trained once, duplicates start nothing, bad requests
//! go to the dead-letter topic with their reason, checkpoints are
//! announced, dataset completions trigger runs, a stopped worker resumes.

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use chexvision_bus::{
    drain, publish_event, Bus, Consumer, ConsumerOptions, MemoryBus, OutboundRecord, TopicSpec,
};
use chexvision_config::{KafkaSettings, Topics};
use chexvision_dataset::dataset_ready_key;
use chexvision_events::{Body, DatasetReady, Envelope, ModelKind, ObjectRef, TrainingRequested};
use chexvision_models::candle_core::Device;
use chexvision_store::{FsStore, ObjectStore, OutageStore};
use chexvision_trainer::{
    read_run_state,
    service::{
        load_run_settings, pending_runs, Accepted, JobOutcome, RequestError, TrainerHandler,
        TrainerWorker,
    },
    EpochRecord, RunStatus, TrainerMetrics, TrainerServiceSettings,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod common;
use common::{dataset, settings, SIDE};

struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<dyn ObjectStore>,
    bus: Arc<dyn Bus>,
    topics: Topics,
    settings: TrainerServiceSettings,
}

/// A store holding the `corners` dataset and a configs folder with
/// `corners.yaml` (the common settings, 2 epochs) and `other.yaml`.
async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(FsStore::open(dir.path().join("store")).await.unwrap());
    dataset(store.as_ref()).await;
    let configs = dir.path().join("configs");
    std::fs::create_dir_all(&configs).unwrap();
    let mut run_settings = settings();
    run_settings.recipe.epochs = 2;
    let yaml = serde_yaml::to_string(&run_settings).unwrap();
    std::fs::write(
        configs.join("corners.yaml"),
        format!("service:\n{}", indent(&yaml)),
    )
    .unwrap();
    std::fs::write(
        configs.join("other.yaml"),
        "inherits: corners.yaml\nservice:\n  image_size: 64\n",
    )
    .unwrap();
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let topics = Topics::default();
    let specs: Vec<TopicSpec> = [
        &topics.training_requests,
        &topics.datasets,
        &topics.checkpoints,
        &topics.dead_letter,
    ]
    .iter()
    .map(|t| TopicSpec::new(*t, 1))
    .collect();
    bus.create_topics(&specs).await.unwrap();
    Harness {
        _dir: dir,
        store,
        bus,
        topics,
        settings: TrainerServiceSettings {
            configs_dir: configs.display().to_string(),
            default_config: "corners".into(),
            densenet_config: "corners".into(),
            dataset_ready_config: "corners".into(),
            retry_backoff_secs: 0,
            max_attempts: 2,
            ..TrainerServiceSettings::default()
        },
    }
}

fn indent(yaml: &str) -> String {
    yaml.lines().map(|l| format!("  {l}\n")).collect()
}

fn request(id: &str, dataset: &str, config: &str) -> TrainingRequested {
    TrainingRequested {
        request_id: id.into(),
        dataset_id: dataset.into(),
        model_kind: ModelKind::Unspecified as i32,
        config: config.into(),
        overrides: HashMap::new(),
        reason: "test".into(),
        requested_by: "tests".into(),
    }
}

impl Harness {
    fn handler(
        &self,
        metrics: Option<TrainerMetrics>,
    ) -> (TrainerHandler, mpsc::UnboundedReceiver<String>) {
        let (jobs, queue) = mpsc::unbounded_channel();
        (
            TrainerHandler {
                store: self.store.clone(),
                topics: self.topics.clone(),
                settings: self.settings.clone(),
                jobs,
                metrics,
            },
            queue,
        )
    }

    fn worker(&self, metrics: Option<TrainerMetrics>) -> Arc<TrainerWorker> {
        Arc::new(TrainerWorker {
            store: self.store.clone(),
            bus: self.bus.clone(),
            topics: self.topics.clone(),
            settings: self.settings.clone(),
            device: Device::Cpu,
            metrics,
        })
    }

    async fn events(&self, topic: &str, group: &str, idle: Duration) -> Vec<Envelope> {
        let mut subscription = self
            .bus
            .subscribe(group, &[topic.to_owned()])
            .await
            .unwrap();
        drain(subscription.as_mut(), usize::MAX, idle)
            .await
            .into_iter()
            .map(|d| Envelope::decode_checked(&d.payload).unwrap())
            .collect()
    }

    async fn send(&self, body: impl Into<Body>) -> Envelope {
        let envelope = Envelope::new(body, "tests");
        publish_event(
            self.bus.as_ref(),
            &self.topics.training_requests,
            "k",
            &envelope,
        )
        .await
        .unwrap();
        envelope
    }
}

fn metric(registry: &prometheus::Registry, name: &str, label: Option<&str>) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| label.is_none_or(|l| m.get_label().iter().any(|p| p.value() == l)))
        // The kind not set reads 0.
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_become_runs_trained_once_and_bad_ones_are_dead_lettered() {
    let h = harness().await;
    let registry = prometheus::Registry::new();
    let metrics = TrainerMetrics::register(&registry).unwrap();
    let (handler, queue) = h.handler(Some(metrics.clone()));
    let kafka = KafkaSettings {
        retry_backoff_initial_ms: 10,
        retry_backoff_max_ms: 20,
        ..KafkaSettings::default()
    };
    let consumer = Consumer::new(
        h.bus.clone(),
        ConsumerOptions::new("trainer", &[&h.topics.training_requests], &kafka, &h.topics),
    );
    let shutdown = CancellationToken::new();
    let consumer_task = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { consumer.run(&handler, shutdown).await })
    };
    let worker_task = tokio::spawn(h.worker(Some(metrics.clone())).run(queue, shutdown.clone()));

    let mut good = request("r-1", "corners", "");
    good.overrides.insert("recipe.epochs".into(), "2".into());
    let sent = h.send(good.clone()).await;
    h.send(good).await; // duplicate
    h.bus
        .publish(OutboundRecord {
            topic: h.topics.training_requests.clone(),
            key: b"junk".to_vec(),
            payload: b"not a protobuf event".to_vec(),
            headers: Vec::new(),
        })
        .await
        .unwrap();
    h.send(request("r-2", "corners", "nope")).await;
    let mut contradicting = request("r-3", "corners", "corners");
    contradicting.model_kind = ModelKind::SeResnet as i32;
    h.send(contradicting).await;
    h.send(request("r-4", "missing", "corners")).await;
    let mut bad_override = request("r-5", "corners", "corners");
    bad_override
        .overrides
        .insert("recipe.epochs".into(), "many".into());
    h.send(bad_override).await;
    h.send(request("../escape", "corners", "corners")).await;

    // Two epochs, two announcements.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let checkpoints = loop {
        let events = h
            .events(
                &h.topics.checkpoints,
                &format!("c{}", uuid()),
                Duration::from_millis(200),
            )
            .await;
        if events.len() >= 2 || std::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let announced: Vec<_> = checkpoints
        .iter()
        .map(|e| match e.body.as_ref().unwrap() {
            Body::CheckpointCreated(c) => c.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(announced.len(), 2, "{announced:?}");
    assert_eq!(
        announced
            .iter()
            .map(|c| (c.epoch, c.is_final))
            .collect::<Vec<_>>(),
        vec![(0, false), (1, true)]
    );
    for (event, c) in checkpoints.iter().zip(&announced) {
        assert_eq!(c.run_id, "r-1");
        assert_eq!(c.request_id, "r-1");
        assert_eq!(c.dataset_id, "corners");
        assert_eq!(c.model_kind(), ModelKind::Densenet121);
        assert_eq!(
            event.correlation_id(),
            sent.correlation_id(),
            "the run's events follow the request"
        );
        let object = c.checkpoint.as_ref().unwrap();
        let key = format!("runs/r-1/checkpoints/epoch-{:03}.safetensors", c.epoch);
        assert_eq!(object.uri, h.store.uri(&key));
        let bytes = h.store.get(&key).await.unwrap();
        assert_eq!(object.sha256, chexvision_store::sha256_hex(&bytes));
        assert_eq!(object.size_bytes, bytes.len() as u64);
    }
    assert!(announced.iter().any(|c| c.is_best));
    assert!(
        announced[1].val_macro_auc > 0.5,
        "{}",
        announced[1].val_macro_auc
    );

    // Every bad request is in the dead-letter topic with its reason.
    let dead: Vec<String> = h
        .events(&h.topics.dead_letter, "dlq", Duration::from_millis(300))
        .await
        .into_iter()
        .map(|e| match e.body.unwrap() {
            Body::DeadLetter(d) => d.error,
            other => panic!("{other:?}"),
        })
        .collect();
    let expected = [
        "malformed record",
        "unknown config `nope`",
        "contradicts config `corners`",
        "dataset `missing` is not prepared at 32 px",
        "recipe.epochs",
        "request_id `../escape` is not valid",
    ];
    assert_eq!(dead.len(), expected.len(), "{dead:#?}");
    for (error, want) in dead.iter().zip(expected) {
        assert!(error.contains(want), "{error:?} should contain {want:?}");
    }

    // One run, completed and fully announced; nothing for the rejects.
    let state = read_run_state(h.store.as_ref(), "r-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (state.status, state.epochs_done, state.announced_epochs),
        (RunStatus::Completed, 2, 2)
    );
    let request = state.request.unwrap();
    assert_eq!(request.config, "corners");
    assert_eq!(request.overrides["recipe.epochs"], "2");
    for rejected in ["r-2", "r-3", "r-4", "r-5"] {
        assert!(read_run_state(h.store.as_ref(), rejected)
            .await
            .unwrap()
            .is_none());
    }
    assert_eq!(
        metric(
            &registry,
            "chexvision_trainer_requests_total",
            Some("accepted")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &registry,
            "chexvision_trainer_requests_total",
            Some("duplicate")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &registry,
            "chexvision_trainer_runs_total",
            Some("completed")
        ),
        1.0
    );
    assert_eq!(
        metric(&registry, "chexvision_trainer_checkpoints_total", None),
        2.0
    );
    assert_eq!(metric(&registry, "chexvision_trainer_epoch", None), 1.0);
    assert!(metric(&registry, "chexvision_trainer_images_total", None) >= 288.0);
    assert!(metric(&registry, "chexvision_trainer_val_macro_auc", None) > 0.5);
    assert_eq!(
        metric(&registry, "chexvision_trainer_queued_runs", None),
        0.0
    );
    let waits = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "chexvision_trainer_loader_wait_seconds")
        .unwrap();
    assert!(waits.get_metric()[0].get_histogram().get_sample_count() >= 18);

    shutdown.cancel();
    consumer_task.await.unwrap().unwrap();
    worker_task.await.unwrap().unwrap();
}

fn uuid() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_leaves_the_run_to_the_next_start_which_finishes_it() {
    let h = harness().await;
    let (handler, _queue) = h.handler(None);
    let envelope = Envelope::new(request("r-kill", "corners", "corners"), "tests");
    let Some(Body::TrainingRequested(req)) = &envelope.body else {
        unreachable!()
    };
    assert_eq!(
        handler.accept(req, &envelope).await.unwrap(),
        Accepted::Started("r-kill".into())
    );
    // Durable before the request is acknowledged.
    let state = read_run_state(h.store.as_ref(), "r-kill")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((state.status, state.epochs_done), (RunStatus::Running, 0));
    h.store.head("runs/r-kill/config.yaml").await.unwrap();
    assert_eq!(
        pending_runs(h.store.as_ref()).await.unwrap(),
        vec!["r-kill"]
    );

    // SIGTERM during the second epoch.
    let registry = prometheus::Registry::new();
    let metrics = TrainerMetrics::register(&registry).unwrap();
    let shutdown = CancellationToken::new();
    let watcher = {
        let (shutdown, metrics) = (shutdown.clone(), metrics.clone());
        tokio::spawn(async move {
            while metrics.images.get() < 144 + 32 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            shutdown.cancel();
        })
    };
    let outcome = h.worker(Some(metrics)).run_job("r-kill", &shutdown).await;
    watcher.await.unwrap();
    assert_eq!(outcome, JobOutcome::Interrupted);
    let state = read_run_state(h.store.as_ref(), "r-kill")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((state.status, state.epochs_done), (RunStatus::Running, 1));
    assert_eq!(
        pending_runs(h.store.as_ref()).await.unwrap(),
        vec!["r-kill"]
    );

    // The next start finishes it: each epoch once.
    let outcome = h
        .worker(None)
        .run_job("r-kill", &CancellationToken::new())
        .await;
    assert_eq!(outcome, JobOutcome::Finished(RunStatus::Completed));
    let history: Vec<EpochRecord> =
        serde_json::from_slice(&h.store.get("runs/r-kill/history.json").await.unwrap()).unwrap();
    assert_eq!(
        history.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert!(pending_runs(h.store.as_ref()).await.unwrap().is_empty());
    let announced = h
        .events(&h.topics.checkpoints, "c", Duration::from_millis(200))
        .await;
    assert_eq!(
        announced.len(),
        2,
        "epoch 0 once, by the first worker; epoch 1 by the second"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_longer_than_the_attempts_pauses_the_run_and_loses_nothing() {
    let h = harness().await;
    let outage = Arc::new(OutageStore::new(h.store.clone(), ""));
    let store: Arc<dyn ObjectStore> = outage.clone();
    let (mut handler, _queue) = h.handler(None);
    handler.store = store.clone();
    let envelope = Envelope::new(request("r-outage", "corners", "corners"), "tests");
    let Some(Body::TrainingRequested(req)) = &envelope.body else {
        unreachable!()
    };
    // A request arriving during the outage waits (retried by the consumer
    // for as long as it lasts), never dead-lettered.
    outage.set_down(true);
    let refused = handler.accept(req, &envelope).await.unwrap_err();
    assert!(
        matches!(
            chexvision_bus::HandlerError::from(refused),
            chexvision_bus::HandlerError::Unavailable(_)
        ),
        "a store outage must not count as a failed request"
    );
    outage.set_down(false);
    assert_eq!(
        handler.accept(req, &envelope).await.unwrap(),
        Accepted::Started("r-outage".into())
    );

    // The store goes away during the second epoch and stays away for more
    // failed attempts than `max_attempts` allows for other failures.
    let registry = prometheus::Registry::new();
    let metrics = TrainerMetrics::register(&registry).unwrap();
    let attempts = h.settings.max_attempts;
    let switch = {
        let (outage, metrics, registry) = (outage.clone(), metrics.clone(), registry.clone());
        tokio::spawn(async move {
            while metrics.images.get() < 144 + 32 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            outage.set_down(true);
            while metric(
                &registry,
                "chexvision_trainer_runs_total",
                Some("store_unavailable"),
            ) < f64::from(attempts + 2)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            outage.set_down(false);
        })
    };
    let worker = Arc::new(TrainerWorker {
        store: store.clone(),
        bus: h.bus.clone(),
        topics: h.topics.clone(),
        settings: h.settings.clone(),
        device: Device::Cpu,
        metrics: Some(metrics),
    });
    let outcome = tokio::time::timeout(
        Duration::from_secs(300),
        worker.run_job("r-outage", &CancellationToken::new()),
    )
    .await
    .expect("the run ends once the store is back");
    switch.await.unwrap();
    assert_eq!(outcome, JobOutcome::Finished(RunStatus::Completed));
    assert!(outage.refused() > 0);
    assert_eq!(
        metric(&registry, "chexvision_trainer_runs_total", Some("failed")),
        0.0
    );
    // Resumed from its last epoch: each epoch once, each announced once.
    let history: Vec<EpochRecord> =
        serde_json::from_slice(&h.store.get("runs/r-outage/history.json").await.unwrap()).unwrap();
    assert_eq!(
        history.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        vec![0, 1]
    );
    let announced = h
        .events(&h.topics.checkpoints, "c", Duration::from_millis(200))
        .await;
    let epochs: Vec<u32> = announced
        .iter()
        .map(|e| match &e.body {
            Some(Body::CheckpointCreated(c)) => c.epoch,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(epochs, vec![0, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_dataset_vanished_is_marked_failed_naming_what_is_missing() {
    let h = harness().await;
    let (handler, _queue) = h.handler(None);
    let envelope = Envelope::new(request("r-gone", "corners", "corners"), "tests");
    let Some(Body::TrainingRequested(req)) = &envelope.body else {
        unreachable!()
    };
    handler.accept(req, &envelope).await.unwrap();
    h.store
        .delete("datasets/corners/ready/32px/manifest.json")
        .await
        .unwrap();
    let outcome = h
        .worker(None)
        .run_job("r-gone", &CancellationToken::new())
        .await;
    let JobOutcome::Failed(error) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        error.contains("datasets/corners/ready/32px/manifest.json"),
        "{error}"
    );
    let state = read_run_state(h.store.as_ref(), "r-gone")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.status, RunStatus::Failed);
    assert!(state.error.unwrap().contains("manifest.json"));
    assert!(
        pending_runs(h.store.as_ref()).await.unwrap().is_empty(),
        "a failed run is not retried on restart"
    );
}

fn dataset_ready(dataset_id: &str, size_px: u32, sha: &str) -> DatasetReady {
    DatasetReady {
        dataset_id: dataset_id.into(),
        manifest: Some(ObjectRef {
            uri: format!("file:///datasets/{dataset_id}/manifest.json"),
            sha256: sha.into(),
            size_bytes: 1,
        }),
        image_size_px: size_px,
        shard_count: 4,
        rows_per_split: HashMap::new(),
        synthetic: true,
        ready_manifest: None,
    }
}

async fn handle(
    handler: &TrainerHandler,
    body: impl Into<Body>,
) -> Result<(), chexvision_bus::HandlerError> {
    let envelope = Envelope::new(body, "tests");
    let delivery = chexvision_bus::Delivery {
        topic: chexvision_bus::home_topic(&envelope, &Topics::default())
            .unwrap()
            .to_owned(),
        partition: 0,
        offset: 0,
        key: Vec::new(),
        payload: envelope.to_bytes(),
        headers: Vec::new(),
    };
    chexvision_bus::Handler::handle(handler, &delivery).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_dataset_starts_one_run_per_manifest_when_configured() {
    let mut h = harness().await;
    let sha = "ab".repeat(32);
    let (off, _) = h.handler(None);
    let err = handle(&off, dataset_ready("corners", SIDE, &sha))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("expected a training request"),
        "{err}"
    );

    h.settings.train_on_dataset_ready = true;
    let (on, mut queue) = h.handler(None);
    handle(&on, dataset_ready("corners", SIDE, &sha))
        .await
        .unwrap();
    let run_id = queue.try_recv().unwrap();
    assert_eq!(run_id, format!("auto-corners-32px-{}", &sha[..12]));
    let state = read_run_state(h.store.as_ref(), &run_id)
        .await
        .unwrap()
        .unwrap();
    assert!(state.synthetic);
    assert!(state
        .request
        .unwrap()
        .reason
        .contains("dataset corners ready"));
    // Announced again: the same run, nothing new.
    handle(&on, dataset_ready("corners", SIDE, &sha))
        .await
        .unwrap();
    assert!(queue.try_recv().is_err());
    // Another size than the config trains: not ours.
    handle(&on, dataset_ready("corners", 320, &sha))
        .await
        .unwrap();
    assert!(queue.try_recv().is_err());
    // No manifest digest: malformed.
    let err = handle(&on, dataset_ready("corners", SIDE, ""))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("manifest sha256"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_is_the_newest_dataset_ready_at_the_size() {
    let h = harness().await;
    let (handler, mut queue) = h.handler(None);
    // A newer dataset ready at 32 px: a copy of corners under another id.
    tokio::time::sleep(Duration::from_millis(20)).await;
    for object in h.store.list("datasets/corners/").await.unwrap() {
        let bytes = h.store.get(&object.key).await.unwrap();
        let key = object
            .key
            .replacen("datasets/corners/", "datasets/newer/", 1);
        h.store.put(&key, bytes).await.unwrap();
    }
    h.store
        .put(&dataset_ready_key("newer", SIDE), Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let envelope = Envelope::new(request("r-latest", "latest", "corners"), "tests");
    let Some(Body::TrainingRequested(req)) = &envelope.body else {
        unreachable!()
    };
    handler.accept(req, &envelope).await.unwrap();
    queue.try_recv().unwrap();
    let state = read_run_state(h.store.as_ref(), "r-latest")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.dataset_id, "newer");

    // Nothing is ready at 64 px (config `other`).
    let envelope = Envelope::new(request("r-64", "latest", "other"), "tests");
    let Some(Body::TrainingRequested(req)) = &envelope.body else {
        unreachable!()
    };
    let err = handler.accept(req, &envelope).await.unwrap_err();
    assert!(
        matches!(&err, RequestError::Rejected(m) if m.contains("no dataset is ready at 64 px")),
        "{err}"
    );
}

#[test]
fn overrides_apply_to_the_run_settings_and_name_their_key_when_wrong() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let overrides = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let tiny = load_run_settings(&configs, "tiny", &overrides(&[]), "t").unwrap();
    let changed = load_run_settings(
        &configs,
        "tiny",
        &overrides(&[("recipe.epochs", "3"), ("service.image_size", "96")]),
        "t",
    )
    .unwrap();
    assert_eq!((changed.recipe.epochs, changed.image_size), (3, 96));
    assert_eq!(changed.model, tiny.model);
    for (key, value, want) in [
        ("recipe.epochs", "many", "recipe.epochs"),
        ("recipe.no_such_key", "1", "no_such_key"),
        ("../x", "1", "not a key path"),
        ("recipe..epochs", "1", "not a key path"),
    ] {
        let err = load_run_settings(&configs, "tiny", &overrides(&[(key, value)]), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{key}: {err}");
    }
    let err = load_run_settings(&configs, "../etc/passwd", &overrides(&[]), "t")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a config name"), "{err}");
    let err = load_run_settings(&configs, "huge", &overrides(&[]), "t")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown config `huge`") && err.contains("tiny"),
        "{err}"
    );
}

/// What a data team's mistakes look like on the wire, per topic: each is
/// refused with a reason that names the problem, and the valid request sent
/// after it is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_and_the_next_valid_one_is_served() {
    let h = harness().await;
    let (handler, mut queue) = h.handler(None);
    let with = |id: &str, pairs: &[(&str, &str)]| {
        let mut r = request(id, "corners", "corners");
        for (k, v) in pairs {
            r.overrides.insert((*k).into(), (*v).into());
        }
        r
    };
    let many_overrides = {
        let mut r = request("h-many", "corners", "corners");
        for i in 0..100 {
            r.overrides.insert(format!("recipe.k{i}"), "1".into());
        }
        r
    };
    let long_reason = TrainingRequested {
        reason: "x".repeat(100_000),
        ..request("h-reason", "corners", "corners")
    };
    let hostile: Vec<(Body, &str)> = vec![
        // Hundreds of gigabytes for one step.
        (
            with(
                "h-batch",
                &[("recipe.batch_size", "512"), ("image_size", "1024")],
            )
            .into(),
            "GiB",
        ),
        (
            with("h-batch-huge", &[("recipe.batch_size", "100000")]).into(),
            "recipe.batch_size 100000",
        ),
        // A run that never ends.
        (
            with(
                "h-epochs",
                &[
                    ("recipe.epochs", "4294967295"),
                    ("recipe.patience", "4294967295"),
                ],
            )
            .into(),
            "recipe.epochs 4294967295",
        ),
        // Non-finite numbers only a `< 0` check would guard.
        (
            with("h-nan", &[("recipe.weight_decay", ".nan")]).into(),
            "weight_decay",
        ),
        (
            with("h-inf", &[("recipe.grad_clip_norm", ".inf")]).into(),
            "grad_clip_norm",
        ),
        (
            with("h-lr", &[("recipe.learning_rate", "-1")]).into(),
            "learning_rate",
        ),
        // A model far larger than any this trainer is for.
        (
            with("h-model", &[("model.block_config", "[1000, 1000]")]).into(),
            "layers in a block",
        ),
        (
            with("h-shuffle", &[("shuffle_buffer", "100000000")]).into(),
            "shuffle_buffer",
        ),
        (
            with("h-size", &[("image_size", "2048")]).into(),
            "image_size 2048",
        ),
        (many_overrides.into(), "100 overrides"),
        (long_reason.into(), "reason is 100000 bytes"),
    ];
    let valid_ids: Vec<String> = (0..hostile.len()).map(|i| format!("ok-{i}")).collect();
    for ((body, want), valid) in hostile.into_iter().zip(&valid_ids) {
        let err = handle(&handler, body).await.unwrap_err();
        assert!(
            matches!(err, chexvision_bus::HandlerError::Malformed(_)),
            "{want}: not sent to the dead-letter topic at once: {err}"
        );
        assert!(
            err.to_string().contains(want),
            "{err} should contain {want:?}"
        );
        handle(&handler, request(valid, "corners", "corners"))
            .await
            .unwrap_or_else(|e| panic!("the valid request after {want:?} was refused: {e}"));
        assert_eq!(queue.try_recv().unwrap(), *valid);
    }
    // Nothing of the hostile ones was stored.
    let runs: Vec<String> = h
        .store
        .list("runs/")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|o| o.key.strip_suffix("/state.json").map(str::to_owned))
        .collect();
    assert!(runs.iter().all(|r| r.starts_with("runs/ok-")), "{runs:?}");
    assert_eq!(runs.len(), valid_ids.len());
}

/// An event on a topic that is not its own is refused: a training request
/// sent to the datasets topic does not train.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_on_another_topic_is_refused() {
    let mut h = harness().await;
    h.settings.train_on_dataset_ready = true;
    let (handler, mut queue) = h.handler(None);
    let envelope = Envelope::new(request("wrong-topic", "corners", "corners"), "tests");
    let delivery = chexvision_bus::Delivery {
        topic: h.topics.datasets.clone(),
        partition: 0,
        offset: 0,
        key: Vec::new(),
        payload: envelope.to_bytes(),
        headers: Vec::new(),
    };
    let err = chexvision_bus::Handler::handle(&handler, &delivery)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("belongs on chexvision.training.requests, not on chexvision.datasets"),
        "{err}"
    );
    assert!(queue.try_recv().is_err());
    assert!(h.store.head("runs/wrong-topic/state.json").await.is_err());
}

/// A run stored with settings outside the limits (written by an older
/// build, or by hand) is marked failed with the reason when the worker
/// meets it, never started into a crash or retried at every start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_run_outside_the_limits_is_marked_failed_not_started() {
    let h = harness().await;
    let mut settings = common::settings();
    settings.recipe.batch_size = 100_000;
    let state = chexvision_trainer::RunState::accepted("r-huge", "corners", true, &settings, None);
    chexvision_trainer::create_run(h.store.as_ref(), &state)
        .await
        .unwrap();
    assert_eq!(
        pending_runs(h.store.as_ref()).await.unwrap(),
        vec!["r-huge"]
    );
    let outcome = h
        .worker(None)
        .run_job("r-huge", &CancellationToken::new())
        .await;
    let JobOutcome::Failed(reason) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("recipe.batch_size 100000"), "{reason}");
    let state = read_run_state(h.store.as_ref(), "r-huge")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.status, RunStatus::Failed);
    assert!(h
        .store
        .head("runs/r-huge/checkpoints/epoch-000.safetensors")
        .await
        .is_err());
    assert!(pending_runs(h.store.as_ref()).await.unwrap().is_empty());
}

/// A state this build cannot read (a NaN written as null) is marked failed
/// once, keeping what it held, instead of being skipped at every start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_run_state_is_marked_failed_once() {
    let h = harness().await;
    let state =
        chexvision_trainer::RunState::accepted("r-nan", "corners", true, &common::settings(), None);
    let mut json = serde_json::to_value(&state).unwrap();
    json["settings"]["recipe"]["weight_decay"] = serde_json::Value::Null;
    h.store
        .put(
            "runs/r-nan/state.json",
            Bytes::from(serde_json::to_vec(&json).unwrap()),
        )
        .await
        .unwrap();
    assert!(pending_runs(h.store.as_ref()).await.unwrap().is_empty());
    let stored: serde_json::Value =
        serde_json::from_slice(&h.store.get("runs/r-nan/state.json").await.unwrap()).unwrap();
    assert_eq!(stored["status"], "failed");
    assert!(
        stored["error"].as_str().unwrap().contains("weight_decay"),
        "{stored}"
    );
    assert_eq!(stored["dataset_id"], "corners", "the rest is kept");
    // Marked once: a second scan leaves it as it is.
    let before = h.store.get("runs/r-nan/state.json").await.unwrap();
    assert!(pending_runs(h.store.as_ref()).await.unwrap().is_empty());
    assert_eq!(h.store.get("runs/r-nan/state.json").await.unwrap(), before);
}

/// Two replicas that both find one pending run: one trains it, the other
/// sees its lease and leaves it; each epoch is trained and recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_run_train_each_epoch_once() {
    let h = harness().await;
    let (handler, _queue) = h.handler(None);
    let envelope = Envelope::new(request("r-two", "corners", "corners"), "tests");
    let Some(Body::TrainingRequested(req)) = &envelope.body else {
        unreachable!()
    };
    handler.accept(req, &envelope).await.unwrap();
    let worker = |name: &str, registry: &prometheus::Registry| {
        let mut settings = h.settings.clone();
        settings.instance_id = name.into();
        settings.lease_settle_ms = 100;
        Arc::new(TrainerWorker {
            store: h.store.clone(),
            bus: h.bus.clone(),
            topics: h.topics.clone(),
            settings,
            device: Device::Cpu,
            metrics: Some(TrainerMetrics::register(registry).unwrap()),
        })
    };
    let (ra, rb) = (prometheus::Registry::new(), prometheus::Registry::new());
    let (a, b) = (worker("replica-a", &ra), worker("replica-b", &rb));
    let never = CancellationToken::new();
    let (oa, ob) = tokio::join!(a.run_job("r-two", &never), b.run_job("r-two", &never));
    let outcomes = [oa, ob];
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == JobOutcome::Finished(RunStatus::Completed))
            .count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, JobOutcome::HeldElsewhere(_))),
        "{outcomes:?}"
    );
    let epochs_trained = metric(&ra, "chexvision_trainer_images_total", None)
        + metric(&rb, "chexvision_trainer_images_total", None);
    assert_eq!(
        epochs_trained,
        2.0 * 144.0,
        "each epoch's images trained once"
    );
    let history: Vec<EpochRecord> =
        serde_json::from_slice(&h.store.get("runs/r-two/history.json").await.unwrap()).unwrap();
    assert_eq!(
        history.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        vec![0, 1]
    );
    assert!(
        h.store.head("runs/r-two/lease.json").await.is_err(),
        "the lease is handed back"
    );
}

/// The entry point `chexvision-trainer`'s `main` uses, on the shared
/// runtime: a request on the bus becomes a completed run, and a requested
/// stop is a clean one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_entry_point_trains_a_request() {
    let h = harness().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("trainer.yaml");
    std::fs::write(
        &config,
        format!(
            "http:\n  bind: 127.0.0.1:0\nlog:\n  format: pretty\nservice:\n  configs_dir: {}\n  default_config: corners\n  densenet_config: corners\n  se_resnet_config: corners\n",
            h.settings.configs_dir
        ),
    )
    .unwrap();
    let store_dir = dir.path().join("store");
    copy_store(h.store.as_ref(), &store_dir).await;
    let args = chexvision_service::ServiceArgs {
        config: Some(config),
        store: Some(format!("file://{}", store_dir.display())),
        bus: Some("memory://".into()),
    };
    let service = chexvision_service::Service::<TrainerServiceSettings>::start(
        chexvision_trainer::service::PRODUCER,
        &args,
    )
    .await
    .unwrap();
    let tasks = chexvision_trainer::service::spawn(&service, Device::Cpu)
        .await
        .unwrap();
    let (bus, store, shutdown) = (
        service.bus.clone(),
        service.store.clone(),
        service.shutdown.clone(),
    );
    publish_event(
        bus.as_ref(),
        &h.topics.training_requests,
        "k",
        &Envelope::new(request("via-spawn", "corners", ""), "tests"),
    )
    .await
    .unwrap();
    let waiter = tokio::spawn(async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(state)) = read_run_state(store.as_ref(), "via-spawn").await {
                if state.status == RunStatus::Completed {
                    break state;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the run never completed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let state = waiter.await.unwrap();
    assert_eq!(state.epochs_done, 2);
    shutdown.cancel();
    service
        .run_until_shutdown(tasks)
        .await
        .expect("a requested stop is clean");
}

/// Copies every object of `from` into a folder store at `to`.
async fn copy_store(from: &dyn ObjectStore, to: &Path) {
    let target = FsStore::open(to).await.unwrap();
    for object in from.list("").await.unwrap() {
        target
            .put(&object.key, from.get(&object.key).await.unwrap())
            .await
            .unwrap();
    }
}
