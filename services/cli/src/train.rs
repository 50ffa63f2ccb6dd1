//! `chexvision train`: a training run by hand, with a progress bar; writes
//! the same run folder the trainer service does.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use chexvision_config::{Config, Loader};
use chexvision_models::candle_core::Device;
use chexvision_trainer::{run_training, RunHooks, RunProgress, TrainSettings};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Dataset whose ready shards to train on (`ready/{image_size}px/`).
    #[arg(long)]
    pub dataset_id: String,
    /// Run id: the folder `runs/{run_id}/`. Running again with the same id
    /// resumes the run.
    #[arg(long)]
    pub run_id: Option<String>,
    /// No progress bar (for logs).
    #[arg(long)]
    pub quiet: bool,
}

pub async fn train(cli: &crate::Cli, args: &TrainArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let config: Config<TrainSettings> = Loader::new()
        .file(cli.config.as_ref())
        .store_and_bus_flags(cli.store.as_deref(), cli.bus.as_deref())
        .load()?;
    let store = chexvision_store::open(&config.store, &config.s3).await?;
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", args.dataset_id, uuid::Uuid::now_v7()));
    let settings = config.service.clone();
    let dataset_id = args.dataset_id.clone();
    let quiet = args.quiet;
    let runtime = tokio::runtime::Handle::current();
    let started = Instant::now();
    let run = run_id.clone();
    let (state, lines) = tokio::task::spawn_blocking(move || {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} images {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut lines = Vec::new();
        let mut progress = |p: RunProgress| match p {
            RunProgress::EpochStarted {
                epoch,
                epochs,
                images,
            } => {
                bar.reset();
                bar.set_length(images);
                bar.set_message(format!("epoch {}/{epochs}", epoch + 1));
            }
            RunProgress::Batch { images, loss, .. } => {
                bar.inc(images as u64);
                bar.set_message(format!(
                    "{} loss {loss:.4}",
                    bar.message().split(" loss").next().unwrap_or("")
                ));
            }
            RunProgress::EpochFinished {
                epoch,
                val_macro_auc,
                images_per_second,
                ..
            } => {
                let line = format!(
                    "epoch {epoch}: validation macro AUC {}, {images_per_second:.1} images/s",
                    val_macro_auc.map_or("undefined".into(), |a| format!("{a:.4}"))
                );
                bar.println(&line);
                lines.push(line);
            }
        };
        let state = run_training(
            store,
            runtime,
            &run,
            &dataset_id,
            &settings,
            &Device::Cpu,
            RunHooks {
                progress: &mut progress,
                // Nothing to announce to: a run by hand has no bus.
                written: &mut |_| true,
                interrupted: &|| false,
                loader_wait: None,
            },
        );
        bar.finish_and_clear();
        state.map(|s| (s, lines)).map_err(anyhow::Error::from)
    })
    .await
    .context("training thread")??;
    for line in &lines {
        if args.quiet {
            writeln!(out, "{line}")?;
        }
    }
    writeln!(
        out,
        "run {run_id}: {:?} after {} epochs ({} steps), best validation macro AUC {} at epoch {}; {:.0} s; runs/{run_id}/ in {}",
        state.status,
        state.epochs_done,
        state.step,
        state.early_stopping.best.map_or("undefined".into(), |a| format!("{a:.4}")),
        state.early_stopping.best_epoch.map_or("-".into(), |e| e.to_string()),
        started.elapsed().as_secs_f64(),
        config.store
    )?;
    Ok(())
}
