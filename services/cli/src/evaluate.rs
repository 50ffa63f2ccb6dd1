//! `chexvision evaluate` and `chexvision registry`: an evaluation by hand
//! with a progress bar (the same outputs the evaluator service writes), and
//! the model registry for people.

use std::io::Write;

use anyhow::{bail, Context, Result};
use chexvision_bus::publish_event;
use chexvision_config::{Config, Loader};
use chexvision_evaluator::{
    evaluate, promote::register_and_decide, service::model_promoted, CheckpointChoice, EvalHooks,
    EvalProgress, EvaluationRequest, EvaluatorServiceSettings, ModelChoice,
};
use chexvision_events::Envelope;
use chexvision_registry::{PointerChange, Registry};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// The run to evaluate (`runs/{run_id}/`).
    #[arg(long = "run")]
    pub run_id: String,
    /// `best`, `final`, or a checkpoint's key or URI in the store.
    #[arg(long, default_value = "best")]
    pub checkpoint: String,
    /// `test` (default) or `validation`.
    #[arg(long)]
    pub split: Option<String>,
    /// Average four test-time views (original, flip, ±7°).
    #[arg(long)]
    pub tta: bool,
    /// Other runs (their best checkpoints) whose probabilities are averaged
    /// with this one's: `--ensemble RUN_A,RUN_B`.
    #[arg(long, value_delimiter = ',')]
    pub ensemble: Vec<String>,
    /// Evaluate on another dataset than the run's own.
    #[arg(long)]
    pub dataset_id: Option<String>,
    /// `cpu` or `cuda` / `cuda:N`.
    #[arg(long)]
    pub device: Option<String>,
    /// Register the model and let the promotion policy decide on it (a
    /// promotion is announced on the bus as ModelPromoted).
    #[arg(long)]
    pub promote: bool,
    /// No progress bar (for logs).
    #[arg(long)]
    pub quiet: bool,
}

fn load(cli: &crate::Cli) -> Result<Config<EvaluatorServiceSettings>> {
    Ok(Loader::new()
        .file(cli.config.as_ref())
        .store_and_bus_flags(cli.store.as_deref(), cli.bus.as_deref())
        .load()?)
}

pub async fn evaluate_command(
    cli: &crate::Cli,
    args: &EvaluateArgs,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let config = load(cli)?;
    let store = chexvision_store::open(&config.store, &config.s3).await?;
    let mut settings = config.service.evaluation.clone();
    if let Some(split) = &args.split {
        settings.split = split.clone();
    }
    settings.tta |= args.tta;
    if let Some(device) = &args.device {
        settings.device = device.clone();
    }
    let device = chexvision_trainer::parse_device(&settings.device)
        .and_then(|d| d.open())
        .map_err(anyhow::Error::msg)
        .context("--device")?;
    let request = EvaluationRequest {
        model: ModelChoice {
            run_id: args.run_id.clone(),
            checkpoint: CheckpointChoice::parse(&args.checkpoint, &store.uri(""))?,
            expected_sha256: None,
        },
        ensemble: args
            .ensemble
            .iter()
            .filter(|r| !r.is_empty())
            .map(|run_id| ModelChoice {
                run_id: run_id.clone(),
                checkpoint: CheckpointChoice::Best,
                expected_sha256: None,
            })
            .collect(),
        dataset_id: args.dataset_id.clone(),
        settings: settings.clone(),
    };
    let runtime = tokio::runtime::Handle::current();
    let quiet = args.quiet;
    let promote = args.promote;
    let policy = config.service.promotion;
    let task_store = store.clone();
    let (outcome, promotion) = tokio::task::spawn_blocking(move || -> Result<_> {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} images {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut progress = |p: EvalProgress| match p {
            EvalProgress::Scoring { split, total } => {
                bar.reset();
                bar.set_length(total);
                bar.set_message(format!("scoring {}", split.name()));
            }
            EvalProgress::Scored { images } => bar.inc(images as u64),
            EvalProgress::Metrics => bar.set_message("metrics (bootstrap)"),
            EvalProgress::Writing => bar.set_message("writing the report"),
        };
        let outcome = evaluate(
            task_store.clone(),
            runtime.clone(),
            &request,
            &device,
            EvalHooks {
                progress: &mut progress,
                interrupted: &|| false,
            },
        )?;
        bar.finish_and_clear();
        let promotion = if promote {
            let registry = Registry::new(task_store.clone(), "cli");
            Some(register_and_decide(
                task_store,
                &runtime,
                &registry,
                &outcome,
                &policy,
                &settings,
                &device,
                &format!("cli:{}", user()),
                &|| false,
            )?)
        } else {
            None
        };
        Ok((outcome, promotion))
    })
    .await
    .context("evaluation thread")??;
    let report = &outcome.report;
    let num = |v: Option<f64>| v.map_or("undefined".into(), |v| format!("{v:.4}"));
    writeln!(
        out,
        "run {} on {} ({} images, {} patients{}): macro AUC {} (95 % {}), binary AUC {}, {:.1} images/s; {}",
        report.run_id,
        report.split,
        report.images,
        report.patients,
        if report.dataset.synthetic { ", synthetic" } else { "" },
        num(report.macro_auc),
        report
            .macro_auc_interval
            .map_or("–".into(), |[a, b]| format!("{a:.4}–{b:.4}")),
        num(report.binary.auc),
        report.timings.images_per_second,
        store.uri(&outcome.prefix),
    )?;
    if let Some(promotion) = promotion {
        match (&promotion.entry, &promotion.change) {
            (None, _) => writeln!(out, "{} is production already", promotion.record.version)?,
            (Some(entry), change) => {
                writeln!(
                    out,
                    "{} {}: {}",
                    promotion.record.version,
                    entry.action.name(),
                    entry.reason
                )?;
                if let Some(change) = change {
                    announce(&config, change).await?;
                }
            }
        }
    }
    Ok(())
}

fn user() -> String {
    std::env::var("USER").unwrap_or_else(|_| "unknown".into())
}

/// Publishes `ModelPromoted` for a pointer change.
async fn announce(config: &Config<EvaluatorServiceSettings>, change: &PointerChange) -> Result<()> {
    let store = chexvision_store::open(&config.store, &config.s3).await?;
    let bus = chexvision_bus::connect(&config.bus, &config.kafka)?;
    // A fresh broker (or the in-process bus) has no topics yet.
    bus.create_topics(&[chexvision_bus::TopicSpec::new(
        &config.topics.models_promoted,
        config.kafka.partitions,
    )])
    .await
    .context("creating the ModelPromoted topic")?;
    let event = Envelope::new(model_promoted(store.as_ref(), change), crate::PRODUCER);
    publish_event(
        bus.as_ref(),
        &config.topics.models_promoted,
        chexvision_registry::POINTER_KEY,
        &event,
    )
    .await
    .context("announcing ModelPromoted")?;
    bus.flush(std::time::Duration::from_secs(10))
        .await
        .context("flushing the bus")?;
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Every registered model version, oldest first; `*` marks production.
    List,
    /// One version's record (JSON).
    Show { version: String },
    /// Put a version into production by hand.
    Promote {
        version: String,
        /// Why (kept in the registry's history).
        #[arg(long)]
        reason: String,
    },
    /// Move production back: to the version before the current one, or `--to`.
    Rollback {
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        reason: String,
    },
    /// The newest promotions, refusals and rollbacks.
    History {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

pub async fn registry_command(
    cli: &crate::Cli,
    command: &RegistryCommand,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let config = load(cli)?;
    let store = chexvision_store::open(&config.store, &config.s3).await?;
    let registry = Registry::new(store, "cli");
    let by = format!("cli:{}", user());
    match command {
        RegistryCommand::List => {
            let production = registry.production().await?.map(|p| p.version);
            let records = registry.list().await?;
            if records.is_empty() {
                writeln!(out, "no model is registered yet")?;
            }
            for r in records {
                writeln!(
                    out,
                    "{} {}  {}  {}  dataset {}{}  macro AUC {}",
                    if production.as_deref() == Some(r.version.as_str()) {
                        "*"
                    } else {
                        " "
                    },
                    r.version,
                    r.model_kind,
                    r.evaluation.split,
                    r.dataset_id,
                    if r.synthetic { " (synthetic)" } else { "" },
                    r.metrics
                        .macro_auc
                        .map_or("undefined".into(), |a| format!("{a:.4}")),
                )?;
            }
        }
        RegistryCommand::Show { version } => match registry.record(version).await? {
            Some(record) => writeln!(out, "{}", serde_json::to_string_pretty(&record)?)?,
            None => bail!("no model version `{version}` in the registry"),
        },
        RegistryCommand::Promote { version, reason } => {
            let change = registry.promote(version, reason, &by).await?;
            announce(&config, &change).await?;
            writeln!(
                out,
                "production: {} (was {})",
                change.pointer.version,
                change.previous_version.as_deref().unwrap_or("none")
            )?;
        }
        RegistryCommand::Rollback { to, reason } => {
            let change = registry.rollback(to.as_deref(), reason, &by).await?;
            announce(&config, &change).await?;
            writeln!(
                out,
                "production: {} (rolled back from {})",
                change.pointer.version,
                change.previous_version.as_deref().unwrap_or("none")
            )?;
        }
        RegistryCommand::History { limit } => {
            for e in registry.history((*limit).min(10_000)).await? {
                writeln!(
                    out,
                    "{}  {:<16} {}  (before: {})  by {}: {}",
                    e.id,
                    e.action.name(),
                    e.version,
                    e.previous_version.as_deref().unwrap_or("none"),
                    e.by,
                    e.reason
                )?;
            }
        }
    }
    Ok(())
}
