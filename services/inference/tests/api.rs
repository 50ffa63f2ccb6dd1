//! The inference API on a loopback port: predictions as the model computes
//! them, FHIR, batches, the Open Inference Protocol, auth, limits and the
//! table of bad requests.

mod common;

use base64::Engine;
use bytes::Bytes;
use chexvision_dataset::LABELS;
use chexvision_inference::core::model::{LoadedModel, ModelOrigin};
use chexvision_inference::core::preprocess::{decode, prepare};
use chexvision_inference::router::hash_key;
use chexvision_inference::settings::{ApiKey, PreprocessSettings, Scope};
use chexvision_vision::DecodeLimits;
use common::*;

const PREDICT_KEY: &str = "predict-key-0123456789";
const ADMIN_KEY: &str = "admin-key-9876543210";
const FEEDBACK_KEY: &str = "feedback-key-5555555555";

fn keyed_settings() -> chexvision_inference::InferenceSettings {
    let mut s = settings();
    s.api.keys = vec![
        ApiKey {
            name: "ris".into(),
            sha256: hash_key(PREDICT_KEY),
            scope: Scope::Predict,
        },
        ApiKey {
            name: "ops".into(),
            sha256: hash_key(ADMIN_KEY),
            scope: Scope::Admin,
        },
        ApiKey {
            name: "reporting".into(),
            sha256: hash_key(FEEDBACK_KEY),
            scope: Scope::Feedback,
        },
    ];
    s.api.max_body_bytes = 256 * 1024;
    s.api.max_image_pixels = 1_000_000;
    s.api.max_batch_images = 4;
    s
}

/// What the model computes for `bytes`, outside the service.
fn expected(checkpoint: &[u8], bytes: &[u8], tta: bool) -> Vec<f32> {
    let model = LoadedModel::load(checkpoint, &ModelOrigin::default()).unwrap();
    let decoded = decode(bytes, &DecodeLimits::default()).unwrap();
    let prepared = prepare(
        &decoded.image,
        SIZE as u32,
        &PreprocessSettings::default(),
        tta,
    )
    .unwrap();
    let n = prepared.views.len();
    let p = model.probabilities(prepared.views.concat(), n).unwrap();
    (0..15)
        .map(|c| (0..n).map(|v| p[v * 15 + c]).sum::<f32>() / n as f32)
        .collect()
}

/// The checkpoint bytes a test run registered.
async fn stored_checkpoint(server: &TestServer, run_id: &str) -> Vec<u8> {
    server
        .store
        .get(&format!("runs/{run_id}/checkpoints/best.safetensors"))
        .await
        .unwrap()
        .to_vec()
}

fn probabilities(answer: &serde_json::Value) -> Vec<f32> {
    let mut p: Vec<f32> = answer["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["probability"].as_f64().unwrap() as f32)
        .collect();
    p.push(answer["abnormal"]["probability"].as_f64().unwrap() as f32);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prediction_is_what_the_model_computes_with_the_registry_thresholds() {
    let server = TestServer::start(settings(), true).await;
    let image = png(300, 260, 1);
    let answer = send(
        "POST",
        &server.url("/v1/predict"),
        &[("content-type", "image/png")],
        image.clone(),
    )
    .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let v = answer.json();
    assert_eq!(answer.header("x-request-id"), v["request_id"].as_str());

    // The model that computed it, from the registry.
    let checkpoint = stored_checkpoint(&server, "run-a").await;
    let sha = chexvision_store::sha256_hex(&checkpoint);
    assert_eq!(
        v["model"]["version"],
        chexvision_registry::version_of("run-a", &sha)
    );
    assert_eq!(v["model"]["architecture"], "densenet");
    assert_eq!(v["model"]["synthetic"], true);
    assert_eq!(v["model"]["input_size"], SIZE);
    assert_eq!(v["model"]["thresholds_source"], "registry");

    // 14 findings in order, thresholds from the record, decisions at them.
    let names: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, LABELS);
    let thresholds = thresholds();
    for f in v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&v["abnormal"]])
    {
        let name = f["name"].as_str().unwrap_or("abnormal");
        let t = f["threshold"].as_f64().unwrap();
        assert!((t - thresholds[name]).abs() < 1e-12, "{name}: {t}");
        assert_eq!(
            f["positive"].as_bool().unwrap(),
            f["probability"].as_f64().unwrap() >= t
        );
    }

    // The same numbers as the model outside the service.
    let want = expected(&checkpoint, &image, false);
    for (got, want) in probabilities(&v).iter().zip(&want) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    let timings = &v["timings_ms"];
    for stage in ["decode", "preprocess", "inference", "total"] {
        assert!(timings[stage].as_f64().unwrap() > 0.0, "{stage}: {timings}");
    }
    let warnings = v["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("synthetic")),
        "{warnings:?}"
    );
    assert!(v.get("heatmap").is_none());

    // Test-time augmentation: the mean over the four views.
    let answer = send(
        "POST",
        &server.url("/v1/predict?tta=true"),
        &[("content-type", "image/png")],
        image.clone(),
    )
    .await;
    assert_eq!(answer.status, 200);
    let want = expected(&checkpoint, &image, true);
    let got = probabilities(&answer.json());
    for (got, want) in got.iter().zip(&want) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    // A Grad-CAM overlay for a named finding and for the top one.
    let answer = send(
        "POST",
        &server.url("/v1/predict?heatmap=Effusion"),
        &[("content-type", "image/png")],
        image.clone(),
    )
    .await;
    let v = answer.json();
    assert_eq!(v["heatmap"]["finding"], "Effusion");
    let png_bytes = base64::engine::general_purpose::STANDARD
        .decode(v["heatmap"]["png_base64"].as_str().unwrap())
        .unwrap();
    let decoded = chexvision_vision::decode_gray8(&png_bytes, &DecodeLimits::default()).unwrap();
    assert_eq!((decoded.width, decoded.height), (SIZE as u32, SIZE as u32));
    let answer = send(
        "POST",
        &server.url("/v1/predict?heatmap=top"),
        &[("content-type", "image/png")],
        image.clone(),
    )
    .await;
    let v = answer.json();
    let top = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .max_by(|a, b| {
            a["probability"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["probability"].as_f64().unwrap())
        })
        .unwrap()["name"]
        .clone();
    assert_eq!(v["heatmap"]["finding"], top);

    // Multipart, as a browser form sends it: the same answer.
    let mut body = b"--XBOUNDARYX\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
    body.extend_from_slice(&image);
    body.extend_from_slice(b"\r\n--XBOUNDARYX--\r\n");
    let answer = send(
        "POST",
        &server.url("/v1/predict"),
        &[("content-type", "multipart/form-data; boundary=XBOUNDARYX")],
        body,
    )
    .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let got = probabilities(&answer.json());
    let want = expected(&checkpoint, &image, false);
    assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-6));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dicom_view_attributes_become_warnings_and_fhir_carries_the_same_findings() {
    let server = TestServer::start(settings(), true).await;
    let lateral = dicom(96, "LL", EXPLICIT_LE);
    let answer = send(
        "POST",
        &server.url("/v1/predict"),
        &[("content-type", "application/dicom")],
        lateral,
    )
    .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let v = answer.json();
    let warnings: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings.iter().any(|w| w.contains("View Position is LL")),
        "{warnings:?}"
    );
    let frontal = dicom(96, "PA", EXPLICIT_LE);
    let answer = send(
        "POST",
        &server.url("/v1/predict"),
        &[("content-type", "application/dicom")],
        frontal.clone(),
    )
    .await;
    let json = answer.json();
    assert!(!json["warnings"].to_string().contains("View Position"));

    let answer = send(
        "POST",
        &server.url("/v1/predict"),
        &[
            ("content-type", "application/dicom"),
            ("accept", "application/fhir+json"),
        ],
        frontal,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(answer
        .header("content-type")
        .unwrap()
        .starts_with("application/fhir+json"));
    let report = answer.json();
    assert_eq!(report["resourceType"], "DiagnosticReport");
    assert_eq!(report["status"], "preliminary");
    let observations: Vec<&serde_json::Value> = report["contained"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["resourceType"] == "Observation")
        .collect();
    assert_eq!(observations.len(), 14);
    assert_eq!(report["result"].as_array().unwrap().len(), 14);
    for (o, f) in observations
        .iter()
        .zip(json["findings"].as_array().unwrap())
    {
        assert_eq!(o["code"]["coding"][0]["code"], f["name"]);
        let p = o["valueQuantity"]["value"].as_f64().unwrap();
        assert!((p - f["probability"].as_f64().unwrap()).abs() < 1e-5);
        let code = o["interpretation"][0]["coding"][0]["code"]
            .as_str()
            .unwrap();
        assert_eq!(
            code,
            if f["positive"].as_bool().unwrap() {
                "POS"
            } else {
                "NEG"
            }
        );
        assert_eq!(o["device"]["reference"], "#model");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_image_and_one_bad_image_fails_only_itself() {
    let server = TestServer::start(settings(), true).await;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let good = png(200, 200, 2);
    let body = serde_json::json!({"images": [
        {"id": "a", "data": b64(&good)},
        {"id": "b", "data": b64(&good[..good.len() / 2])},
        {"id": "c", "data": b64(&png(120, 160, 3))},
    ]});
    let answer = send(
        "POST",
        &server.url("/v1/predict/batch"),
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let v = answer.json();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["id"], "a");
    assert!(results[0]["prediction"]["findings"].is_array());
    assert_eq!(
        results[1]["error"]["code"], "undecodable_image",
        "{}",
        results[1]
    );
    assert!(results[2]["prediction"]["findings"].is_array());
    // Multipart: one file part per image.
    let mut body = Vec::new();
    for (i, img) in [good.clone(), png(64, 64, 4)].iter().enumerate() {
        body.extend_from_slice(format!("--b0undary\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}.png\"\r\n\r\n").as_bytes());
        body.extend_from_slice(img);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--b0undary--\r\n");
    let answer = send(
        "POST",
        &server.url("/v1/predict/batch"),
        &[("content-type", "multipart/form-data; boundary=b0undary")],
        body,
    )
    .await;
    let v = answer.json();
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
    assert_eq!(v["results"][1]["id"], "1.png");
    server.stop().await;
}

/// The binary tensor extension, as Triton's client sends it.
fn binary_infer_body(images: &[&[u8]], binary_out: bool) -> (Vec<u8>, usize) {
    let mut raw = Vec::new();
    for image in images {
        raw.extend_from_slice(&(image.len() as u32).to_le_bytes());
        raw.extend_from_slice(image);
    }
    let outputs = if binary_out {
        serde_json::json!([{"name": "findings", "parameters": {"binary_data": true}}, {"name": "abnormal", "parameters": {"binary_data": true}}])
    } else {
        serde_json::json!([{"name": "findings"}, {"name": "abnormal"}])
    };
    let header = serde_json::json!({
        "inputs": [{"name": "image", "shape": [images.len()], "datatype": "BYTES", "parameters": {"binary_data_size": raw.len()}}],
        "outputs": outputs,
    })
    .to_string();
    let mut body = header.as_bytes().to_vec();
    body.extend_from_slice(&raw);
    (body, header.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_inference_protocol_answers_json_and_binary_tensors() {
    let server = TestServer::start(settings(), true).await;
    assert_eq!(get(&server.url("/v2/health/live")).await.status, 200);
    assert_eq!(get(&server.url("/v2/health/ready")).await.status, 200);
    assert_eq!(
        get(&server.url("/v2/models/chexvision/ready")).await.status,
        200
    );
    let meta = get(&server.url("/v2/models/chexvision")).await.json();
    assert_eq!(meta["inputs"][0]["name"], "image");
    assert_eq!(
        meta["inputs"][1]["shape"],
        serde_json::json!([-1, 3, SIZE, SIZE])
    );
    assert_eq!(meta["outputs"][0]["shape"], serde_json::json!([-1, 14]));
    assert_eq!(get(&server.url("/v2/models/other")).await.status, 404);
    let version = meta["versions"][0].as_str().unwrap().to_string();
    let url = server.url(&format!("/v2/models/chexvision/versions/{version}/ready"));
    assert_eq!(get(&url).await.status, 200);
    let unknown = get(&server.url("/v2/models/chexvision/versions/0/ready")).await;
    assert_eq!(
        (unknown.status, unknown.code().as_str()),
        (404, "model_not_found")
    );

    let a = png(128, 128, 5);
    let b = png(90, 150, 6);
    let (body, header) = binary_infer_body(&[&a, &b], false);
    let answer = send(
        "POST",
        &server.url("/v2/models/chexvision/infer"),
        &[("inference-header-content-length", &header.to_string())],
        body,
    )
    .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let v = answer.json();
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([2, 14]));
    let json_findings: Vec<f32> = v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let want = expected(&stored_checkpoint(&server, "run-a").await, &b, false);
    assert!(json_findings[14..]
        .iter()
        .zip(&want[..14])
        .all(|(g, w)| (g - w).abs() < 1e-6));

    // Binary outputs: the JSON header, then little-endian float32.
    let (body, header) = binary_infer_body(&[&a, &b], true);
    let answer = send(
        "POST",
        &server.url("/v2/models/chexvision/infer"),
        &[("inference-header-content-length", &header.to_string())],
        body,
    )
    .await;
    assert_eq!(answer.status, 200);
    let n: usize = answer
        .header("inference-header-content-length")
        .unwrap()
        .parse()
        .unwrap();
    let head: serde_json::Value = serde_json::from_slice(&answer.body[..n]).unwrap();
    assert_eq!(
        head["outputs"][0]["parameters"]["binary_data_size"],
        2 * 14 * 4
    );
    let floats: Vec<f32> = answer.body[n..n + 2 * 14 * 4]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(floats, json_findings);

    // A preprocessed tensor in JSON.
    let pixels = vec![0.0f32; 3 * SIZE * SIZE];
    let body = serde_json::json!({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, SIZE, SIZE], "data": pixels}]});
    let answer = send(
        "POST",
        &server.url("/v2/models/chexvision/infer"),
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        answer.json()["outputs"][1]["shape"],
        serde_json::json!([1, 1])
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_checked_by_scope_and_admin_reload_swaps_without_changing_readiness() {
    let server = TestServer::start(keyed_settings(), true).await;
    let image = png(100, 100, 7);
    let predict = |key: Option<&'static str>| {
        let url = server.url("/v1/predict");
        let image = image.clone();
        async move {
            let auth = key.map(|k| format!("Bearer {k}"));
            let mut headers = vec![("content-type", "image/png")];
            if let Some(a) = &auth {
                headers.push(("authorization", a.as_str()));
            }
            send("POST", &url, &headers, image).await
        }
    };
    assert_eq!(predict(None).await.status, 401);
    assert_eq!(predict(Some("wrong")).await.status, 401);
    assert_eq!(predict(Some(PREDICT_KEY)).await.status, 200);
    assert_eq!(predict(Some(ADMIN_KEY)).await.status, 200);
    // Health, metrics, the page and the document need no key.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
        "/openapi.json",
        "/v2/health/ready",
    ] {
        assert_eq!(get(&server.url(path)).await.status, 200, "{path}");
    }

    let reload = |key: &'static str, body: String| {
        let url = server.url("/v1/admin/reload");
        async move {
            let auth = format!("Bearer {key}");
            send(
                "POST",
                &url,
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
        }
    };
    let answer = reload(PREDICT_KEY, String::new()).await;
    assert_eq!((answer.status, answer.code().as_str()), (403, "forbidden"));
    // A new production model, loaded on an admin's reload.
    let version = promote(&server.store, "run-b", 2).await;
    let answer = reload(ADMIN_KEY, String::new()).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["version"], version.as_str());
    assert_eq!(answer.json()["outcome"], "swapped");
    assert_eq!(
        predict(Some(PREDICT_KEY)).await.json()["model"]["version"],
        version.as_str()
    );
    // The one before stays loaded and can be pinned.
    let models = send(
        "GET",
        &server.url("/v1/models"),
        &[("authorization", &format!("Bearer {PREDICT_KEY}"))],
        Bytes::new(),
    )
    .await
    .json();
    let loaded = models["models"].as_array().unwrap();
    assert_eq!(loaded.len(), 2);
    let old = loaded[1]["version"].as_str().unwrap().to_string();
    let answer = send(
        "POST",
        &server.url(&format!("/v1/predict?model={old}")),
        &[
            ("content-type", "image/png"),
            ("authorization", &format!("Bearer {PREDICT_KEY}")),
        ],
        image.clone(),
    )
    .await;
    assert_eq!(answer.json()["model"]["version"], old.as_str());
    // A checkpoint that fails to load: the serving model stays, readiness too.
    let answer = reload(
        ADMIN_KEY,
        serde_json::json!({"checkpoint": "runs/nowhere/best.safetensors"}).to_string(),
    )
    .await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (422, "model_load_failed")
    );
    assert_eq!(get(&server.url("/readyz")).await.status, 200);
    assert_eq!(
        predict(Some(PREDICT_KEY)).await.json()["model"]["version"],
        version.as_str()
    );
    let metrics = get(&server.url("/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("chexvision_inference_model_swap_failures_total{reason=\"checkpoint\"} 1"),
        "{text}"
    );
    assert!(text.contains(&format!("chexvision_inference_model_info{{architecture=\"densenet\",synthetic=\"true\",version=\"{version}\"}} 1")));
    // Drift gauges, stages, batches and requests by route and status.
    for line in [
        "chexvision_inference_finding_probability_mean{finding=\"Atelectasis\"}",
        "chexvision_inference_finding_positive_rate{finding=\"abnormal\"}",
        "chexvision_inference_stage_duration_seconds_count{stage=\"decode\"}",
        "chexvision_inference_stage_duration_seconds_count{stage=\"inference\"}",
        "chexvision_inference_batch_size_count",
        "chexvision_inference_requests_total{route=\"/v1/predict\",status=\"401\"} 2",
        "chexvision_inference_request_duration_seconds_count{route=\"/v1/predict\"}",
        "chexvision_inference_rejected_total{reason=\"forbidden\"} 1",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_model_the_service_is_alive_not_ready_and_says_so() {
    let server = TestServer::start(settings(), false).await;
    assert_eq!(get(&server.url("/healthz")).await.status, 200);
    assert_eq!(get(&server.url("/v2/health/live")).await.status, 200);
    assert_eq!(get(&server.url("/readyz")).await.status, 503);
    assert_eq!(get(&server.url("/v2/health/ready")).await.status, 503);
    let answer = send(
        "POST",
        &server.url("/v1/predict"),
        &[("content-type", "image/png")],
        png(64, 64, 1),
    )
    .await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (503, "model_not_ready")
    );
    assert_eq!(answer.header("retry-after"), Some("5"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_a_passed_deadline_504() {
    let mut s = settings();
    s.queue.capacity = 4;
    let server = TestServer::start(s, true).await;
    // Every slot taken (as four images in flight would): refused at once.
    let held = server.state.core.reserve(4).unwrap();
    let answer = send(
        "POST",
        &server.url("/v1/predict"),
        &[("content-type", "image/png")],
        png(64, 64, 1),
    )
    .await;
    assert_eq!((answer.status, answer.code().as_str()), (429, "queue_full"));
    assert_eq!(answer.header("retry-after"), Some("1"));
    drop(held);
    let answer = send(
        "POST",
        &server.url("/v1/predict"),
        &[("content-type", "image/png")],
        png(64, 64, 1),
    )
    .await;
    assert_eq!(answer.status, 200);
    // A 2048 px image cannot be decoded and prepared in 1 ms.
    let big = png(2048, 2048, 3);
    let answer = send(
        "POST",
        &server.url("/v1/predict"),
        &[
            ("content-type", "image/png"),
            ("x-request-deadline-ms", "1"),
        ],
        big,
    )
    .await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (504, "deadline_exceeded")
    );
    let metrics = String::from_utf8_lossy(&get(&server.url("/metrics")).await.body).to_string();
    assert!(
        metrics.contains("chexvision_inference_rejected_total{reason=\"queue_full\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chexvision_inference_queue_depth 0"),
        "{metrics}"
    );
    server.stop().await;
}

/// A PNG whose header declares `width` × `height` over a tiny body.
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&ihdr);
    let crc = crc32(&ihdr);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A JPEG SOF0 header declaring `width` × `height`, without scan data.
fn jpeg_bomb(width: u16, height: u16) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 0x08];
    out.extend_from_slice(&height.to_be_bytes());
    out.extend_from_slice(&width.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x01, 0x11, 0x00]);
    // A scan of a few bytes, then the end: 4 KB that declare 3.6 gigapixels.
    out.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00]);
    out.extend_from_slice(&[0u8; 4000]);
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_status_and_code_and_the_service_stays_up() {
    let server = TestServer::start(keyed_settings(), true).await;
    let key = format!("Bearer {PREDICT_KEY}");
    let good = png(120, 120, 9);
    let jpeg = {
        let img = image::GrayImage::from_fn(64, 64, |x, y| image::Luma([(x * 3 + y) as u8]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    };
    let multipart = |body: &str| body.replace('\n', "\r\n").into_bytes();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut lying = dicom(64, "PA", EXPLICIT_LE);
    // The Pixel Data's declared length: far more than the file holds.
    let at = lying.len() - 64 * 64 - 4;
    lying[at..at + 4].copy_from_slice(&0x7FFF_0000u32.to_le_bytes());
    let oip_header = |json: &str| (json.len().to_string(), json.as_bytes().to_vec());

    struct Case {
        name: &'static str,
        method: &'static str,
        path: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        status: u16,
        code: &'static str,
    }
    let auth = || vec![("authorization".to_string(), key.clone())];
    let with = |ct: &str| {
        let mut h = auth();
        h.push(("content-type".to_string(), ct.to_string()));
        h
    };
    let case = |name, path: &str, headers, body: Vec<u8>, status, code| Case {
        name,
        method: "POST",
        path: path.to_string(),
        headers,
        body,
        status,
        code,
    };
    let (oip_len, oip_truncated) = oip_header(
        r#"{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":5000}}]}"#,
    );
    let cases = vec![
        case("no key", "/v1/predict", vec![("content-type".into(), "image/png".into())], good.clone(), 401, "unauthorized"),
        case("unknown key", "/v1/predict", vec![("content-type".into(), "image/png".into()), ("authorization".into(), "Bearer nope".into())], good.clone(), 401, "unauthorized"),
        case("not a bearer key", "/v1/predict", vec![("content-type".into(), "image/png".into()), ("authorization".into(), format!("Basic {PREDICT_KEY}"))], good.clone(), 401, "unauthorized"),
        case("predict key on admin route", "/v1/admin/reload", auth(), Vec::new(), 403, "forbidden"),
        case("empty body", "/v1/predict", with("image/png"), Vec::new(), 400, "empty_body"),
        case("no content type", "/v1/predict", auth(), good.clone(), 415, "unsupported_media_type"),
        case("text/plain", "/v1/predict", with("text/plain"), good.clone(), 415, "unsupported_media_type"),
        case("json to predict", "/v1/predict", with("application/json"), b"{}".to_vec(), 415, "unsupported_media_type"),
        case("form-urlencoded", "/v1/predict", with("application/x-www-form-urlencoded"), b"a=b".to_vec(), 415, "unsupported_media_type"),
        case("oversized body", "/v1/predict", with("image/png"), vec![0u8; 300 * 1024], 413, "payload_too_large"),
        case("truncated png", "/v1/predict", with("image/png"), good[..good.len() / 2].to_vec(), 422, "undecodable_image"),
        case("corrupt png", "/v1/predict", with("image/png"), { let mut b = good.clone(); for x in b[40..80].iter_mut() { *x ^= 0x5A; } b }, 422, "undecodable_image"),
        case("png bomb", "/v1/predict", with("image/png"), png_bomb(60_000, 60_000), 422, "image_too_large"),
        case("jpeg bomb", "/v1/predict", with("image/jpeg"), jpeg_bomb(60_000, 60_000), 422, "image_too_large"),
        case("truncated jpeg", "/v1/predict", with("image/jpeg"), jpeg[..jpeg.len() / 2].to_vec(), 422, "undecodable_image"),
        case("not an image", "/v1/predict", with("image/png"), b"GIF89a this is not a png at all".to_vec(), 422, "unsupported_image"),
        case("dicom htj2k", "/v1/predict", with("application/dicom"), dicom(64, "PA", HTJ2K), 422, "unsupported_image"),
        case("dicom lying length", "/v1/predict", with("application/dicom"), lying, 422, "undecodable_image"),
        case("dicom cut after magic", "/v1/predict", with("application/dicom"), { let mut d = vec![0u8; 128]; d.extend_from_slice(b"DICM"); d }, 422, "undecodable_image"),
        case("multipart without boundary", "/v1/predict", with("multipart/form-data"), multipart("--x\n\nabc\n--x--\n"), 400, "bad_request"),
        case("multipart truncated", "/v1/predict", with("multipart/form-data; boundary=x"), multipart("--x\nContent-Disposition: form-data; name=\"image\"\n\nabc"), 400, "bad_request"),
        case("multipart wrong boundary", "/v1/predict", with("multipart/form-data; boundary=y"), multipart("--x\n\nabc\n--x--\n"), 400, "bad_request"),
        case("multipart two images", "/v1/predict", with("multipart/form-data; boundary=x"), multipart("--x\nContent-Disposition: form-data; name=\"image\"\n\na\n--x\nContent-Disposition: form-data; name=\"image\"\n\nb\n--x--\n"), 400, "bad_request"),
        case("unknown model version", "/v1/predict?model=run-zzz.000000000000", with("image/png"), good.clone(), 404, "model_not_found"),
        case("unknown option", "/v1/predict?colour=red", with("image/png"), good.clone(), 400, "bad_request"),
        case("bad tta value", "/v1/predict?tta=maybe", with("image/png"), good.clone(), 400, "bad_request"),
        case("unknown heatmap finding", "/v1/predict?heatmap=Fracture", with("image/png"), good.clone(), 400, "bad_request"),
        case("bad deadline header", "/v1/predict", { let mut h = with("image/png"); h.push(("x-request-deadline-ms".into(), "soon".into())); h }, good.clone(), 400, "bad_request"),
        case("bad json in batch", "/v1/predict/batch", with("application/json"), b"{\"images\": [".to_vec(), 400, "bad_request"),
        case("batch field unknown", "/v1/predict/batch", with("application/json"), br#"{"imgs": []}"#.to_vec(), 400, "bad_request"),
        case("batch not base64", "/v1/predict/batch", with("application/json"), br#"{"images": [{"data": "%%%"}]}"#.to_vec(), 200, ""),
        case("batch too many images", "/v1/predict/batch", with("application/json"), serde_json::json!({"images": (0..5).map(|_| serde_json::json!({"data": b64(&good)})).collect::<Vec<_>>()}).to_string().into_bytes(), 400, "too_many_images"),
        case("batch empty", "/v1/predict/batch", with("application/json"), br#"{"images": []}"#.to_vec(), 400, "bad_request"),
        case("oip unknown model", "/v2/models/other/infer", with("application/json"), b"{}".to_vec(), 404, "model_not_found"),
        case("oip bad json", "/v2/models/chexvision/infer", with("application/json"), b"{\"inputs\": 3}".to_vec(), 400, "bad_request"),
        case("oip unknown input", "/v2/models/chexvision/infer", with("application/json"), br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[1]}]}"#.to_vec(), 400, "bad_request"),
        case("oip binary shorter than declared", "/v2/models/chexvision/infer", { let mut h = auth(); h.push(("inference-header-content-length".into(), oip_len.clone())); h }, oip_truncated, 400, "bad_request"),
        case("oip pixels wrong size", "/v2/models/chexvision/infer", with("application/json"), serde_json::json!({"inputs":[{"name":"pixels","shape":[1,3,64,64],"datatype":"FP32","data":vec![0.0; 3*64*64]}]}).to_string().into_bytes(), 422, "invalid_input"),
        case("admin reload bad json", "/v1/admin/reload", vec![("authorization".into(), format!("Bearer {ADMIN_KEY}")), ("content-type".into(), "application/json".into())], b"{version".to_vec(), 400, "bad_request"),
        case("unknown route", "/v1/nothing", auth(), Vec::new(), 404, "not_found"),
    ];
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for c in &cases {
        let headers: Vec<(&str, &str)> = c
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let answer = send(c.method, &server.url(&c.path), &headers, c.body.clone()).await;
        assert_eq!(
            answer.status,
            c.status,
            "{}: {}",
            c.name,
            String::from_utf8_lossy(&answer.body)
        );
        if c.status == 200 {
            // One bad image of a batch fails only its entry.
            assert_eq!(
                answer.json()["results"][0]["error"]["code"],
                "bad_request",
                "{}",
                c.name
            );
            continue;
        }
        assert_eq!(
            answer.code(),
            c.code,
            "{}: {}",
            c.name,
            String::from_utf8_lossy(&answer.body)
        );
        let v = answer.json();
        let (message, request_id) = if c.path.starts_with("/v2") {
            (
                v["error"].as_str().unwrap_or("").to_string(),
                v["request_id"].as_str().unwrap_or("").to_string(),
            )
        } else {
            (
                v["error"]["message"].as_str().unwrap_or("").to_string(),
                v["error"]["request_id"].as_str().unwrap_or("").to_string(),
            )
        };
        assert!(
            message.len() > 10,
            "{}: a message that names the problem: {v}",
            c.name
        );
        assert_eq!(
            Some(request_id.as_str()),
            answer.header("x-request-id"),
            "{}",
            c.name
        );
    }
    // Alive and answering afterwards.
    let answer = send(
        "POST",
        &server.url("/v1/predict"),
        &[
            ("content-type", "image/png"),
            ("authorization", key.as_str()),
        ],
        good,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(get(&server.url("/healthz")).await.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route_and_the_page_is_served() {
    let server = TestServer::start(settings(), true).await;
    let doc = get(&server.url("/openapi.json")).await.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/predict",
        "/v1/predict/batch",
        "/v1/models",
        "/v1/admin/reload",
        "/v1/feedback",
        "/v2/models/{name}/infer",
        "/v2/health/ready",
        "/healthz",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
    let predict = &doc["paths"]["/v1/predict"]["post"];
    for status in [
        "200", "400", "401", "413", "415", "422", "429", "503", "504",
    ] {
        assert!(predict["responses"].get(status).is_some(), "{status}");
    }
    assert!(doc["components"]["schemas"]
        .get("PredictResponse")
        .is_some());
    let page = get(&server.url("/")).await;
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = String::from_utf8_lossy(&page.body);
    assert!(
        html.contains("id=\"file\"") && !html.contains("https://"),
        "self-contained page"
    );
    server.stop().await;
}

fn reading(positive: &[&str]) -> serde_json::Value {
    LABELS
        .iter()
        .map(|l| {
            (
                (*l).to_string(),
                serde_json::Value::Bool(positive.contains(l)),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_published_without_the_study_reference_and_feedback_has_its_own_scope() {
    let server = TestServer::start(keyed_settings(), true).await;
    let predict_auth = format!("Bearer {PREDICT_KEY}");
    let feedback_auth = format!("Bearer {FEEDBACK_KEY}");
    // One image with a study reference, a JSON batch of two (one with its
    // own reference), an OIP request; a bad reference is refused.
    let one = send(
        "POST",
        &server.url("/v1/predict?study_ref=ACC-0001"),
        &[
            ("content-type", "image/png"),
            ("authorization", &predict_auth),
            ("x-request-id", "req-one"),
        ],
        png(100, 100, 1),
    )
    .await;
    assert_eq!(one.status, 200, "{}", String::from_utf8_lossy(&one.body));
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let batch = send(
        "POST",
        &server.url("/v1/predict/batch"),
        &[
            ("content-type", "application/json"),
            ("authorization", &predict_auth),
            ("x-request-id", "req-batch"),
        ],
        serde_json::json!({"images": [
            {"data": b64(&png(80, 80, 2))},
            {"data": b64(&png(90, 90, 3)), "study_ref": "ACC-0002"},
        ]})
        .to_string(),
    )
    .await;
    assert_eq!(batch.status, 200);
    let bad = send(
        "POST",
        &server.url("/v1/predict?study_ref=Jane%20Doe"),
        &[
            ("content-type", "image/png"),
            ("authorization", &predict_auth),
        ],
        png(100, 100, 1),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(String::from_utf8_lossy(&bad.body).contains("study_ref"));

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let predictions = loop {
        let events = server.events_on(&server.topics.predictions).await;
        if events.len() >= 3 || std::time::Instant::now() > deadline {
            break events;
        }
    };
    let made: Vec<chexvision_events::PredictionMade> = predictions
        .into_iter()
        .filter_map(|e| match e.body {
            Some(chexvision_events::Body::PredictionMade(p)) => Some(p),
            _ => None,
        })
        .collect();
    let ids: Vec<&str> = made.iter().map(|p| p.request_id.as_str()).collect();
    assert_eq!(made.len(), 3, "{ids:?}");
    assert!(
        ids.contains(&"req-one") && ids.contains(&"req-batch-0") && ids.contains(&"req-batch-1")
    );
    let first = made.iter().find(|p| p.request_id == "req-one").unwrap();
    // The answer's probabilities, the serving version, only the hash.
    let answered = probabilities(&one.json());
    assert_eq!(first.probabilities.len(), 15);
    for (a, b) in answered.iter().zip(&first.probabilities) {
        assert!((a - b).abs() < 1e-6);
    }
    assert_eq!(first.model_version, one.json()["model"]["version"]);
    assert_eq!(
        first.study_ref_sha256,
        chexvision_inference::events::study_ref_sha256("ACC-0001")
    );
    let raw = serde_json::to_string(&made).unwrap();
    assert!(
        !raw.contains("ACC-000"),
        "the reference itself never leaves"
    );
    let batch_0 = made.iter().find(|p| p.request_id == "req-batch-0").unwrap();
    assert!(batch_0.study_ref_sha256.is_empty());

    // Feedback: only a feedback (or admin) key; a predict key may not.
    let body = serde_json::json!({"request_id": "req-one", "findings": reading(&["Effusion"])});
    let send_feedback = |auth: String, body: String| {
        let url = server.url("/v1/feedback");
        async move {
            send(
                "POST",
                &url,
                &[
                    ("content-type", "application/json"),
                    ("authorization", &auth),
                ],
                body,
            )
            .await
        }
    };
    let refused = send_feedback(predict_auth.clone(), body.to_string()).await;
    assert_eq!(refused.status, 403);
    assert!(String::from_utf8_lossy(&refused.body).contains("feedback scope"));
    let taken = send_feedback(feedback_auth.clone(), body.to_string()).await;
    assert_eq!(
        taken.status,
        202,
        "{}",
        String::from_utf8_lossy(&taken.body)
    );
    assert_eq!(taken.json()["positive"], serde_json::json!(["Effusion"]));
    let by_study = serde_json::json!({"study_ref": "ACC-0002", "findings": reading(&[]), "confirmed_at": "2026-01-02T03:04:05Z"});
    assert_eq!(
        send_feedback(feedback_auth.clone(), by_study.to_string())
            .await
            .status,
        202
    );
    // A feedback key cannot predict.
    let cannot = send(
        "POST",
        &server.url("/v1/predict"),
        &[
            ("content-type", "image/png"),
            ("authorization", &feedback_auth),
        ],
        png(100, 100, 1),
    )
    .await;
    assert_eq!(cannot.status, 403);
    // Incomplete readings are refused by name.
    let partial = serde_json::json!({"request_id": "req-one", "findings": {"Effusion": true}});
    let answer = send_feedback(feedback_auth.clone(), partial.to_string()).await;
    assert_eq!(answer.status, 400);
    assert!(String::from_utf8_lossy(&answer.body).contains("missing: Atelectasis"));

    let feedback: Vec<chexvision_events::FeedbackReceived> = server
        .events_on(&server.topics.feedback)
        .await
        .into_iter()
        .filter_map(|e| match e.body {
            Some(chexvision_events::Body::FeedbackReceived(f)) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(feedback.len(), 2);
    assert_eq!(feedback[0].request_id, "req-one");
    assert_eq!(feedback[0].source, "api:reporting");
    assert!(feedback[0].findings[2] && feedback[0].findings.iter().filter(|p| **p).count() == 1);
    assert_eq!(
        feedback[1].study_ref_sha256,
        chexvision_inference::events::study_ref_sha256("ACC-0002")
    );
    assert_eq!(
        feedback[1].confirmed_at.as_ref().unwrap().seconds,
        1_767_323_045
    );
    let metrics = String::from_utf8_lossy(&get(&server.url("/metrics")).await.body).to_string();
    assert!(
        metrics.contains(r#"chexvision_inference_prediction_events_total{outcome="published"} 3"#),
        "{metrics}"
    );
    server.stop().await;
}
