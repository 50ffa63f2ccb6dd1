//! The evaluator end to end against the local stack (a Kafka-protocol
//! broker and an S3 server) and a real Prometheus: synthetic images
//! ingested, prepared and trained into two runs by the CLI (a: 4 epochs;
//! b: 1 epoch at a learning rate too small to learn), then the evaluator
//! service (`chexvision-evaluator`, a child process):
//!
//! * run a's final checkpoint event → report, predictions, plots,
//!   `EvaluationCompleted`, a promoted (`ModelPromoted`); the per-finding
//!   and macro AUC recomputed from `predictions.parquet` by scikit-learn
//!   equal the report's;
//! * the same event again → no second evaluation; a malformed record and an
//!   event for an unknown run → the dead-letter topic, with reasons;
//! * Prometheus reads the AUC gauges; run b's event, the evaluator killed
//!   (SIGKILL) while it scores → the restarted evaluator finishes it once:
//!   b refused with its numbers in the history; Prometheus reads a's gauges
//!   from the restarted process before it evaluated anything of a;
//! * `chexvision registry promote` and `rollback` move the pointer and
//!   announce `ModelPromoted`.
//!
//! Skipped without the stack unless CHEXVISION_REQUIRE_STACK=1 (make test, CI).

use std::{path::Path, sync::Arc, time::Duration};

mod common;
use chexvision_bus::{Bus, OutboundRecord, TopicSpec};
use chexvision_events::Body;
use chexvision_store::{ObjectStore, S3Store};
use common::{
    cli, counter, metric, metrics_text, repo_file, service_binary, stack, topic_env, topic_of,
    Deadline, Prometheus, Service, TopicReader,
};

fn checkpoint_event(run_id: &str) -> String {
    format!(
        r#"{{"checkpointCreated": {{"runId": "{run_id}", "datasetId": "e2e", "modelKind": "MODEL_KIND_SE_RESNET", "epoch": 0, "checkpoint": {{"uri": "s3://x/runs/{run_id}/checkpoints/best.safetensors"}}, "isBest": true, "isFinal": true}}}}"#
    )
}

/// Per-finding AUC by scikit-learn from the predictions (read here, passed
/// as JSON); None where sklearn is not installed and the stack not required.
fn sklearn_aucs(
    predictions: &chexvision_evaluator::score::SplitScores,
) -> Option<Vec<Option<f64>>> {
    let columns: Vec<(Vec<bool>, Vec<f64>)> = (0..15)
        .map(|c| (predictions.label(c), predictions.probability(c)))
        .collect();
    let input = serde_json::to_string(&columns).unwrap();
    let script = "import json,sys\nfrom sklearn.metrics import roc_auc_score\n\
                  cols=json.load(sys.stdin)\n\
                  print(json.dumps([roc_auc_score(y,p) if 0<sum(y)<len(y) else None for y,p in cols]))";
    let value = common::python_json(script, &input, "scikit-learn")?;
    Some(serde_json::from_value(value).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluations_promotions_dead_letters_restarts_and_prometheus() {
    let Some(common::Stack { config, bucket }) = stack() else {
        return;
    };
    let Some(prometheus_bin) = common::prometheus_or_skip() else {
        return;
    };
    let unique = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let prefix = format!("e2e-eval-{unique}");
    let store_uri = format!("s3://{bucket}/{prefix}");
    let store = S3Store::connect(&bucket, &prefix, &config.s3).unwrap();
    let mut env = topic_env(
        "eval",
        &unique,
        &[
            "SHARDS_RAW",
            "SHARDS_READY",
            "DATASETS",
            "CHECKPOINTS",
            "EVALUATIONS",
            "MODELS_PROMOTED",
            "DEAD_LETTER",
        ],
    );
    env.push(("CHEXVISION_STORE".into(), store_uri.clone()));
    let topic = |name: &str| topic_of(&env, name);

    // Data and two runs, by hand.
    let source = tempfile::tempdir().unwrap();
    let source_path = source.path().display().to_string();
    cli(
        &env,
        &[
            "synth",
            "--rows",
            "600",
            "--size",
            "64",
            "--seed",
            "9",
            "--min-finding-share",
            "0.08",
            "--visible-at",
            "64",
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
    let configs = tempfile::tempdir().unwrap();
    let write_config = |name: &str, extra: &str| {
        let path = configs.path().join(name);
        std::fs::write(
            &path,
            format!(
                "inherits: {}\nservice:\n  image_size: 64\n  recipe:\n    batch_size: 16\n{extra}",
                repo_file("configs/tiny.yaml")
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let strong = write_config("a.yaml", "    epochs: 4\n");
    let weak = write_config("b.yaml", "    epochs: 1\n    learning_rate: 0.00001\n");
    for (run, cfg) in [("a", &strong), ("b", &weak)] {
        cli(
            &env,
            &[
                "--config",
                cfg,
                "train",
                "--dataset-id",
                "e2e",
                "--run-id",
                run,
                "--quiet",
            ],
            None,
        );
    }

    // The topics, read from the start.
    let bus: Arc<dyn Bus> = chexvision_bus::connect(&config.bus, &config.kafka).unwrap();
    bus.create_topics(&[
        TopicSpec::new(topic("CHECKPOINTS"), config.kafka.partitions),
        TopicSpec::new(topic("EVALUATIONS"), config.kafka.partitions),
        TopicSpec::new(topic("MODELS_PROMOTED"), config.kafka.partitions),
        TopicSpec::new(topic("DEAD_LETTER"), 1),
    ])
    .await
    .unwrap();
    let evaluations = TopicReader::start(&bus, &topic("EVALUATIONS")).await;
    let promotions = TopicReader::start(&bus, &topic("MODELS_PROMOTED")).await;
    let dead_letters = TopicReader::start(&bus, &topic("DEAD_LETTER")).await;

    let prometheus = Prometheus::start(&prometheus_bin);
    let binary = service_binary("chexvision-evaluator", "CHEXVISION_EVALUATOR_BIN");
    let evaluator_config = Path::new(&repo_file("configs/evaluator.yaml")).to_path_buf();
    let mut service_env = env.clone();
    service_env.extend([
        (
            "CHEXVISION_SERVICE__GROUP".to_string(),
            format!("e2e-evaluator-{unique}"),
        ),
        (
            "CHEXVISION_SERVICE__RESCAN_SECS".to_string(),
            "1".to_string(),
        ),
        (
            "CHEXVISION_SERVICE__LEASE_TTL_SECS".to_string(),
            "5".to_string(),
        ),
        (
            "CHEXVISION_KAFKA__PROPERTIES__group.instance.id".to_string(),
            format!("e2e-evaluator-{unique}-0"),
        ),
    ]);
    let mut evaluator = Service::start(
        &binary,
        &evaluator_config,
        &service_env,
        "chexvision-evaluator",
    );
    let address = evaluator.http_address().await;
    prometheus.scrape(address);

    // Run a: evaluated, promoted.
    cli(&env, &["events", "send"], Some(&checkpoint_event("a")));
    let completed = |run: &str| {
        evaluations
            .events()
            .into_iter()
            .filter_map(|(_, e)| match e.body {
                Some(Body::EvaluationCompleted(c)) if c.run_id == run => Some(c),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let deadline = Deadline::new("EvaluationCompleted of run a");
    while completed("a").is_empty() || promotions.is_empty() {
        deadline.tick(&mut evaluator).await;
    }
    let done_a = completed("a").remove(0);
    assert!(done_a.promoted, "the first model is promoted");
    let report_uri = done_a.report.as_ref().unwrap().uri.clone();
    let report_key = report_uri
        .strip_prefix(&format!("{store_uri}/"))
        .unwrap_or_else(|| panic!("{report_uri} outside {store_uri}"))
        .to_string();
    let report: chexvision_evaluator::Report =
        serde_json::from_slice(&store.get(&report_key).await.unwrap()).unwrap();
    assert_eq!(report.run_id, "a");
    assert!(report.dataset.synthetic);
    assert!((report.macro_auc.unwrap() - done_a.macro_auc).abs() < 1e-12);
    let folder = report_key.trim_end_matches("report.json");
    for file in [
        "predictions.parquet",
        "report.md",
        "roc.png",
        "pr.png",
        "reliability.png",
        "confusion_binary.png",
        "history.png",
        "auc_intervals.png",
    ] {
        store
            .head(&format!("{folder}{file}"))
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    // scikit-learn recomputes every AUC of the report from the predictions.
    let predictions = chexvision_evaluator::predictions::read_predictions(
        store
            .get(&format!("{folder}predictions.parquet"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(predictions.rows(), report.images);
    if let Some(aucs) = sklearn_aucs(&predictions) {
        let ours: Vec<Option<f64>> = report
            .findings
            .iter()
            .chain(std::iter::once(&report.binary))
            .map(|f| f.auc)
            .collect();
        for (c, (a, b)) in ours.iter().zip(&aucs).enumerate() {
            match (a, b) {
                (Some(a), Some(b)) => {
                    assert!((a - b).abs() < 1e-9, "output {c}: {a} vs sklearn {b}")
                }
                (None, None) => {}
                _ => panic!("output {c}: {a:?} vs sklearn {b:?}"),
            }
        }
        let defined: Vec<f64> = aucs[..14].iter().flatten().copied().collect();
        let macro_sklearn = defined.iter().sum::<f64>() / defined.len() as f64;
        assert!((report.macro_auc.unwrap() - macro_sklearn).abs() < 1e-9);
    }
    let version_a = chexvision_registry::version_of("a", &report.model.checkpoint_sha256);
    let registry = chexvision_registry::Registry::new(Arc::new(store.clone()), "e2e");
    assert_eq!(
        registry.production().await.unwrap().unwrap().version,
        version_a
    );

    // The same event again: nothing. A malformed record and an unknown run:
    // dead letters with reasons.
    cli(&env, &["events", "send"], Some(&checkpoint_event("a")));
    cli(&env, &["events", "send"], Some(&checkpoint_event("nobody")));
    bus.publish(OutboundRecord {
        topic: topic("CHECKPOINTS"),
        key: b"junk".to_vec(),
        payload: b"not an event".to_vec(),
        headers: Vec::new(),
    })
    .await
    .unwrap();
    let deadline = Deadline::new("the duplicate and two dead letters");
    while counter(
        &metrics_text(address),
        "chexvision_evaluator_checkpoints_total",
        &[("outcome", "duplicate")],
    ) < 1
        || dead_letters.len() < 2
    {
        deadline.tick(&mut evaluator).await;
    }
    let reasons: Vec<String> = dead_letters
        .events()
        .into_iter()
        .filter_map(|(_, e)| match e.body {
            Some(Body::DeadLetter(d)) => Some(d.error),
            _ => None,
        })
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("unknown run `nobody`")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("malformed")),
        "{reasons:?}"
    );
    let text = metrics_text(address);
    assert_eq!(
        counter(
            &text,
            "chexvision_evaluations_total",
            &[("outcome", "completed")]
        ),
        1
    );

    // Prometheus has a's gauges.
    let macro_query = format!(
        r#"chexvision_model_macro_auc{{model_version="{version_a}",split="test",instance="{address}"}}"#
    );
    let deadline = Deadline::new("Prometheus: a's macro AUC");
    let scraped = loop {
        if let Some(v) = prometheus.query(&macro_query) {
            break v;
        }
        deadline.tick(&mut evaluator).await;
    };
    assert!(
        (scraped - report.macro_auc.unwrap()).abs() < 1e-9,
        "{scraped}"
    );

    // Run b, with the evaluator killed while it scores; four test-time
    // views make the scoring long enough to be caught.
    evaluator.kill();
    drop(evaluator);
    service_env.push((
        "CHEXVISION_SERVICE__EVALUATION__TTA".to_string(),
        "true".to_string(),
    ));
    service_env.push((
        "CHEXVISION_SERVICE__EVALUATION__BATCH_SIZE".to_string(),
        "4".to_string(),
    ));
    let mut evaluator = Service::start(
        &binary,
        &evaluator_config,
        &service_env,
        "chexvision-evaluator (2)",
    );
    let address = evaluator.http_address().await;
    cli(&env, &["events", "send"], Some(&checkpoint_event("b")));
    let deadline = Deadline::new("run b being scored");
    while metric(
        &metrics_text(address),
        "chexvision_evaluation_images_scored_total",
        &[],
    )
    .unwrap_or(0.0)
        < 8.0
    {
        deadline
            .tick_every(&mut evaluator, Duration::from_millis(10))
            .await;
    }
    evaluator.kill();
    drop(evaluator);
    assert!(
        completed("b").is_empty(),
        "killed before it finished; make the scoring longer"
    );
    let pending = chexvision_evaluator::service::pending_jobs(&store)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1, "b's evaluation is pending: {pending:?}");

    let mut evaluator = Service::start(
        &binary,
        &evaluator_config,
        &service_env,
        "chexvision-evaluator (3)",
    );
    let address = evaluator.http_address().await;
    prometheus.scrape(address);
    // Restored from the registry before anything of a is evaluated again.
    let macro_query = format!(
        r#"chexvision_model_macro_auc{{model_version="{version_a}",split="test",instance="{address}"}}"#
    );
    let deadline = Deadline::new("Prometheus: a's macro AUC from the restarted evaluator");
    let restored = loop {
        if let Some(v) = prometheus.query(&macro_query) {
            break v;
        }
        deadline.tick(&mut evaluator).await;
    };
    assert!(
        (restored - report.macro_auc.unwrap()).abs() < 1e-9,
        "{restored}"
    );
    let deadline = Deadline::new("EvaluationCompleted of run b");
    while completed("b").is_empty() {
        deadline.tick(&mut evaluator).await;
    }
    assert!(!completed("b")[0].promoted, "the weaker run is refused");
    let history = registry.history(100).await.unwrap();
    let b_decisions: Vec<_> = history
        .iter()
        .filter(|e| e.version.starts_with("b."))
        .collect();
    assert_eq!(b_decisions.len(), 1, "b decided once: {history:?}");
    assert_eq!(b_decisions[0].action, chexvision_registry::Action::Refused);
    let decision = b_decisions[0].decision.as_ref().unwrap();
    assert!(
        decision.macro_delta.is_some() && decision.p_value.is_some(),
        "{decision:?}"
    );
    assert!(chexvision_evaluator::service::pending_jobs(&store)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(promotions.len(), 1);

    // By hand: promote b, then roll back to a; each announced.
    let version_b = b_decisions[0].version.clone();
    let out = cli(
        &env,
        &[
            "registry",
            "promote",
            &version_b,
            "--reason",
            "e2e: by hand",
        ],
        None,
    );
    assert!(out.contains(&version_b), "{out}");
    let out = cli(
        &env,
        &["registry", "rollback", "--reason", "e2e: back"],
        None,
    );
    assert!(out.contains(&format!("production: {version_a}")), "{out}");
    let deadline = Deadline::new("three ModelPromoted events");
    while promotions.len() < 3 {
        deadline.tick(&mut evaluator).await;
    }
    let promoted: Vec<String> = promotions
        .events()
        .into_iter()
        .filter_map(|(_, e)| match e.body {
            Some(Body::ModelPromoted(p)) => Some(p.model_version),
            _ => None,
        })
        .collect();
    assert_eq!(
        promoted,
        vec![version_a.clone(), version_b, version_a.clone()]
    );
    assert_eq!(
        registry.production().await.unwrap().unwrap().version,
        version_a
    );
    let listing = cli(&env, &["registry", "list"], None);
    assert!(listing.contains(&format!("* {version_a}")), "{listing}");
    evaluator.terminate();
    let _ = prometheus.log();
}
