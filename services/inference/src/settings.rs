//! The inference service's settings (`service:` in `configs/inference.yaml`).

use chexvision_config::Validate;
use serde::{Deserialize, Serialize};

/// Everything `chexvision-inference` reads from its config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceSettings {
    pub api: ApiSettings,
    pub queue: QueueSettings,
    pub model: ModelSettings,
    pub preprocess: PreprocessSettings,
}

/// The HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Where the API, the web page and its own `/metrics`, `/healthz` and
    /// `/readyz` are served.
    pub bind: String,
    /// HTTP worker threads (they only parse and route: decoding and the
    /// model run on their own pools). 0: one per core.
    pub workers: usize,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: u64,
    /// Most pixels an image may declare (422 above), checked from its
    /// header before decoding.
    pub max_image_pixels: u64,
    /// Most images in one `/v1/predict/batch` or OIP request.
    pub max_batch_images: usize,
    /// Deadline of a request without `X-Request-Deadline-Ms`.
    pub default_deadline_ms: u64,
    /// Largest deadline a client may ask for.
    pub max_deadline_ms: u64,
    /// The model's name on the Open Inference Protocol.
    pub model_name: String,
    /// API keys, as sha256 hashes with a scope. Empty (and no
    /// `keys_file`): no authentication.
    pub keys: Vec<ApiKey>,
    /// A YAML or JSON list of keys in the same form, e.g. a mounted
    /// Kubernetes secret; read at start.
    pub keys_file: String,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            bind: "0.0.0.0:8080".into(),
            workers: 0,
            max_body_bytes: 32 * 1024 * 1024,
            max_image_pixels: 50_000_000,
            max_batch_images: 16,
            default_deadline_ms: 30_000,
            max_deadline_ms: 300_000,
            model_name: "chexvision".into(),
            keys: Vec::new(),
            keys_file: String::new(),
        }
    }
}

/// One API key: only its hash is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Who holds it (for logs and metrics; never the key).
    pub name: String,
    /// Lower-case hex sha256 of the key.
    pub sha256: String,
    pub scope: Scope,
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Predictions and model metadata.
    Predict,
    /// Only `POST /v1/feedback`: what a reporting system holds.
    Feedback,
    /// Everything, `/v1/admin/*` too.
    Admin,
}

impl Scope {
    /// Whether a key of this scope may use a route that needs `needed`.
    pub fn allows(self, needed: Scope) -> bool {
        self == Scope::Admin || self == needed
    }

    pub fn name(self) -> &'static str {
        match self {
            Scope::Predict => "predict",
            Scope::Feedback => "feedback",
            Scope::Admin => "admin",
        }
    }
}

/// The micro-batching queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// Most images (each test-time view counts) per forward pass.
    pub max_batch: usize,
    /// Longest a batch waits to fill once its first image is queued.
    pub max_wait_ms: u64,
    /// Most images admitted at once (decoding, queued or computing);
    /// beyond it requests get 429 with `Retry-After`.
    pub capacity: usize,
    /// Threads that decode and preprocess images. 0: one per core.
    pub preprocess_threads: usize,
    /// Threads of the model's forward pass. 0: one per core.
    pub compute_threads: usize,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            max_batch: 16,
            max_wait_ms: 5,
            capacity: 256,
            preprocess_threads: 0,
            compute_threads: 0,
        }
    }
}

/// Which model is served and how it is followed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// A checkpoint to serve (store key or URI) instead of the registry's
    /// production model; `--checkpoint` sets it.
    pub checkpoint: String,
    /// Its sha256, when known (checked before loading).
    pub checkpoint_sha256: String,
    /// Follow `ModelPromoted` on the bus.
    pub follow_promotions: bool,
    /// Also read the registry's production pointer this often (seconds; 0:
    /// never), so a missed event or a bus outage still converges.
    pub registry_poll_secs: u64,
    /// Largest checkpoint accepted.
    pub max_checkpoint_bytes: u64,
    /// Consumer group prefix: each replica gets its own group (every
    /// replica must see every promotion).
    pub group_prefix: String,
    /// This replica's id in its group name; empty: `HOSTNAME`, else random.
    pub instance_id: String,
    /// Overlay weight of the Grad-CAM heatmap.
    pub heatmap_alpha: f32,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            checkpoint: String::new(),
            checkpoint_sha256: String::new(),
            follow_promotions: true,
            registry_poll_secs: 30,
            max_checkpoint_bytes: 2 * 1024 * 1024 * 1024,
            group_prefix: "chexvision-inference".into(),
            instance_id: String::new(),
            heatmap_alpha: 0.5,
        }
    }
}

/// Must match what the preprocess service did to the training images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessSettings {
    pub clahe_clip_limit: f32,
    pub clahe_tiles: u32,
}

impl Default for PreprocessSettings {
    fn default() -> Self {
        PreprocessSettings {
            clahe_clip_limit: 2.0,
            clahe_tiles: 8,
        }
    }
}

impl Validate for InferenceSettings {
    fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, key: &str, message: String| {
            if !ok {
                problems.push((key.to_string(), message));
            }
        };
        let api = &self.api;
        check(
            (1024..=(1 << 30)).contains(&api.max_body_bytes),
            "api.max_body_bytes",
            format!("{}: must be 1 KiB..=1 GiB", api.max_body_bytes),
        );
        check(
            (1..=500_000_000).contains(&api.max_image_pixels),
            "api.max_image_pixels",
            format!("{}: must be 1..=500000000", api.max_image_pixels),
        );
        check(
            (1..=256).contains(&api.max_batch_images),
            "api.max_batch_images",
            format!("{}: must be 1..=256", api.max_batch_images),
        );
        check(
            api.default_deadline_ms >= 1 && api.default_deadline_ms <= api.max_deadline_ms,
            "api.default_deadline_ms",
            format!(
                "{}: must be 1..=api.max_deadline_ms ({})",
                api.default_deadline_ms, api.max_deadline_ms
            ),
        );
        check(
            !api.model_name.is_empty()
                && api.model_name.len() <= 64
                && api
                    .model_name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "api.model_name",
            format!("`{}`: 1 to 64 of A-Z a-z 0-9 - _ .", api.model_name),
        );
        check(
            api.workers <= 256,
            "api.workers",
            format!("{}: at most 256", api.workers),
        );
        for (i, key) in api.keys.iter().enumerate() {
            check(
                key.sha256.len() == 64 && key.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
                &format!("api.keys[{i}].sha256"),
                "must be 64 hex digits (the sha256 of the key, never the key)".into(),
            );
        }
        let q = &self.queue;
        check(
            (1..=256).contains(&q.max_batch),
            "queue.max_batch",
            format!("{}: must be 1..=256", q.max_batch),
        );
        check(
            q.max_wait_ms <= 1000,
            "queue.max_wait_ms",
            format!("{}: at most 1000", q.max_wait_ms),
        );
        check(
            (1..=100_000).contains(&q.capacity) && q.capacity >= 4,
            "queue.capacity",
            format!("{}: must be 4..=100000 (a TTA request holds 4)", q.capacity),
        );
        check(
            q.preprocess_threads <= 256 && q.compute_threads <= 256,
            "queue",
            "threads: at most 256".into(),
        );
        check(
            self.model.heatmap_alpha.is_finite() && (0.0..=1.0).contains(&self.model.heatmap_alpha),
            "model.heatmap_alpha",
            format!("{}: must be 0..=1", self.model.heatmap_alpha),
        );
        check(
            self.model.registry_poll_secs <= 86_400,
            "model.registry_poll_secs",
            format!("{}: at most 86400", self.model.registry_poll_secs),
        );
        if !self.model.checkpoint_sha256.is_empty() {
            check(
                self.model.checkpoint_sha256.len() == 64
                    && self
                        .model
                        .checkpoint_sha256
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit()),
                "model.checkpoint_sha256",
                "must be 64 hex digits".into(),
            );
        }
        let p = &self.preprocess;
        check(
            p.clahe_clip_limit.is_finite() && p.clahe_clip_limit >= 0.0,
            "preprocess.clahe_clip_limit",
            format!("{}: must be a number >= 0", p.clahe_clip_limit),
        );
        check(
            (1..=64).contains(&p.clahe_tiles),
            "preprocess.clahe_tiles",
            format!("{}: must be 1..=64", p.clahe_tiles),
        );
        problems
    }
}
