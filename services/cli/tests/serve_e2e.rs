//! The inference service end to end against the local stack (a
//! Kafka-protocol broker and an S3 server), as a child process, with the
//! registry poll off so promotions reach it only through Kafka:
//!
//! * it starts from the registry's production model (in S3) and answers;
//! * `chexvision registry promote` of a second model → `ModelPromoted` on
//!   Kafka → swapped in while a client keeps predicting: no request fails;
//! * a promoted checkpoint changed in S3 after registration → not loaded,
//!   its event in the dead-letter topic with the reason, the old model
//!   still serving and the service still ready;
//! * `chexvision registry rollback` to the serving model → nothing to do;
//! * SIGTERM → a clean exit.
//!
//! Skipped without the stack unless CHEXVISION_REQUIRE_STACK=1 (make test, CI).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;
use bytes::Bytes;
use chexvision_bus::Bus;
use chexvision_events::Body;
use chexvision_registry::{
    CheckpointRef, EvaluationRef, MetricsSummary, ModelRecord, Registry, SCHEMA_VERSION,
};
use chexvision_store::{ObjectStore, S3Store};
use common::{
    cli, free_port, repo_file, service_binary, stack, topic_env, topic_of, Deadline, Service,
    TopicReader,
};

/// One HTTP/1.1 request on a fresh connection: (status, body).
fn try_http(
    address: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let bad = || std::io::Error::other("not an HTTP answer");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, response[split + 4..].to_vec()))
}

fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    try_http(address, method, path, content_type, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

/// An untrained tiny model from the CLI, uploaded and registered.
async fn register(
    env: &[(String, String)],
    store: &Arc<dyn ObjectStore>,
    run_id: &str,
    seed: u64,
    tamper: bool,
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    cli(
        env,
        &[
            "model",
            "init",
            "--architecture",
            "tiny-densenet",
            "--input-size",
            "32",
            "--seed",
            &seed.to_string(),
            "--run-id",
            run_id,
            "--out",
            &file.display().to_string(),
        ],
        None,
    );
    let bytes = std::fs::read(&file).unwrap();
    let sha256 = chexvision_store::sha256_hex(&bytes);
    let mut stored = bytes.clone();
    if tamper {
        let n = stored.len();
        stored[n - 64] ^= 0x01;
    }
    let key = format!("runs/{run_id}/checkpoints/best.safetensors");
    store.put(&key, Bytes::from(stored)).await.unwrap();
    let version = chexvision_registry::version_of(run_id, &sha256);
    let thresholds: BTreeMap<String, f64> = chexvision_dataset::LABELS
        .iter()
        .copied()
        .chain(["abnormal"])
        .map(|n| (n.to_string(), 0.4))
        .collect();
    let record = ModelRecord {
        schema_version: SCHEMA_VERSION,
        version: version.clone(),
        run_id: run_id.into(),
        checkpoint: CheckpointRef {
            uri: store.uri(&key),
            key,
            sha256,
            size_bytes: bytes.len() as u64,
        },
        model_kind: "densenet".into(),
        image_size_px: 32,
        dataset_id: "e2e".into(),
        synthetic: true,
        evaluation: EvaluationRef {
            report_key: String::new(),
            predictions_key: String::new(),
            split: "test".into(),
            images: 0,
            dataset_manifest_sha256: String::new(),
        },
        metrics: MetricsSummary {
            macro_auc: Some(0.5),
            macro_auc_interval: None,
            per_class_auc: BTreeMap::new(),
            binary_auc: None,
            ece: None,
        },
        thresholds,
        threshold_rule: "max_f1".into(),
        created_at_unix_ms: 0,
    };
    Registry::new(store.clone(), "e2e")
        .register(&record)
        .await
        .unwrap();
    version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_production_follows_kafka_promotions_and_refuses_a_tampered_model() {
    let Some(common::Stack { config, bucket }) = stack() else {
        return;
    };
    let unique = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let prefix = format!("e2e-serve-{unique}");
    let store: Arc<dyn ObjectStore> =
        Arc::new(S3Store::connect(&bucket, &prefix, &config.s3).unwrap());
    let mut env = topic_env("serve", &unique, &["MODELS_PROMOTED", "DEAD_LETTER"]);
    env.push(("CHEXVISION_STORE".into(), format!("s3://{bucket}/{prefix}")));
    cli(&env, &["topics", "create"], None);
    let bus: Arc<dyn Bus> = chexvision_bus::connect(&config.bus, &config.kafka).unwrap();
    let dead_letters = TopicReader::start(&bus, &topic_of(&env, "DEAD_LETTER")).await;

    let first = register(&env, &store, "serve-a", 1, false).await;
    cli(
        &env,
        &["registry", "promote", &first, "--reason", "e2e: first"],
        None,
    );

    let port = free_port();
    let api: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut service_env = env.clone();
    service_env.extend([
        ("CHEXVISION_SERVICE__API__BIND".to_string(), api.to_string()),
        (
            "CHEXVISION_SERVICE__MODEL__REGISTRY_POLL_SECS".to_string(),
            "0".to_string(),
        ),
        (
            "CHEXVISION_SERVICE__MODEL__INSTANCE_ID".to_string(),
            format!("e2e-{unique}"),
        ),
    ]);
    let binary = service_binary("chexvision-inference", "CHEXVISION_INFERENCE_BIN");
    let config_file = repo_file("configs/inference.yaml");
    let mut service = Service::start(
        &binary,
        std::path::Path::new(&config_file),
        &service_env,
        "inference",
    );
    let deadline = Deadline::new("the production model loaded");
    while try_http(api, "GET", "/readyz", "text/plain", b"")
        .map(|r| r.0)
        .ok()
        != Some(200)
    {
        deadline.tick(&mut service).await;
    }
    let image = std::fs::read(repo_file("shared/vision/tests/fixtures/xray_a.png")).unwrap();
    let (status, body) = http(api, "POST", "/v1/predict", "image/png", &image);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["model"]["version"], first.as_str());
    assert_eq!(
        json(&body)["findings"][0]["threshold"],
        0.4,
        "thresholds from the S3 record"
    );

    // A client predicts throughout the promotion.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        let image = image.clone();
        std::thread::spawn(move || {
            let mut versions = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let (status, body) = http(api, "POST", "/v1/predict", "image/png", &image);
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                versions.push(
                    json(&body)["model"]["version"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            versions
        })
    };
    let second = register(&env, &store, "serve-b", 2, false).await;
    cli(
        &env,
        &["registry", "promote", &second, "--reason", "e2e: second"],
        None,
    );
    let serving = || {
        json(&http(api, "GET", "/v1/models", "text/plain", b"").1)["models"][0]["version"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let deadline = Deadline::new("the promoted model swapped in through Kafka");
    while serving() != second {
        deadline.tick(&mut service).await;
    }
    let (status, body) = http(api, "POST", "/v1/predict", "image/png", &image);
    assert_eq!(
        (status, json(&body)["model"]["version"].clone()),
        (200, second.clone().into())
    );
    stop.store(true, Ordering::SeqCst);
    let versions = client.join().unwrap();
    assert!(!versions.is_empty());
    let switched = versions
        .iter()
        .position(|v| v == &second)
        .unwrap_or(versions.len());
    assert!(
        versions[..switched].iter().all(|v| v == &first)
            && versions[switched..].iter().all(|v| v == &second),
        "{versions:?}"
    );

    // A checkpoint changed in S3 after it was registered.
    let tampered = register(&env, &store, "serve-t", 3, true).await;
    cli(
        &env,
        &[
            "registry",
            "promote",
            &tampered,
            "--reason",
            "e2e: tampered",
        ],
        None,
    );
    let deadline = Deadline::new("the tampered promotion dead-lettered");
    while dead_letters.is_empty() {
        deadline.tick(&mut service).await;
    }
    let letter = format!("{:?}", dead_letters.events()[0].1.body);
    assert!(
        letter.contains(&tampered) && letter.contains("sha256"),
        "{letter}"
    );
    assert_eq!(serving(), second);
    assert_eq!(http(api, "GET", "/readyz", "text/plain", b"").0, 200);
    let metrics =
        String::from_utf8_lossy(&http(api, "GET", "/metrics", "text/plain", b"").1).to_string();
    assert!(
        metrics.contains("chexvision_inference_model_swap_failures_total{reason=\"checkpoint\"} 1"),
        "{metrics}"
    );

    // Rolled back to the model that serves: nothing to load.
    cli(
        &env,
        &[
            "registry",
            "rollback",
            "--to",
            &second,
            "--reason",
            "e2e: back",
        ],
        None,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(serving(), second);
    // The rollback's event changed nothing and is not a dead letter.
    let letters = dead_letters.events();
    assert_eq!(letters.len(), 1);
    assert!(matches!(letters[0].1.body, Some(Body::DeadLetter(_))));

    let status = service.terminate();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        service.log_tail(30)
    );
}
