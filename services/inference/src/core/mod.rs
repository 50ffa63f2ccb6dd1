//! The inference core, with no HTTP in it: admission (a bounded number of
//! images in flight), decoding and preprocessing on their own thread pool,
//! the micro-batching queue, and the loaded models. The router turns HTTP
//! requests into [`PredictRequest`]s and [`CoreError`]s into statuses.

pub mod lifecycle;
pub mod model;
pub mod preprocess;
pub mod queue;
pub mod slots;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chexvision_vision::{DecodeLimits, VisionError};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::metrics::InferenceMetrics;
use crate::settings::{InferenceSettings, PreprocessSettings};
use model::{LoadedModel, OUTPUTS};
use preprocess::Prepared;
pub use queue::HeatmapTarget;
use queue::{Job, JobOutput};
use slots::ModelSlots;

/// Why a prediction was not made. Each maps to one HTTP status and code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CoreError {
    #[error("no model is loaded yet")]
    NotReady,
    #[error("model version `{0}` is not loaded")]
    ModelNotFound(String),
    #[error("the queue is full ({capacity} images in flight); retry shortly")]
    QueueFull { capacity: usize },
    #[error("the deadline of {0} ms passed before the image was computed")]
    DeadlineExceeded(u64),
    #[error("{0}")]
    Image(VisionError),
    #[error("{0}")]
    Input(String),
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Internal(String),
}

/// An image as it arrives.
#[derive(Debug, Clone)]
pub enum ImageInput {
    /// PNG, JPEG or DICOM bytes.
    Encoded(Bytes),
    /// Already preprocessed: 3 × size × size, ImageNet-normalised.
    Tensor { size: u32, pixels: Vec<f32> },
}

/// One image to predict on.
#[derive(Debug, Clone)]
pub struct PredictRequest {
    pub input: ImageInput,
    pub tta: bool,
    pub heatmap: Option<HeatmapTarget>,
    /// A pinned model version.
    pub model: Option<String>,
    pub deadline: Duration,
}

/// Milliseconds per stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Timings {
    pub decode: f64,
    pub preprocess: f64,
    pub queue: f64,
    pub inference: f64,
    /// Grad-CAM, when a heatmap was asked for.
    pub heatmap: f64,
    pub total: f64,
}

/// What the model said about one image.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The 14 findings, then abnormal.
    pub probabilities: [f32; OUTPUTS],
    pub model: Arc<LoadedModel>,
    pub warnings: Vec<String>,
    pub timings: Timings,
    /// The output explained (0..14 a finding, 14 abnormal) and its PNG.
    pub heatmap: Option<(usize, Vec<u8>)>,
}

/// The core: what every route predicts through.
pub struct Core {
    pub slots: Arc<ModelSlots>,
    jobs: mpsc::UnboundedSender<Job>,
    admission: Arc<Semaphore>,
    capacity: usize,
    preprocess_pool: Arc<rayon::ThreadPool>,
    preprocess: PreprocessSettings,
    limits: DecodeLimits,
    metrics: InferenceMetrics,
}

impl Core {
    /// Starts the queue task (on the current runtime), the compute thread
    /// and the thread pools. The returned task ends when `shutdown` is
    /// cancelled.
    pub fn start(
        settings: &InferenceSettings,
        slots: Arc<ModelSlots>,
        metrics: InferenceMetrics,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<(Arc<Core>, tokio::task::JoinHandle<anyhow::Result<()>>)> {
        let pool = |name: &'static str, threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(move |i| format!("{name}-{i}"))
                .build()
                .map(Arc::new)
        };
        let preprocess_pool = pool("inference-preprocess", settings.queue.preprocess_threads)?;
        let compute_pool = pool("inference-model", settings.queue.compute_threads)?;
        let (jobs, task) = queue::start(
            queue::BatchPolicy {
                max_batch: settings.queue.max_batch,
                max_wait: Duration::from_millis(settings.queue.max_wait_ms),
            },
            slots.clone(),
            compute_pool,
            settings.preprocess.clone(),
            settings.model.heatmap_alpha,
            metrics.clone(),
            shutdown,
        )?;
        let core = Core {
            slots,
            jobs,
            admission: Arc::new(Semaphore::new(settings.queue.capacity)),
            capacity: settings.queue.capacity,
            preprocess_pool,
            preprocess: settings.preprocess.clone(),
            limits: DecodeLimits {
                max_pixels: settings.api.max_image_pixels,
                max_bytes: settings.api.max_body_bytes,
            },
            metrics,
        };
        Ok((Arc::new(core), task))
    }

    /// Whether a model is loaded.
    pub fn ready(&self) -> bool {
        self.slots.current().is_some()
    }

    /// The model a request would use: a pinned version, or the current one.
    pub fn model_for(&self, pinned: Option<&str>) -> Result<Arc<LoadedModel>, CoreError> {
        match pinned {
            Some(version) => self
                .slots
                .get(version)
                .ok_or_else(|| CoreError::ModelNotFound(version.to_string())),
            None => self.slots.current().ok_or(CoreError::NotReady),
        }
    }

    /// Reserves room for `images` images, or refuses at once; the room is
    /// given back when the reservation is dropped.
    pub fn reserve(&self, images: usize) -> Result<Reservation, CoreError> {
        let permit = self
            .admission
            .clone()
            .try_acquire_many_owned(images as u32)
            .map_err(|_| CoreError::QueueFull {
                capacity: self.capacity,
            })?;
        self.metrics.queue_depth.add(images as i64);
        Ok(Reservation {
            _permit: permit,
            images,
            gauge: self.metrics.queue_depth.clone(),
        })
    }

    /// Predicts on one image: admitted (or refused at once when the queue
    /// is full), decoded and prepared on the preprocessing pool, batched
    /// and computed; gives up when the deadline passes.
    pub async fn predict(&self, request: PredictRequest) -> Result<Prediction, CoreError> {
        let arrived = Instant::now();
        let deadline = arrived + request.deadline;
        let deadline_ms = request.deadline.as_millis() as u64;
        let model = self.model_for(request.model.as_deref())?;
        let size = model.info.input_size;
        let pinned = request.model.is_some().then(|| model.clone());
        drop(model);
        let views = if request.tta { 4 } else { 1 };
        let _admitted = self.reserve(views)?;

        let (tx, rx) = oneshot::channel();
        let preprocess = self.preprocess.clone();
        let limits = self.limits;
        let tta = request.tta;
        let input = request.input;
        self.preprocess_pool.spawn(move || {
            let _ = tx.send(prepare_input(input, size, &preprocess, &limits, tta));
        });
        let prepared = tokio::time::timeout_at(deadline.into(), rx)
            .await
            .map_err(|_| CoreError::DeadlineExceeded(deadline_ms))?
            .map_err(|_| CoreError::Internal("the preprocessing pool dropped an image".into()))??;
        let (prepared, source, warnings, decode_ms) = prepared;
        self.metrics
            .stage_seconds
            .with_label_values(&["decode"])
            .observe(decode_ms / 1e3);
        self.metrics
            .stage_seconds
            .with_label_values(&["preprocess"])
            .observe(prepared.preprocess_ms / 1e3);
        let preprocess_ms = prepared.preprocess_ms;

        let (answer, answered) = oneshot::channel::<Result<JobOutput, CoreError>>();
        let job = Job {
            prepared,
            source,
            tta,
            heatmap: request.heatmap,
            model: pinned,
            deadline,
            enqueued: Instant::now(),
            answer,
        };
        self.jobs.send(job).map_err(|_| CoreError::ShuttingDown)?;
        let output = match tokio::time::timeout_at(deadline.into(), answered).await {
            Err(_) => return Err(CoreError::DeadlineExceeded(deadline_ms)),
            // The queue dropped the job: it was past its deadline.
            Ok(Err(_)) => return Err(CoreError::DeadlineExceeded(deadline_ms)),
            Ok(Ok(result)) => result?,
        };
        Ok(Prediction {
            probabilities: output.probabilities,
            model: output.model,
            warnings,
            timings: Timings {
                decode: decode_ms,
                preprocess: preprocess_ms,
                queue: output.queue_ms,
                inference: output.inference_ms,
                heatmap: output.heatmap_ms,
                total: arrived.elapsed().as_secs_f64() * 1e3,
            },
            heatmap: output.heatmap,
        })
    }
}

type PreparedInput = (
    Prepared,
    Option<Arc<chexvision_vision::GrayImage8>>,
    Vec<String>,
    f64,
);

fn prepare_input(
    input: ImageInput,
    size: u32,
    settings: &PreprocessSettings,
    limits: &DecodeLimits,
    tta: bool,
) -> Result<PreparedInput, CoreError> {
    match input {
        ImageInput::Encoded(bytes) => {
            let decoded = preprocess::decode(&bytes, limits).map_err(CoreError::Image)?;
            let prepared = preprocess::prepare(&decoded.image, size, settings, tta)
                .map_err(CoreError::Image)?;
            Ok((
                prepared,
                Some(Arc::new(decoded.image)),
                decoded.warnings,
                decoded.decode_ms,
            ))
        }
        ImageInput::Tensor {
            size: given,
            pixels,
        } => {
            if given != size {
                return Err(CoreError::Input(format!(
                    "the tensor is {given}×{given} but the model takes {size}×{size}"
                )));
            }
            if tta {
                return Err(CoreError::Input(
                    "test-time augmentation needs an image, not a preprocessed tensor".into(),
                ));
            }
            let gray =
                chexvision_vision::GrayImage8::new(size, size, vec![0; (size * size) as usize])
                    .map_err(CoreError::Image)?;
            Ok((
                Prepared {
                    size,
                    gray,
                    views: vec![pixels],
                    preprocess_ms: 0.0,
                },
                None,
                Vec::new(),
                0.0,
            ))
        }
    }
}

/// Room in the queue, given back when dropped.
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    images: usize,
    gauge: prometheus::IntGauge,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.gauge.sub(self.images as i64);
    }
}
