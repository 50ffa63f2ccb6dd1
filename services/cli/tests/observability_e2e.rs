//! Observability end to end: all five service binaries against the local
//! stack (a Kafka-protocol broker and an S3 server), scraped by a real
//! Prometheus, through a short flow a hospital would run:
//!
//! synthetic images ingested (an `IngestRequested` on the bus) → prepared →
//! trained (a `TrainingRequested`) → evaluated and promoted → served →
//! 110 predictions (one too slow: a 504) → radiologists' readings back on
//! `POST /v1/feedback` (a duplicate, one for a request nobody made).
//!
//! Then a second model, requested through `chexvision events send` and
//! promoted under a lenient policy (or refused: both are checked), while a
//! load generator keeps calling: no failed request, the versions it sees
//! never go backwards; readings for the new version too.
//!
//! Then:
//! * the production AUC Prometheus reads (macro and abnormal) equals
//!   scikit-learn's on the pairs the test sent (the answers' probabilities,
//!   the images' true labels), and the unknown request is dead-lettered;
//! * every PromQL expression of every dashboard panel and annotation and
//!   of every alert rule (`scripts/observability/queries.py`) runs against
//!   that Prometheus and returns data: a query that returns nothing fails.
//!
//! Skipped without the stack unless CHEXVISION_REQUIRE_STACK=1 (make test, CI).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

mod common;
use chexvision_bus::{Bus, TopicSpec};
use chexvision_events::Body;
use common::{
    cli, free_port, http, repo_file, service_binary, stack, topic_env, topic_of, Deadline,
    Prometheus, Service, TopicReader,
};

/// Images sent to the served model, and how many come with a study reference.
const PREDICTIONS: usize = 110;
const WITH_STUDY: usize = 100;

/// scikit-learn's macro (over findings with both outcomes) and abnormal AUC.
fn sklearn(probabilities: &[Vec<f64>], labels: &[Vec<bool>]) -> (f64, f64) {
    let input = serde_json::json!({"p": probabilities, "y": labels}).to_string();
    let script = "import json,sys\nfrom sklearn.metrics import roc_auc_score\n\
                  d=json.load(sys.stdin); p=d['p']; y=d['y']\n\
                  col=lambda m,c:[r[c] for r in m]\n\
                  a=[roc_auc_score(col(y,c),col(p,c)) for c in range(14) if 0<sum(col(y,c))<len(y)]\n\
                  print(json.dumps([sum(a)/len(a), roc_auc_score(col(y,14),col(p,14))]))";
    // Required here: the test is the check.
    let value = common::python_json(script, &input, "scikit-learn")
        .expect("scikit-learn (make deps installs it)");
    let v: Vec<f64> = serde_json::from_value(value).unwrap();
    (v[0], v[1])
}

/// Every expression the dashboards and alert rules hold, as the
/// extractor gives them: (source, expression).
fn extracted_queries() -> Vec<(String, String)> {
    let output = Command::new("python3")
        .arg(repo_file("scripts/observability/queries.py"))
        .current_dir(repo_file(""))
        .output()
        .expect("run scripts/observability/queries.py");
    assert!(
        output.status.success(),
        "queries.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                format!(
                    "{} [{}]",
                    v["source"].as_str().unwrap(),
                    v["kind"].as_str().unwrap_or("")
                ),
                v["expr"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_query_returns_data_after_a_short_flow() {
    let Some(common::Stack { config, bucket }) = stack() else {
        return;
    };
    let Some(prometheus_bin) = common::prometheus_or_skip() else {
        return;
    };
    let unique = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let mut env = topic_env("obs", &unique, &common::TOPICS);
    env.push((
        "CHEXVISION_STORE".into(),
        format!("s3://{bucket}/e2e-obs-{unique}"),
    ));
    let topic = |name: &str| topic_of(&env, name);
    let bus: Arc<dyn Bus> = chexvision_bus::connect(&config.bus, &config.kafka).unwrap();
    bus.create_topics(
        &common::TOPICS
            .iter()
            .map(|t| {
                TopicSpec::new(
                    topic(t),
                    if *t == "DEAD_LETTER" {
                        1
                    } else {
                        config.kafka.partitions
                    },
                )
            })
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    let datasets = TopicReader::start(&bus, &topic("DATASETS")).await;
    let promotions = TopicReader::start(&bus, &topic("MODELS_PROMOTED")).await;
    let evaluations = TopicReader::start(&bus, &topic("EVALUATIONS")).await;
    let dead_letters = TopicReader::start(&bus, &topic("DEAD_LETTER")).await;

    // The images the hospital will send, with their truth.
    let source = tempfile::tempdir().unwrap();
    let source_path = source.path().display().to_string();
    cli(
        &env,
        &[
            "synth",
            "--rows",
            &PREDICTIONS.to_string(),
            "--size",
            "64",
            "--seed",
            "31",
            "--min-finding-share",
            "0.08",
            "--visible-at",
            "64",
            "--out",
            &source_path,
        ],
        None,
    );
    let table = std::fs::read_to_string(source.path().join("Data_Entry_2017_v2020.csv")).unwrap();
    let cases: Vec<(String, Vec<bool>)> = table
        .lines()
        .skip(1)
        .map(|line| {
            let mut fields = line.split(',');
            let name = fields.next().unwrap().to_owned();
            let findings: Vec<&str> = fields.next().unwrap().split('|').collect();
            let truth = chexvision_dataset::LABELS
                .iter()
                .map(|l| findings.contains(l))
                .collect();
            (name, truth)
        })
        .collect();
    assert_eq!(cases.len(), PREDICTIONS);

    // configs/tiny.yaml made smaller still.
    let configs = tempfile::tempdir().unwrap();
    std::fs::write(
        configs.path().join("e2e.yaml"),
        format!(
            "inherits: {}\nservice:\n  image_size: 64\n  recipe:\n    epochs: 2\n    batch_size: 16\n",
            repo_file("configs/tiny.yaml")
        ),
    )
    .unwrap();
    // The second model trains longer: likely better, so likely promoted
    // under the lenient policy below (either outcome is checked).
    std::fs::write(
        configs.path().join("e2e-longer.yaml"),
        format!(
            "inherits: {}\nservice:\n  recipe:\n    epochs: 6\n",
            configs.path().join("e2e.yaml").display()
        ),
    )
    .unwrap();

    // The five services, each with groups of its own.
    let with = |extra: &[(&str, String)]| {
        let mut e = env.clone();
        e.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        e
    };
    let start = |package: &str, variable: &str, config: &str, env: Vec<(String, String)>| {
        Service::start(
            &service_binary(package, variable),
            Path::new(&repo_file(config)),
            &env,
            package,
        )
    };
    let mut ingest = start(
        "chexvision-ingest",
        "CHEXVISION_INGEST_BIN",
        "configs/ingest.yaml",
        with(&[("CHEXVISION_SERVICE__GROUP", format!("obs-ingest-{unique}"))]),
    );
    let mut preprocess = start(
        "chexvision-preprocess",
        "CHEXVISION_PREPROCESS_BIN",
        "configs/preprocess.yaml",
        with(&[
            (
                "CHEXVISION_SERVICE__GROUP",
                format!("obs-preprocess-{unique}"),
            ),
            ("CHEXVISION_SERVICE__SIZE_PX", "64".into()),
        ]),
    );
    let configs_dir = configs.path().display().to_string();
    let mut trainer = start(
        "chexvision-trainer",
        "CHEXVISION_TRAINER_BIN",
        "configs/trainer.yaml",
        with(&[
            ("CHEXVISION_SERVICE__GROUP", format!("obs-trainer-{unique}")),
            ("CHEXVISION_SERVICE__CONFIGS_DIR", configs_dir.clone()),
            ("CHEXVISION_SERVICE__DEFAULT_CONFIG", "e2e".into()),
            ("CHEXVISION_SERVICE__DENSENET_CONFIG", "e2e".into()),
            ("CHEXVISION_SERVICE__SE_RESNET_CONFIG", "e2e".into()),
        ]),
    );
    let mut evaluator = start(
        "chexvision-evaluator",
        "CHEXVISION_EVALUATOR_BIN",
        "configs/evaluator.yaml",
        with(&[
            (
                "CHEXVISION_SERVICE__GROUP",
                format!("obs-evaluator-{unique}"),
            ),
            ("CHEXVISION_SERVICE__RESCAN_SECS", "1".into()),
            ("CHEXVISION_SERVICE__EVALUATION__PLOTS", "false".into()),
            (
                "CHEXVISION_SERVICE__MONITOR__GROUP",
                format!("obs-monitor-{unique}"),
            ),
            ("CHEXVISION_SERVICE__MONITOR__RECOMPUTE_SECS", "1".into()),
            // Lenient, so a better second model is swapped in under load.
            ("CHEXVISION_SERVICE__PROMOTION__MARGIN", "0".into()),
            ("CHEXVISION_SERVICE__PROMOTION__ALPHA", "0.5".into()),
            ("CHEXVISION_SERVICE__PROMOTION__MAX_CLASS_DROP", "1".into()),
        ]),
    );
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut inference = start(
        "chexvision-inference",
        "CHEXVISION_INFERENCE_BIN",
        "configs/inference.yaml",
        with(&[
            ("CHEXVISION_SERVICE__API__BIND", api.to_string()),
            ("CHEXVISION_SERVICE__MODEL__REGISTRY_POLL_SECS", "1".into()),
            (
                "CHEXVISION_SERVICE__MODEL__INSTANCE_ID",
                format!("obs-{unique}"),
            ),
        ]),
    );
    let prometheus = Prometheus::start(&prometheus_bin);
    let mut jobs = Vec::new();
    for service in [
        &mut ingest,
        &mut preprocess,
        &mut trainer,
        &mut evaluator,
        &mut inference,
    ] {
        jobs.push(service.http_address().await);
    }
    let names = [
        "chexvision-ingest",
        "chexvision-preprocess",
        "chexvision-trainer",
        "chexvision-evaluator",
        "chexvision-inference",
    ];
    prometheus.scrape_jobs(
        &names
            .iter()
            .copied()
            .zip(jobs.iter().copied())
            .collect::<Vec<_>>(),
    );

    // Ingest → prepare → train → evaluate → promote → serve.
    cli(
        &env,
        &["events", "send"],
        Some(
            r#"{"ingestRequested": {"requestId": "obs-ingest", "datasetId": "obs", "sourceFormat": "SOURCE_FORMAT_SYNTHETIC", "syntheticRows": 400, "syntheticSizePx": 64, "syntheticSeed": 7, "shardTargetRows": 100}}"#,
        ),
    );
    let deadline = Deadline::new("the dataset to be ready");
    while !datasets
        .events()
        .iter()
        .any(|(_, e)| matches!(e.body, Some(Body::DatasetReady(_))))
    {
        deadline
            .tick_every(&mut preprocess, Duration::from_millis(250))
            .await;
        ingest.assert_running();
    }
    cli(
        &env,
        &["events", "send"],
        Some(
            r#"{"trainingRequested": {"requestId": "obs-train", "datasetId": "obs", "config": "e2e", "reason": "observability e2e", "requestedBy": "tests"}}"#,
        ),
    );
    let deadline = Deadline::new("a promotion");
    let version = loop {
        let promoted = promotions
            .events()
            .into_iter()
            .find_map(|(_, e)| match e.body {
                Some(Body::ModelPromoted(p)) => Some(p.model_version),
                _ => None,
            });
        if let Some(version) = promoted {
            break version;
        }
        trainer.assert_running();
        deadline
            .tick_every(&mut evaluator, Duration::from_millis(500))
            .await;
    };
    let deadline = Deadline::new("the inference service to serve the promoted model");
    loop {
        let (status, body) = http(api, "GET", "/readyz", &[], b"");
        if status == 200 && String::from_utf8_lossy(&body).contains(&version) {
            break;
        }
        deadline
            .tick_every(&mut inference, Duration::from_millis(250))
            .await;
    }

    // The hospital sends its images; one with a deadline too short (504).
    let mut probabilities: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (i, (name, _)) in cases.iter().enumerate() {
        let image = std::fs::read(source.path().join("images").join(name)).unwrap();
        let request_id = format!("obs-{i}");
        let path = if i < WITH_STUDY {
            format!("/v1/predict?study_ref=OBS-{i}")
        } else {
            "/v1/predict".to_string()
        };
        let (status, body) = http(
            api,
            "POST",
            &path,
            &[("Content-Type", "image/png"), ("X-Request-Id", &request_id)],
            &image,
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["model"]["version"], version.as_str());
        let mut p: Vec<f64> = answer["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["probability"].as_f64().unwrap())
            .collect();
        p.push(answer["abnormal"]["probability"].as_f64().unwrap());
        probabilities.insert(request_id, p);
    }
    // Usually a 504 (a 5xx series for the error panels); a fast machine may
    // answer in time, which is no error either: the answer is not checked.
    let image = std::fs::read(source.path().join("images").join(&cases[0].0)).unwrap();
    http(
        api,
        "POST",
        "/v1/predict",
        &[
            ("Content-Type", "image/png"),
            ("X-Request-Deadline-Ms", "1"),
        ],
        &image,
    );

    // Their radiologists' readings: by study, by request id, one twice,
    // one for a request nobody made.
    let reading = |truth: &[bool]| -> serde_json::Value {
        chexvision_dataset::LABELS
            .iter()
            .zip(truth)
            .map(|(l, t)| ((*l).to_owned(), serde_json::Value::Bool(*t)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let send = |body: serde_json::Value| {
        let (status, answer) = http(
            api,
            "POST",
            "/v1/feedback",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
        assert_eq!(status, 202, "{}", String::from_utf8_lossy(&answer));
    };
    for (i, (_, truth)) in cases.iter().enumerate() {
        if i < WITH_STUDY {
            send(serde_json::json!({"study_ref": format!("OBS-{i}"), "findings": reading(truth)}));
        } else {
            send(serde_json::json!({"request_id": format!("obs-{i}"), "findings": reading(truth)}));
        }
    }
    send(serde_json::json!({"request_id": "obs-0-never", "findings": reading(&cases[0].1)}));
    send(serde_json::json!({"study_ref": "OBS-1", "findings": reading(&cases[1].1)}));

    // Prometheus reads the production AUC of what was sent.
    let samples = format!(
        "chexvision_production_samples{{model_version=\"{version}\",window=\"last_1000\"}}"
    );
    let deadline = Deadline::new("the production AUC of every confirmed prediction in Prometheus");
    while prometheus.query(&samples) != Some(PREDICTIONS as f64) {
        deadline
            .tick_every(&mut evaluator, Duration::from_millis(500))
            .await;
    }
    let labels: Vec<Vec<bool>> = cases
        .iter()
        .map(|(_, t)| {
            let mut l = t.clone();
            l.push(t.iter().any(|x| *x));
            l
        })
        .collect();
    let p: Vec<Vec<f64>> = (0..PREDICTIONS)
        .map(|i| probabilities[&format!("obs-{i}")].clone())
        .collect();
    let (macro_auc, binary_auc) = sklearn(&p, &labels);
    let read = |name: &str| {
        prometheus
            .query(&format!(
                "{name}{{model_version=\"{version}\",window=\"last_1000\"}}"
            ))
            .unwrap_or_else(|| panic!("{name} not in Prometheus"))
    };
    // The answers carry the probabilities as f64 from the same f32.
    assert!(
        (read("chexvision_production_macro_auc") - macro_auc).abs() < 1e-9,
        "macro: {} vs {macro_auc}",
        read("chexvision_production_macro_auc")
    );
    assert!(
        (read("chexvision_production_binary_auc") - binary_auc).abs() < 1e-9,
        "abnormal: {} vs {binary_auc}",
        read("chexvision_production_binary_auc")
    );
    assert!(
        read("chexvision_production_macro_auc_lower") <= macro_auc
            && macro_auc <= read("chexvision_production_macro_auc_upper")
    );

    // The reading for a request nobody made: retried, then dead-lettered.
    let deadline = Deadline::new("the unmatched feedback's dead letter");
    loop {
        let letter = dead_letters
            .events()
            .into_iter()
            .find_map(|(_, e)| match e.body {
                Some(Body::DeadLetter(d)) if d.source_topic == topic("FEEDBACK") => Some(d.error),
                _ => None,
            });
        if let Some(error) = letter {
            assert!(error.contains("obs-0-never"), "{error}");
            break;
        }
        deadline
            .tick_every(&mut evaluator, Duration::from_millis(500))
            .await;
    }

    // A second model, trained on a request through `chexvision events
    // send`, while the hospital keeps calling: not one failed request, and
    // once a client sees the new version it never sees the old one again.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let image = std::fs::read(source.path().join("images").join(&cases[2].0)).unwrap();
        std::thread::spawn(move || {
            let (mut versions, mut failures) = (Vec::new(), Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (status, body) = http(
                    api,
                    "POST",
                    "/v1/predict",
                    &[("Content-Type", "image/png")],
                    &image,
                );
                if status == 200 {
                    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let served = answer["model"]["version"].as_str().unwrap_or("").to_owned();
                    if versions.last() != Some(&served) {
                        versions.push(served);
                    }
                } else {
                    failures.push(format!("{status}: {}", String::from_utf8_lossy(&body)));
                }
            }
            (versions, failures)
        })
    };
    let requested = std::time::Instant::now();
    cli(
        &env,
        &["events", "send"],
        Some(
            r#"{"trainingRequested": {"requestId": "obs-train-2", "datasetId": "obs", "config": "e2e-longer", "reason": "a second model", "requestedBy": "tests"}}"#,
        ),
    );
    let deadline = Deadline::new("the second model's evaluation");
    let second = loop {
        let completed: Vec<chexvision_events::EvaluationCompleted> = evaluations
            .events()
            .into_iter()
            .filter_map(|(_, e)| match e.body {
                Some(Body::EvaluationCompleted(c)) => Some(c),
                _ => None,
            })
            .collect();
        if completed.len() >= 2 {
            break completed[1].clone();
        }
        trainer.assert_running();
        deadline
            .tick_every(&mut evaluator, Duration::from_millis(500))
            .await;
    };
    let new_version = promotions
        .events()
        .into_iter()
        .rev()
        .find_map(|(_, e)| match e.body {
            Some(Body::ModelPromoted(p)) if p.run_id == second.run_id => Some(p.model_version),
            _ => None,
        });
    if let Some(new_version) = &new_version {
        // Promoted: every replica swaps it in; the load generator sees it.
        let deadline = Deadline::new("the new version to be served");
        loop {
            let (_, body) = http(api, "GET", "/readyz", &[], b"");
            if String::from_utf8_lossy(&body).contains(new_version.as_str()) {
                break;
            }
            deadline
                .tick_every(&mut inference, Duration::from_millis(100))
                .await;
        }
        eprintln!(
            "TrainingRequested → {new_version} served: {:.1} s",
            requested.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    } else {
        eprintln!("the second model was refused by the promotion policy");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (versions, failures) = load.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests during the second model: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let expected: Vec<String> = std::iter::once(version.clone())
        .chain(new_version.clone())
        .collect();
    assert_eq!(
        versions, expected,
        "served versions in the order the load generator saw them"
    );
    if let Some(new_version) = &new_version {
        // Readings for the new version too: production AUC is per version.
        const SECOND: usize = 40;
        for (i, (name, truth)) in cases.iter().enumerate().take(SECOND) {
            let image = std::fs::read(source.path().join("images").join(name)).unwrap();
            let request_id = format!("obs2-{i}");
            let (status, _) = http(
                api,
                "POST",
                "/v1/predict",
                &[("Content-Type", "image/png"), ("X-Request-Id", &request_id)],
                &image,
            );
            assert_eq!(status, 200);
            send(serde_json::json!({"request_id": request_id, "findings": reading(truth)}));
        }
        let samples = format!(
            "chexvision_production_samples{{model_version=\"{new_version}\",window=\"last_1000\"}}"
        );
        let deadline = Deadline::new("the new version's production AUC in Prometheus");
        while prometheus.query(&samples) != Some(SECOND as f64) {
            deadline
                .tick_every(&mut evaluator, Duration::from_millis(500))
                .await;
        }
    }

    // Let every service be scraped after the flow, then run every query.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let queries = extracted_queries();
    assert!(
        queries.len() > 50,
        "only {} queries extracted",
        queries.len()
    );
    let mut empty = Vec::new();
    for (source, expr) in &queries {
        let answer = prometheus.query_json(expr);
        if answer["status"] != "success" {
            empty.push(format!("{source}: {expr}\n    error: {}", answer["error"]));
            continue;
        }
        let result = &answer["data"]["result"];
        let has_data = match answer["data"]["resultType"].as_str() {
            Some("vector") | Some("matrix") => result.as_array().is_some_and(|r| !r.is_empty()),
            Some("scalar") | Some("string") => true,
            _ => false,
        };
        if !has_data {
            empty.push(format!("{source}: {expr}"));
        }
    }
    for service in [
        &mut ingest,
        &mut preprocess,
        &mut trainer,
        &mut evaluator,
        &mut inference,
    ] {
        service.assert_running();
    }
    eprintln!(
        "{} queries run against Prometheus; production macro AUC {macro_auc:.4}, abnormal {binary_auc:.4} (scikit-learn, {PREDICTIONS} pairs)",
        queries.len()
    );
    assert!(
        empty.is_empty(),
        "{} of {} queries returned no data:\n{}",
        empty.len(),
        queries.len(),
        empty.join("\n")
    );
}
