//! What the inference tests share: small seeded checkpoints registered in
//! a filesystem store, an API server on a loopback port, an HTTP client,
//! and PNG and DICOM files made here.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use chexvision_dataset::LABELS;
use chexvision_inference::core::lifecycle::{Lifecycle, Target};
use chexvision_inference::core::slots::ModelSlots;
use chexvision_inference::router::AppState;
use chexvision_inference::service::{start_api, Api};
use chexvision_inference::settings::InferenceSettings;
use chexvision_inference::InferenceMetrics;
use chexvision_models::candle_core::Device;
use chexvision_models::{
    checkpoint_bytes, varmap_tensors, CheckpointMeta, ChestModel, DenseNetConfig, ModelConfig,
    Normalization,
};
use chexvision_registry::{
    CheckpointRef, EvaluationRef, MetricsSummary, ModelRecord, Registry, SCHEMA_VERSION,
};
use chexvision_store::ObjectStore;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

/// Input size of the test models.
pub const SIZE: usize = 32;

/// A small DenseNet, seeded: the same seed gives the same bytes.
pub fn checkpoint(seed: u64, run_id: &str) -> Vec<u8> {
    let config = ModelConfig::Densenet(DenseNetConfig {
        growth_rate: 4,
        block_config: vec![2, 2],
        num_init_features: 8,
        bn_size: 2,
        compression: 0.5,
    });
    let (_, varmap) = ChestModel::init_seeded(&config, LABELS.len(), &Device::Cpu, seed).unwrap();
    let meta = CheckpointMeta {
        config,
        labels: LABELS.iter().map(|s| s.to_string()).collect(),
        input_size: SIZE,
        normalization: Normalization::imagenet(),
        parameter_count: 0,
        tensors_sha256: String::new(),
        extra: BTreeMap::from([
            ("run_id".to_string(), run_id.to_string()),
            ("synthetic".to_string(), "true".to_string()),
        ]),
    };
    checkpoint_bytes(&varmap_tensors(&varmap), &meta).unwrap()
}

/// Thresholds of registered test models: distinct per finding, so a test
/// sees they come from the record.
pub fn thresholds() -> BTreeMap<String, f64> {
    LABELS
        .iter()
        .copied()
        .chain(["abnormal"])
        .enumerate()
        .map(|(i, name)| (name.to_string(), 0.3 + 0.02 * i as f64))
        .collect()
}

/// Puts a checkpoint in the store and registers it; returns the record.
/// `stored` are the bytes written (a tampered test writes other bytes than
/// the record's sha256 names).
pub async fn register(
    store: &Arc<dyn ObjectStore>,
    run_id: &str,
    bytes: &[u8],
    stored: &[u8],
) -> ModelRecord {
    let sha256 = chexvision_store::sha256_hex(bytes);
    let version = chexvision_registry::version_of(run_id, &sha256);
    let key = format!("runs/{run_id}/checkpoints/best.safetensors");
    store
        .put(&key, Bytes::copy_from_slice(stored))
        .await
        .unwrap();
    let record = ModelRecord {
        schema_version: SCHEMA_VERSION,
        version,
        run_id: run_id.to_string(),
        checkpoint: CheckpointRef {
            uri: store.uri(&key),
            key,
            sha256,
            size_bytes: bytes.len() as u64,
        },
        model_kind: "densenet".into(),
        image_size_px: SIZE as u32,
        dataset_id: "synthetic-test".into(),
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
        thresholds: thresholds(),
        threshold_rule: "max_f1".into(),
        created_at_unix_ms: 0,
    };
    Registry::new(store.clone(), "test")
        .register(&record)
        .await
        .unwrap()
}

/// Registers and promotes a model; returns its version.
pub async fn promote(store: &Arc<dyn ObjectStore>, run_id: &str, seed: u64) -> String {
    let bytes = checkpoint(seed, run_id);
    let record = register(store, run_id, &bytes, &bytes).await;
    Registry::new(store.clone(), "test")
        .promote(&record.version, "test promotion", "tests")
        .await
        .unwrap();
    record.version
}

/// A running API over a filesystem store.
pub struct TestServer {
    pub base: String,
    pub store: Arc<dyn ObjectStore>,
    pub lifecycle: Arc<Lifecycle>,
    pub state: actix_web::web::Data<AppState>,
    pub telemetry: chexvision_telemetry::Telemetry,
    pub shutdown: CancellationToken,
    /// The in-process bus predictions and feedback are published on.
    pub bus: Arc<dyn chexvision_bus::Bus>,
    pub topics: chexvision_config::Topics,
    api: Option<Api>,
    events_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

pub fn settings() -> InferenceSettings {
    let mut settings = InferenceSettings::default();
    settings.api.bind = "127.0.0.1:0".into();
    settings.api.workers = 2;
    settings.queue.preprocess_threads = 2;
    settings.queue.compute_threads = 2;
    settings
}

impl TestServer {
    /// A server with `settings`; the registry's production model loaded
    /// when `production` is true (one is registered first).
    pub async fn start(settings: InferenceSettings, production: bool) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(chexvision_store::FsStore::open(dir.path()).await.unwrap());
        let telemetry = chexvision_telemetry::Telemetry::new("chexvision-inference-test");
        let metrics = InferenceMetrics::register(&telemetry.registry).unwrap();
        let lifecycle = Arc::new(Lifecycle::new(
            Arc::new(ModelSlots::default()),
            store.clone(),
            settings.model.clone(),
            metrics.clone(),
        ));
        if production {
            promote(&store, "run-a", 1).await;
            lifecycle.load(Target::Production).await.unwrap();
        }
        let shutdown = CancellationToken::new();
        let bus: Arc<dyn chexvision_bus::Bus> = Arc::new(chexvision_bus::MemoryBus::new());
        let topics = chexvision_config::Topics::default();
        bus.create_topics(&[
            chexvision_bus::TopicSpec::new(&topics.predictions, 1),
            chexvision_bus::TopicSpec::new(&topics.feedback, 1),
        ])
        .await
        .unwrap();
        let (events, events_task) = chexvision_inference::events::Events::start(
            bus.clone(),
            topics.clone(),
            metrics.prediction_events.clone(),
            shutdown.clone(),
            std::time::Duration::from_secs(2),
        );
        let api = start_api(
            &settings,
            lifecycle.clone(),
            metrics,
            telemetry.clone(),
            events,
            shutdown.clone(),
        )
        .unwrap();
        TestServer {
            base: format!("http://{}", api.address),
            store,
            lifecycle,
            state: api.state.clone(),
            telemetry,
            shutdown,
            bus,
            topics,
            api: Some(api),
            events_task: Some(events_task),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(api) = self.api.take() {
            for (_, task) in api.tasks {
                let _ = task.await;
            }
        }
        if let Some(task) = self.events_task.take() {
            let _ = task.await;
        }
    }

    /// Every event published on `topic` so far (read by a fresh group).
    pub async fn events_on(&self, topic: &str) -> Vec<chexvision_events::Envelope> {
        let mut sub = self
            .bus
            .subscribe(&uuid::Uuid::new_v4().to_string(), &[topic.to_owned()])
            .await
            .unwrap();
        let mut events = Vec::new();
        while let Ok(Ok(delivery)) =
            tokio::time::timeout(std::time::Duration::from_millis(300), sub.next()).await
        {
            events.push(chexvision_events::Envelope::decode_checked(&delivery.payload).unwrap());
        }
        events
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(400)])
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `error.code` of a JSON error.
    pub fn code(&self) -> String {
        let v = self.json();
        v["error"]["code"]
            .as_str()
            .or_else(|| v["code"].as_str())
            .unwrap_or("")
            .to_string()
    }
}

/// Sends one request.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = client
        .request(request.body(Full::new(body.into())).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

pub async fn get(url: &str) -> Answer {
    send("GET", url, &[], Bytes::new()).await
}

/// A grey PNG with structure (gradients and a bright disc), seeded.
pub fn png(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let mut pixels = Vec::with_capacity((width * height) as usize);
    for y in 0..height {
        for x in 0..width {
            let dx = x as f32 - width as f32 * (0.3 + 0.05 * (seed % 5) as f32);
            let dy = y as f32 - height as f32 * 0.5;
            let disc = if dx * dx + dy * dy < (width as f32 * 0.15).powi(2) {
                80.0
            } else {
                0.0
            };
            let v = 40.0 + 120.0 * x as f32 / width as f32 + 40.0 * y as f32 / height as f32 + disc;
            let noise =
                ((x.wrapping_mul(73) ^ y.wrapping_mul(151) ^ seed.wrapping_mul(977)) % 17) as f32;
            pixels.push((v + noise).min(255.0) as u8);
        }
    }
    encode_png(width, height, &pixels)
}

pub fn encode_png(width: u32, height: u32, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(pixels).unwrap();
    writer.finish().unwrap();
    out
}

/// Patient attributes the DICOM test files carry (they must never reach
/// a log or a metric).
pub const PATIENT_NAME: &str = "DOE^JANE^Q";
pub const PATIENT_ID: &str = "MRN5551234";
pub const BIRTH_DATE: &str = "19700304";
pub const ACCESSION: &str = "ACC998877";

fn element(out: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
    let mut value = value.to_vec();
    if value.len() % 2 == 1 {
        value.push(if vr == b"UI" || vr == b"OB" { 0 } else { b' ' });
    }
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(&value);
}

/// An explicit VR little-endian DICOM file: 8-bit MONOCHROME2 pixels, with
/// patient attributes, the given view position and transfer syntax.
pub fn dicom(size: u16, view_position: &str, transfer_syntax: &str) -> Vec<u8> {
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    element(&mut out, 0x0002, 0x0010, b"UI", transfer_syntax.as_bytes());
    element(&mut out, 0x0008, 0x0050, b"SH", ACCESSION.as_bytes());
    element(&mut out, 0x0008, 0x0060, b"CS", b"DX");
    element(&mut out, 0x0010, 0x0010, b"PN", PATIENT_NAME.as_bytes());
    element(&mut out, 0x0010, 0x0020, b"LO", PATIENT_ID.as_bytes());
    element(&mut out, 0x0010, 0x0030, b"DA", BIRTH_DATE.as_bytes());
    element(&mut out, 0x0018, 0x0015, b"CS", b"CHEST");
    element(&mut out, 0x0018, 0x5101, b"CS", view_position.as_bytes());
    element(&mut out, 0x0028, 0x0002, b"US", &1u16.to_le_bytes());
    element(&mut out, 0x0028, 0x0004, b"CS", b"MONOCHROME2");
    element(&mut out, 0x0028, 0x0010, b"US", &size.to_le_bytes());
    element(&mut out, 0x0028, 0x0011, b"US", &size.to_le_bytes());
    element(&mut out, 0x0028, 0x0100, b"US", &8u16.to_le_bytes());
    element(&mut out, 0x0028, 0x0101, b"US", &8u16.to_le_bytes());
    element(&mut out, 0x0028, 0x0102, b"US", &7u16.to_le_bytes());
    element(&mut out, 0x0028, 0x0103, b"US", &0u16.to_le_bytes());
    let pixels: Vec<u8> = (0..usize::from(size) * usize::from(size))
        .map(|i| {
            ((i % usize::from(size)) * 200 / usize::from(size) + (i / usize::from(size)) % 40) as u8
        })
        .collect();
    element(&mut out, 0x7FE0, 0x0010, b"OB", &pixels);
    out
}

pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
/// High-Throughput JPEG 2000, a transfer syntax the decoder refuses by name.
pub const HTJ2K: &str = "1.2.840.10008.1.2.4.201";
