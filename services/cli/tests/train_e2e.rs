//! Training end to end against the local stack (Kafka-protocol broker + S3
//! server): synthetic images ingested and preprocessed through the stack,
//! then
//!
//! * `chexvision train` by hand: one uninterrupted run, the reference;
//! * the trainer service (`chexvision-trainer`, a child process): a
//!   training request sent as JSON with `chexvision events send` becomes a
//!   run; the service is killed with SIGKILL in the middle of an epoch and
//!   started again, and the run must finish with each epoch once in its
//!   history, every checkpoint announced on the checkpoints topic, and the
//!   same final model and validation AUC as the reference; the same request
//!   sent again starts nothing; a request naming an unknown config lands in
//!   the dead-letter topic with that reason;
//! * two trainer replicas in one group, both looking for runs every second:
//!   one request trains once, each epoch by the replica holding the lease.
//!
//! The service binary belongs to another package: the test builds it unless
//! `CHEXVISION_TRAINER_BIN` names one. Skipped without the stack, unless
//! CHEXVISION_REQUIRE_STACK=1 (make test, CI).

use std::{collections::BTreeMap, path::Path, time::Duration};

mod common;
use chexvision_bus::{Bus, TopicSpec};
use chexvision_events::{Body, CheckpointCreated};
use chexvision_models::Checkpoint;
use chexvision_store::{sha256_hex, ObjectStore, S3Store};
use common::{
    cli, counter, metric, metrics_text, repo_file, service_binary, stack, topic_env, topic_of,
    Deadline, Service, TopicReader,
};

fn checkpoints_of(reader: &TopicReader, run_id: &str) -> Vec<CheckpointCreated> {
    reader
        .events()
        .into_iter()
        .filter_map(|(_, e)| match e.body {
            Some(Body::CheckpointCreated(c)) if c.run_id == run_id => Some(c),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_by_hand_and_by_request_survives_sigkill_and_gives_the_same_model() {
    let Some(common::Stack { config, bucket }) = stack() else {
        return;
    };
    let unique = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let prefix = format!("e2e-train-{unique}");
    let store_uri = format!("s3://{bucket}/{prefix}");
    let store = S3Store::connect(&bucket, &prefix, &config.s3).unwrap();
    let mut env = topic_env(
        "train",
        &unique,
        &[
            "SHARDS_RAW",
            "SHARDS_READY",
            "DATASETS",
            "TRAINING_REQUESTS",
            "CHECKPOINTS",
            "DEAD_LETTER",
        ],
    );
    env.push(("CHEXVISION_STORE".into(), store_uri.clone()));
    let topic = |name: &str| topic_of(&env, name);

    // 400 synthetic images, 64 px ready shards: an epoch long enough (over a
    // second in an optimised build) for the test to kill the service in
    // the middle of one.
    let source = tempfile::tempdir().unwrap();
    let source_path = source.path().display().to_string();
    cli(
        &env,
        &[
            "synth",
            "--rows",
            "400",
            "--size",
            "64",
            "--seed",
            "5",
            "--out",
            &source_path,
        ],
        None,
    );
    cli(
        &env,
        &[
            "ingest",
            "--source",
            &source_path,
            "--dataset-id",
            "e2e",
            "--shard-rows",
            "100",
            "--quiet",
        ],
        None,
    );
    cli(
        &env,
        &[
            "preprocess",
            "--dataset-id",
            "e2e",
            "--size",
            "64",
            "--quiet",
        ],
        None,
    );

    // configs/tiny.yaml made smaller still, for the CLI and the service alike.
    let configs = tempfile::tempdir().unwrap();
    std::fs::write(
        configs.path().join("e2e.yaml"),
        format!(
            "inherits: {}\nservice:\n  image_size: 64\n  recipe:\n    epochs: 3\n    batch_size: 16\n",
            repo_file("configs/tiny.yaml")
        ),
    )
    .unwrap();
    let e2e_config = configs.path().join("e2e.yaml").display().to_string();

    // The reference: by hand, never interrupted.
    let stdout = cli(
        &env,
        &[
            "--config",
            &e2e_config,
            "train",
            "--dataset-id",
            "e2e",
            "--run-id",
            "whole",
            "--quiet",
        ],
        None,
    );
    assert!(
        stdout.contains("run whole: Completed after 3 epochs"),
        "{stdout}"
    );

    // The service.
    let bus: std::sync::Arc<dyn Bus> = chexvision_bus::connect(&config.bus, &config.kafka).unwrap();
    let binary = service_binary("chexvision-trainer", "CHEXVISION_TRAINER_BIN");
    let mut service_env = env.clone();
    service_env.extend([
        (
            "CHEXVISION_SERVICE__CONFIGS_DIR".to_string(),
            configs.path().display().to_string(),
        ),
        (
            "CHEXVISION_SERVICE__DEFAULT_CONFIG".to_string(),
            "e2e".to_string(),
        ),
        (
            "CHEXVISION_SERVICE__DENSENET_CONFIG".to_string(),
            "e2e".to_string(),
        ),
        (
            "CHEXVISION_SERVICE__SE_RESNET_CONFIG".to_string(),
            "e2e".to_string(),
        ),
        (
            "CHEXVISION_SERVICE__GROUP".to_string(),
            format!("e2e-trainer-{unique}"),
        ),
        // Static membership, as the StatefulSet's pod name does in the
        // cluster: the restarted trainer takes the killed one's place at
        // once instead of waiting for the broker to expire it.
        (
            "CHEXVISION_KAFKA__PROPERTIES__group.instance.id".to_string(),
            format!("e2e-trainer-{unique}-0"),
        ),
    ]);
    let trainer_config = Path::new(&repo_file("configs/trainer.yaml")).to_path_buf();
    let mut trainer = Service::start(&binary, &trainer_config, &service_env, "chexvision-trainer");
    let address = trainer.http_address().await;
    // Read from the start (the service creates the same topics).
    bus.create_topics(&[
        TopicSpec::new(topic("CHECKPOINTS"), config.kafka.partitions),
        TopicSpec::new(topic("DEAD_LETTER"), 1),
    ])
    .await
    .unwrap();
    let checkpoints = TopicReader::start(&bus, &topic("CHECKPOINTS")).await;
    let dead_letters = TopicReader::start(&bus, &topic("DEAD_LETTER")).await;

    let request = |id: &str, config: &str| {
        format!(
            r#"{{"trainingRequested": {{"requestId": "{id}", "datasetId": "e2e", "config": "{config}", "reason": "e2e test", "requestedBy": "tests"}}}}"#
        )
    };
    cli(&env, &["events", "send"], Some(&request("cut", "")));

    // SIGKILL while epoch 1 trains: epoch 0 done, epoch 1 not finished. The
    // service's own metrics say where it is (read every 10 ms: an epoch
    // here is well under a second in an optimised build, and a checkpoint
    // seen on the topic can arrive after the next epoch has ended).
    let deadline = Deadline::new("epoch 1 of run cut");
    let progress = |address| {
        let text = metrics_text(address);
        (
            metric(&text, "chexvision_trainer_epoch", &[]).unwrap_or(0.0),
            metric(&text, "chexvision_trainer_images_total", &[]).unwrap_or(0.0),
        )
    };
    let images_after_epoch_0 = loop {
        let (epoch, images) = progress(address);
        if epoch >= 1.0 {
            break images;
        }
        deadline
            .tick_every(&mut trainer, Duration::from_millis(10))
            .await;
    };
    while progress(address).1 < images_after_epoch_0 + 32.0 {
        deadline
            .tick_every(&mut trainer, Duration::from_millis(10))
            .await;
    }
    trainer.kill();
    let state: serde_json::Value =
        serde_json::from_slice(&store.get("runs/cut/state.json").await.unwrap()).unwrap();
    assert_eq!(
        (state["status"].as_str(), state["epochs_done"].as_u64()),
        (Some("running"), Some(1)),
        "killed in epoch 1; make the epochs longer if epoch 1 had finished"
    );
    drop(trainer);

    // Started again, it finds the run and finishes it.
    let mut trainer = Service::start(
        &binary,
        &trainer_config,
        &service_env,
        "chexvision-trainer (restarted)",
    );
    let address = trainer.http_address().await;
    let deadline = Deadline::new("the last checkpoint of run cut");
    while !checkpoints_of(&checkpoints, "cut")
        .iter()
        .any(|c| c.is_final)
    {
        deadline.tick(&mut trainer).await;
    }

    // The same request again, and one naming an unknown config.
    cli(&env, &["events", "send"], Some(&request("cut", "")));
    cli(&env, &["events", "send"], Some(&request("bad", "nope")));
    let deadline = Deadline::new("the duplicate and the dead letter");
    while counter(
        &metrics_text(address),
        "chexvision_trainer_requests_total",
        &[("outcome", "duplicate")],
    ) < 1
        || dead_letters.is_empty()
    {
        deadline.tick(&mut trainer).await;
    }
    let dead = dead_letters.events();
    assert_eq!(dead.len(), 1);
    let Some(Body::DeadLetter(letter)) = &dead[0].1.body else {
        panic!("{:?}", dead[0].1)
    };
    assert!(
        letter.error.contains("unknown config `nope`"),
        "{}",
        letter.error
    );
    assert_eq!(letter.source_topic, topic("TRAINING_REQUESTS"));

    // Each epoch once; every checkpoint announced, with its digest.
    let history: serde_json::Value =
        serde_json::from_slice(&store.get("runs/cut/history.json").await.unwrap()).unwrap();
    let epochs: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, vec![0, 1, 2], "each epoch once");
    let announced = checkpoints_of(&checkpoints, "cut");
    let by_epoch: BTreeMap<u32, &CheckpointCreated> =
        announced.iter().map(|c| (c.epoch, c)).collect();
    assert_eq!(
        by_epoch.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2],
        "{announced:?}"
    );
    assert!(by_epoch[&2].is_final && !by_epoch[&0].is_final);
    for (epoch, event) in &by_epoch {
        let key = format!("runs/cut/checkpoints/epoch-{epoch:03}.safetensors");
        let bytes = store.get(&key).await.unwrap();
        let object = event.checkpoint.as_ref().unwrap();
        assert_eq!(object.sha256, sha256_hex(&bytes), "{key}");
        assert_eq!(object.uri, store.uri(&key));
        assert_eq!(event.request_id, "cut");
    }
    for artefact in [
        "config.yaml",
        "MODEL_CARD.md",
        "checkpoints/best.safetensors",
        "checkpoints/epoch-002.optimizer.safetensors",
    ] {
        store
            .head(&format!("runs/cut/{artefact}"))
            .await
            .unwrap_or_else(|e| panic!("{artefact}: {e}"));
    }
    let runs: Vec<String> = store
        .list("runs/")
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.key.ends_with("/state.json"))
        .map(|o| o.key)
        .collect();
    assert_eq!(
        runs,
        vec!["runs/cut/state.json", "runs/whole/state.json"],
        "no run for the duplicate or the reject"
    );

    // The killed and resumed run ends where the uninterrupted one did.
    let digest = |bytes: bytes::Bytes| {
        Checkpoint::from_bytes(&bytes, &chexvision_models::candle_core::Device::Cpu)
            .unwrap()
            .meta
            .tensors_sha256
    };
    let whole = digest(
        store
            .get("runs/whole/checkpoints/epoch-002.safetensors")
            .await
            .unwrap(),
    );
    let cut = digest(
        store
            .get("runs/cut/checkpoints/epoch-002.safetensors")
            .await
            .unwrap(),
    );
    assert_eq!(
        whole, cut,
        "the resumed run must end with the uninterrupted run's model"
    );
    let whole_history: serde_json::Value =
        serde_json::from_slice(&store.get("runs/whole/history.json").await.unwrap()).unwrap();
    assert_eq!(
        whole_history[2]["val_macro_auc"], history[2]["val_macro_auc"],
        "final validation macro AUC"
    );
    let final_auc = by_epoch[&2].val_macro_auc;
    assert_eq!(Some(final_auc), history[2]["val_macro_auc"].as_f64());

    // Metrics of the restarted service: the resumed run, its progress.
    let text = metrics_text(address);
    assert_eq!(
        counter(
            &text,
            "chexvision_trainer_runs_total",
            &[("outcome", "completed")]
        ),
        1
    );
    assert_eq!(metric(&text, "chexvision_trainer_epoch", &[]), Some(2.0));
    assert!(metric(&text, "chexvision_trainer_val_macro_auc", &[]).is_some_and(|a| a > 0.0));
    assert!(
        metric(&text, "chexvision_trainer_loader_wait_seconds_count", &[]).is_some_and(|n| n > 0.0)
    );
    let status = trainer.terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");

    // Two replicas in one group, each scanning the store every second for
    // runs that need work: one request, one run, each epoch trained once by
    // the replica holding the run's lease.
    let replica = |name: &str| {
        let mut env = service_env.clone();
        // A group of their own: the static member stopped above keeps its
        // partitions in the old group until its session expires.
        env.retain(|(k, _)| !k.ends_with("group.instance.id") && !k.ends_with("__GROUP"));
        env.extend([
            (
                "CHEXVISION_SERVICE__GROUP".to_string(),
                format!("e2e-trainer-pair-{unique}"),
            ),
            (
                "CHEXVISION_KAFKA__PROPERTIES__group.instance.id".to_string(),
                format!("e2e-trainer-{unique}-{name}"),
            ),
            (
                "CHEXVISION_SERVICE__INSTANCE_ID".to_string(),
                name.to_string(),
            ),
            (
                "CHEXVISION_SERVICE__RESCAN_SECS".to_string(),
                "1".to_string(),
            ),
        ]);
        Service::start(
            &binary,
            &trainer_config,
            &env,
            &format!("chexvision-trainer {name}"),
        )
    };
    let mut a = replica("replica-a");
    let mut b = replica("replica-b");
    let (address_a, address_b) = (a.http_address().await, b.http_address().await);
    cli(&env, &["events", "send"], Some(&request("pair", "")));
    let deadline = Deadline::new("the last checkpoint of run pair");
    while !checkpoints_of(&checkpoints, "pair")
        .iter()
        .any(|c| c.is_final)
    {
        deadline.tick(&mut a).await;
        b.assert_running();
    }
    let history: serde_json::Value =
        serde_json::from_slice(&store.get("runs/pair/history.json").await.unwrap()).unwrap();
    let epochs: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, vec![0, 1, 2], "each epoch once");
    let per_epoch = history[0]["train_images"].as_f64().unwrap();
    let trained = |address| {
        metric(
            &metrics_text(address),
            "chexvision_trainer_images_total",
            &[],
        )
        .unwrap_or(0.0)
    };
    let (images_a, images_b) = (trained(address_a), trained(address_b));
    assert_eq!(
        images_a + images_b,
        3.0 * per_epoch,
        "images trained by replica a ({images_a}) and b ({images_b}): each epoch once"
    );
    assert!(
        images_a == 0.0 || images_b == 0.0,
        "one replica trains the run: a {images_a}, b {images_b}"
    );
    assert_eq!(
        checkpoints_of(&checkpoints, "pair").len(),
        3,
        "each checkpoint announced once"
    );
    for (replica, address) in [("a", address_a), ("b", address_b)] {
        assert_eq!(
            counter(
                &metrics_text(address),
                "chexvision_trainer_runs_total",
                &[("outcome", "lost_lease")]
            ),
            0,
            "replica {replica} lost a lease"
        );
    }
    for mut replica in [a, b] {
        let status = replica.terminate();
        assert!(status.success(), "exit after SIGTERM: {status}");
    }
}
