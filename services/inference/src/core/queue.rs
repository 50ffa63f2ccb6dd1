//! The micro-batching queue. One task owns it: jobs arrive over a
//! channel, each with a one-shot channel for its answer. Once the compute
//! thread is free (it hands back a permit when a batch is done), the task
//! gathers jobs until the batch holds `max_batch` images (TTA views count)
//! or `max_wait` has passed since its first job, drops the jobs whose
//! client has gone or whose deadline has passed, and hands the batch over.
//! Forming a batch only when the model is free means that under load a
//! batch takes everything that arrived while the previous one ran. The
//! compute thread runs the model on its own thread pool, never on the
//! async runtime's threads.
//!
//! The model is chosen when the batch is computed: a swap between two
//! batches is seen by the next one, and a batch already handed over
//! finishes on the model it started with. Each answer carries the model
//! that computed it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chexvision_vision::GrayImage8;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::core::model::{LoadedModel, OUTPUTS};
use crate::core::preprocess::{prepare, Prepared};
use crate::core::slots::ModelSlots;
use crate::core::CoreError;
use crate::metrics::InferenceMetrics;
use crate::settings::PreprocessSettings;

/// Which output a heatmap explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeatmapTarget {
    /// The most probable finding.
    Top,
    /// 0..14 a finding, 14 abnormal.
    Output(usize),
}

/// One image waiting for the model.
pub struct Job {
    pub prepared: Prepared,
    /// The decoded upload, to prepare again if a swap changed the input
    /// size; `None` for tensors sent preprocessed.
    pub source: Option<Arc<GrayImage8>>,
    pub tta: bool,
    pub heatmap: Option<HeatmapTarget>,
    /// A pinned model; `None`: the one serving when the batch runs.
    pub model: Option<Arc<LoadedModel>>,
    pub deadline: Instant,
    pub enqueued: Instant,
    pub answer: oneshot::Sender<Result<JobOutput, CoreError>>,
}

impl Job {
    fn images(&self) -> usize {
        self.prepared.views.len()
    }
}

/// What the model said about one image.
#[derive(Debug, Clone)]
pub struct JobOutput {
    /// The 14 findings, then abnormal (averaged over views).
    pub probabilities: [f32; OUTPUTS],
    pub model: Arc<LoadedModel>,
    pub queue_ms: f64,
    pub inference_ms: f64,
    /// The output explained and the overlay PNG.
    pub heatmap: Option<(usize, Vec<u8>)>,
    pub heatmap_ms: f64,
}

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub max_batch: usize,
    pub max_wait: Duration,
}

/// A batch the queue task hands to the compute thread, with the permit
/// the thread gives back when it is done.
struct Batch {
    jobs: Vec<Job>,
    _free: tokio::sync::OwnedSemaphorePermit,
}

/// Starts the queue task (on the current runtime) and the compute thread.
/// Returns the job sender and the queue task's handle; both stop when
/// `shutdown` is cancelled and the sender is dropped.
pub fn start(
    policy: BatchPolicy,
    slots: Arc<ModelSlots>,
    pool: Arc<rayon::ThreadPool>,
    preprocess: PreprocessSettings,
    heatmap_alpha: f32,
    metrics: InferenceMetrics,
    shutdown: CancellationToken,
) -> std::io::Result<(
    mpsc::UnboundedSender<Job>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)> {
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel::<Job>();
    let (batch_tx, mut batch_rx) = mpsc::unbounded_channel::<Batch>();
    // One permit: held by a batch from its forming to the end of its run.
    let free = Arc::new(tokio::sync::Semaphore::new(1));
    let compute_metrics = metrics.clone();
    std::thread::Builder::new()
        .name("inference-compute".into())
        .spawn(move || {
            while let Some(batch) = batch_rx.blocking_recv() {
                let Batch { jobs, _free } = batch;
                pool.install(|| {
                    compute(jobs, &slots, &preprocess, heatmap_alpha, &compute_metrics)
                });
            }
        })?;
    let task = tokio::spawn(run_queue(
        policy, jobs_rx, batch_tx, free, metrics, shutdown,
    ));
    Ok((jobs_tx, task))
}

async fn run_queue(
    policy: BatchPolicy,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    batches: mpsc::UnboundedSender<Batch>,
    free: Arc<tokio::sync::Semaphore>,
    metrics: InferenceMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        // Wait until the compute thread is free: jobs gather in the
        // channel meanwhile, so a busy model gets fuller batches.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = free.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => anyhow::bail!("the compute thread stopped"),
            },
        };
        if pending.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                job = jobs.recv() => match job {
                    Some(job) => pending.push_back(job),
                    None => break,
                },
            }
        }
        let first_at = Instant::now();
        let mut batch: Vec<Job> = Vec::new();
        let mut images = 0usize;
        loop {
            while let Some(job) = pending.pop_front() {
                if !keep(&job, &metrics) {
                    continue;
                }
                if !batch.is_empty() && images + job.images() > policy.max_batch {
                    pending.push_front(job);
                    break;
                }
                images += job.images();
                batch.push(job);
            }
            if images >= policy.max_batch || !pending.is_empty() {
                break;
            }
            let left = policy.max_wait.saturating_sub(first_at.elapsed());
            if left.is_zero() {
                // Take whatever already arrived, without waiting.
                match jobs.try_recv() {
                    Ok(job) => pending.push_back(job),
                    Err(_) => break,
                }
                continue;
            }
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => pending.push_back(job),
                    None => break,
                },
                _ = tokio::time::sleep(left) => {}
            }
        }
        if batch.is_empty() {
            drop(permit);
            continue;
        }
        metrics.batch_size.observe(images as f64);
        if batches
            .send(Batch {
                jobs: batch,
                _free: permit,
            })
            .is_err()
        {
            anyhow::bail!("the compute thread stopped");
        }
    }
    // Shutdown: jobs not yet batched get an answer instead of hanging.
    for job in pending.drain(..) {
        let _ = job.answer.send(Err(CoreError::ShuttingDown));
    }
    jobs.close();
    while let Ok(job) = jobs.try_recv() {
        let _ = job.answer.send(Err(CoreError::ShuttingDown));
    }
    Ok(())
}

/// Whether a job is still worth computing; answers or counts it if not.
fn keep(job: &Job, metrics: &InferenceMetrics) -> bool {
    if job.answer.is_closed() {
        metrics.skipped.with_label_values(&["client_gone"]).inc();
        return false;
    }
    if Instant::now() >= job.deadline {
        metrics.skipped.with_label_values(&["deadline"]).inc();
        return false;
    }
    true
}

/// Runs one batch: groups its jobs by model, one forward pass per group,
/// then the heatmaps asked for.
fn compute(
    jobs: Vec<Job>,
    slots: &ModelSlots,
    preprocess: &PreprocessSettings,
    alpha: f32,
    metrics: &InferenceMetrics,
) {
    let started = Instant::now();
    let current = slots.current();
    let mut groups: Vec<(Arc<LoadedModel>, Vec<Job>)> = Vec::new();
    for job in jobs {
        let Some(model) = job.model.clone().or_else(|| current.clone()) else {
            let _ = job.answer.send(Err(CoreError::NotReady));
            continue;
        };
        match groups.iter_mut().find(|(m, _)| Arc::ptr_eq(m, &model)) {
            Some((_, group)) => group.push(job),
            None => groups.push((model, vec![job])),
        }
    }
    for (model, mut jobs) in groups {
        let size = model.info.input_size;
        // A swap may have changed the input size since a job was prepared.
        let mut kept = Vec::with_capacity(jobs.len());
        for mut job in jobs.drain(..) {
            if job.prepared.size != size {
                let again = match &job.source {
                    Some(source) => prepare(source, size, preprocess, job.tta).map_err(|e| {
                        CoreError::Internal(format!("preparing again for the new model: {e}"))
                    }),
                    None => Err(CoreError::Input(format!(
                        "the tensor is {0}×{0} but model {1} takes {size}×{size}",
                        job.prepared.size, model.info.version
                    ))),
                };
                match again {
                    Ok(prepared) => job.prepared = prepared,
                    Err(e) => {
                        let _ = job.answer.send(Err(e));
                        continue;
                    }
                }
            }
            kept.push(job);
        }
        if kept.is_empty() {
            continue;
        }
        let n: usize = kept.iter().map(Job::images).sum();
        let per = 3 * (size as usize) * (size as usize);
        let mut pixels = Vec::with_capacity(n * per);
        for job in &kept {
            for view in &job.prepared.views {
                pixels.extend_from_slice(view);
            }
        }
        let forward_start = Instant::now();
        let result = model.probabilities(pixels, n);
        let inference_ms = forward_start.elapsed().as_secs_f64() * 1e3;
        let probabilities = match result {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, version = %model.info.version, "forward pass failed");
                for job in kept {
                    let _ = job
                        .answer
                        .send(Err(CoreError::Internal(format!("the model failed: {e}"))));
                }
                continue;
            }
        };
        let mut offset = 0usize;
        let mut with_heatmap = Vec::new();
        for job in kept {
            let views = job.images();
            let mut mean = [0f32; OUTPUTS];
            for v in 0..views {
                let row = &probabilities[(offset + v) * OUTPUTS..(offset + v + 1) * OUTPUTS];
                for (m, p) in mean.iter_mut().zip(row) {
                    *m += p / views as f32;
                }
            }
            offset += views;
            metrics
                .stage_seconds
                .with_label_values(&["inference"])
                .observe(inference_ms / 1e3);
            let queue_ms = started.duration_since(job.enqueued).as_secs_f64() * 1e3;
            metrics
                .stage_seconds
                .with_label_values(&["queue"])
                .observe(queue_ms / 1e3);
            metrics.observe_prediction(&mean, &model.info.thresholds);
            let output = JobOutput {
                probabilities: mean,
                model: model.clone(),
                queue_ms,
                inference_ms,
                heatmap: None,
                heatmap_ms: 0.0,
            };
            match job.heatmap {
                Some(target) => with_heatmap.push((job, output, target)),
                None => {
                    let _ = job.answer.send(Ok(output));
                }
            }
        }
        // Heatmaps after every plain answer of the batch: they need a
        // backward pass each.
        for (job, mut output, target) in with_heatmap {
            if job.answer.is_closed() {
                metrics.skipped.with_label_values(&["client_gone"]).inc();
                continue;
            }
            let start = Instant::now();
            let index = match target {
                HeatmapTarget::Output(i) => i,
                HeatmapTarget::Top => top_finding(&output.probabilities),
            };
            let drawn = model
                .grad_cam(&job.prepared.views[0], index)
                .and_then(|cam| {
                    chexvision_models::overlay_png(&job.prepared.gray.pixels, &cam, alpha)
                        .map_err(|e| crate::InferenceError::Model(e.to_string()))
                });
            output.heatmap_ms = start.elapsed().as_secs_f64() * 1e3;
            metrics
                .stage_seconds
                .with_label_values(&["heatmap"])
                .observe(output.heatmap_ms / 1e3);
            let answer = match drawn {
                Ok(png) => {
                    output.heatmap = Some((index, png));
                    Ok(output)
                }
                Err(e) => Err(CoreError::Internal(format!("Grad-CAM failed: {e}"))),
            };
            let _ = job.answer.send(answer);
        }
    }
}

/// The most probable of the 14 findings.
pub fn top_finding(probabilities: &[f32; OUTPUTS]) -> usize {
    let mut best = 0;
    for i in 1..OUTPUTS - 1 {
        if probabilities[i] > probabilities[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(deadline: Instant) -> (Job, oneshot::Receiver<Result<JobOutput, CoreError>>) {
        let (answer, rx) = oneshot::channel();
        let gray = GrayImage8::new(16, 16, vec![0; 256]).unwrap();
        let job = Job {
            prepared: Prepared {
                size: 16,
                gray,
                views: vec![vec![0.0; 3 * 16 * 16]],
                preprocess_ms: 0.0,
            },
            source: None,
            tta: false,
            heatmap: None,
            model: None,
            deadline,
            enqueued: Instant::now(),
            answer,
        };
        (job, rx)
    }

    #[test]
    fn work_for_a_gone_client_or_past_its_deadline_is_skipped_and_counted() {
        let metrics = InferenceMetrics::register(&prometheus::Registry::new()).unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        let (waiting, _rx) = job(later);
        assert!(keep(&waiting, &metrics));
        let (gone, rx) = job(later);
        drop(rx);
        assert!(!keep(&gone, &metrics));
        let (late, _rx2) = job(Instant::now());
        assert!(!keep(&late, &metrics));
        assert_eq!(metrics.skipped.with_label_values(&["client_gone"]).get(), 1);
        assert_eq!(metrics.skipped.with_label_values(&["deadline"]).get(), 1);
    }

    #[test]
    fn the_top_finding_is_the_most_probable_of_the_fourteen() {
        let mut p = [0.1f32; OUTPUTS];
        p[5] = 0.7;
        p[OUTPUTS - 1] = 0.99; // abnormal is not a finding
        assert_eq!(top_finding(&p), 5);
    }
}
