//! The trainer's Prometheus metrics: what Grafana shows while a run trains.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::RunProgress;

#[derive(Debug, Clone)]
pub struct TrainerMetrics {
    /// Requests by outcome: accepted, duplicate, ignored (a dataset at
    /// another size). Malformed ones are counted by the bus as dead letters.
    pub requests: IntCounterVec,
    /// Runs that stopped, by outcome: completed, stopped_early, failed,
    /// interrupted, lost_lease; store_unavailable counts an attempt that
    /// paused until the store answers again.
    pub runs: IntCounterVec,
    /// Runs accepted and not yet started.
    pub queued_runs: IntGauge,
    /// The run training now (value 1; labels run_id, dataset_id, architecture).
    pub run_info: IntGaugeVec,
    /// Epoch in progress (0-based, as in history.json).
    pub epoch: IntGauge,
    /// Optimiser steps of the run in progress.
    pub step: IntGauge,
    /// Loss of the last micro-batch.
    pub loss: Gauge,
    pub learning_rate: Gauge,
    /// Validation after the last finished epoch.
    pub val_macro_auc: Gauge,
    pub val_binary_auc: Gauge,
    /// Training images per second of the last finished epoch.
    pub images_per_second: Gauge,
    /// Training images consumed (rate() gives the live speed).
    pub images: IntCounter,
    /// `chexvision_trainer_loader_wait_seconds`: each wait of the step for data.
    pub loader_wait: Histogram,
    /// Checkpoints announced on the bus.
    pub checkpoints: IntCounter,
    /// Seconds the run in progress needs still: its training images left
    /// at the current epoch's speed (validation not counted); 0 when no
    /// run is in progress.
    pub eta_seconds: Gauge,
    eta: std::sync::Arc<std::sync::Mutex<Eta>>,
}

/// What the ETA is computed from.
#[derive(Debug, Default)]
struct Eta {
    epoch_started: Option<std::time::Instant>,
    epoch_images: u64,
    epoch_done: u64,
    epochs_after: u64,
}

impl TrainerMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = TrainerMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "chexvision_trainer_requests_total",
                    "Training requests and dataset triggers, by outcome",
                ),
                &["outcome"],
            )?,
            runs: IntCounterVec::new(
                Opts::new(
                    "chexvision_trainer_runs_total",
                    "Runs that stopped, by outcome",
                ),
                &["outcome"],
            )?,
            queued_runs: IntGauge::new(
                "chexvision_trainer_queued_runs",
                "Runs accepted and not yet started",
            )?,
            run_info: IntGaugeVec::new(
                Opts::new("chexvision_trainer_run_info", "The run training now"),
                &["run_id", "dataset_id", "architecture"],
            )?,
            epoch: IntGauge::new("chexvision_trainer_epoch", "Epoch in progress (0-based)")?,
            step: IntGauge::new("chexvision_trainer_step", "Optimiser steps of the run")?,
            loss: Gauge::new("chexvision_trainer_loss", "Loss of the last micro-batch")?,
            learning_rate: Gauge::new("chexvision_trainer_learning_rate", "Learning rate")?,
            val_macro_auc: Gauge::new(
                "chexvision_trainer_val_macro_auc",
                "Validation macro AUC after the last finished epoch",
            )?,
            val_binary_auc: Gauge::new(
                "chexvision_trainer_val_binary_auc",
                "Validation abnormal AUC after the last finished epoch",
            )?,
            images_per_second: Gauge::new(
                "chexvision_trainer_images_per_second",
                "Training images per second of the last finished epoch",
            )?,
            images: IntCounter::new(
                "chexvision_trainer_images_total",
                "Training images consumed",
            )?,
            loader_wait: Histogram::with_opts(
                HistogramOpts::new(
                    "chexvision_trainer_loader_wait_seconds",
                    "How long the training step waited for a batch",
                )
                .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            )?,
            checkpoints: IntCounter::new(
                "chexvision_trainer_checkpoints_total",
                "Checkpoints announced",
            )?,
            eta_seconds: Gauge::new(
                "chexvision_trainer_eta_seconds",
                "Estimated seconds the run in progress needs still (training images left at the current speed; 0 without a run)",
            )?,
            eta: Default::default(),
        };
        registry.register(Box::new(metrics.requests.clone()))?;
        registry.register(Box::new(metrics.runs.clone()))?;
        registry.register(Box::new(metrics.queued_runs.clone()))?;
        registry.register(Box::new(metrics.run_info.clone()))?;
        registry.register(Box::new(metrics.epoch.clone()))?;
        registry.register(Box::new(metrics.step.clone()))?;
        registry.register(Box::new(metrics.loss.clone()))?;
        registry.register(Box::new(metrics.learning_rate.clone()))?;
        registry.register(Box::new(metrics.val_macro_auc.clone()))?;
        registry.register(Box::new(metrics.val_binary_auc.clone()))?;
        registry.register(Box::new(metrics.images_per_second.clone()))?;
        registry.register(Box::new(metrics.images.clone()))?;
        registry.register(Box::new(metrics.loader_wait.clone()))?;
        registry.register(Box::new(metrics.checkpoints.clone()))?;
        registry.register(Box::new(metrics.eta_seconds.clone()))?;
        Ok(metrics)
    }

    /// Follows a run's progress.
    pub fn observe(&self, progress: RunProgress) {
        match progress {
            RunProgress::EpochStarted {
                epoch,
                epochs,
                images,
            } => {
                self.epoch.set(i64::from(epoch));
                let mut eta = self.eta.lock().unwrap_or_else(|p| p.into_inner());
                *eta = Eta {
                    epoch_started: Some(std::time::Instant::now()),
                    epoch_images: images,
                    epoch_done: 0,
                    epochs_after: u64::from(epochs.saturating_sub(epoch + 1)),
                };
            }
            RunProgress::Batch {
                images,
                loss,
                lr,
                step,
            } => {
                {
                    let mut eta = self.eta.lock().unwrap_or_else(|p| p.into_inner());
                    eta.epoch_done += images as u64;
                    let elapsed = eta.epoch_started.map_or(0.0, |t| t.elapsed().as_secs_f64());
                    if elapsed > 0.0 && eta.epoch_done > 0 {
                        let left = eta.epoch_images.saturating_sub(eta.epoch_done)
                            + eta.epochs_after * eta.epoch_images;
                        let speed = eta.epoch_done as f64 / elapsed;
                        self.eta_seconds.set(left as f64 / speed);
                    }
                }
                self.images.inc_by(images as u64);
                self.loss.set(f64::from(loss));
                self.learning_rate.set(lr);
                self.step.set(i64::try_from(step).unwrap_or(i64::MAX));
            }
            RunProgress::EpochFinished {
                val_macro_auc,
                val_binary_auc,
                images_per_second,
                ..
            } => {
                self.val_macro_auc.set(val_macro_auc.unwrap_or(f64::NAN));
                self.val_binary_auc.set(val_binary_auc.unwrap_or(f64::NAN));
                self.images_per_second.set(images_per_second);
            }
        }
    }
}
