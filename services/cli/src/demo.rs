//! `chexvision demo`: the whole product in one process, on the embedded
//! default (a local folder store and the in-process bus) or on whatever
//! `--store` / `--bus` name: synthetic chest X-rays → ingest → preprocess
//! → train the tiny config → evaluate (intervals) → register and promote →
//! serve the API and the web page. A second run finds the model in
//! production and serves at once.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use chexvision_config::{Config, Loader};
use chexvision_evaluator::Report;
use chexvision_registry::Registry;
use chexvision_store::get_json;
use chexvision_trainer::TrainSettings;
use clap::Args;

use crate::{data, evaluate, serve, train, Cli};

/// The dataset the demo makes.
const DATASET: &str = "demo";
/// The training config, relative to the repository root.
const TINY: &str = "configs/tiny.yaml";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Synthetic images to make (70 % train, 10 % validation, 20 % test).
    #[arg(long, default_value_t = 2000)]
    pub rows: usize,
    /// Training epochs (default: the training config's).
    #[arg(long)]
    pub epochs: Option<u32>,
    /// The training config (default: configs/tiny.yaml, a small DenseNet at
    /// 64 px that trains in minutes on two cores).
    #[arg(long)]
    pub train_config: Option<PathBuf>,
    /// Where the API and the web page listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Train again even when a model is in production.
    #[arg(long)]
    pub fresh: bool,
    /// Stop once the model is promoted (no server).
    #[arg(long)]
    pub no_serve: bool,
    /// No progress bars (for logs).
    #[arg(long)]
    pub quiet: bool,
}

/// The same store and bus with another config file (the stages' functions
/// read only these three from a `Cli`; the command is never run).
fn with_config(cli: &Cli, config: Option<PathBuf>) -> Cli {
    Cli {
        config,
        store: cli.store.clone(),
        bus: cli.bus.clone(),
        command: crate::Command::Topics(crate::TopicsCommand::Create),
    }
}

fn stage(out: &mut (dyn Write + Send), n: usize, what: &str) -> Result<Instant> {
    writeln!(out, "\n[{n}/6] {what}")?;
    out.flush()?;
    Ok(Instant::now())
}

pub async fn demo(cli: &Cli, args: &DemoArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    if !(100..=200_000).contains(&args.rows) {
        bail!("--rows {}: must be 100..=200000", args.rows);
    }
    let platform = cli.load_config()?;
    let store = chexvision_store::open(&platform.store, &platform.s3).await?;
    let registry = Registry::new(store.clone(), "demo");
    let production = registry.production_record().await?;
    let started = Instant::now();
    match production {
        Some(record) if !args.fresh => {
            writeln!(
                out,
                "{} is in production in {}: serving it (--fresh trains a new one)",
                record.version, platform.store
            )?;
        }
        _ => {
            build_model(cli, args, &platform.store, out).await?;
        }
    }
    let record = registry
        .production_record()
        .await?
        .context("no model in production after the demo's evaluation")?;
    if let Ok(Some(report)) =
        get_json::<Report>(store.as_ref(), &record.evaluation.report_key).await
    {
        print_report(out, &record.version, &report)?;
    }
    let prefix = record
        .evaluation
        .report_key
        .trim_end_matches("report.json")
        .to_owned();
    writeln!(
        out,
        "\nreport, predictions and plots: {} (report.md, roc.png, ...)",
        store.uri(&prefix)
    )?;
    writeln!(out, "ready in {:.0} s", started.elapsed().as_secs_f64())?;
    if args.no_serve {
        return Ok(());
    }
    let url = format!("http://{}", args.bind);
    writeln!(
        out,
        "\n[6/6] serve\nthe web page: {url}/\ntry the API:\n  curl -s -H 'Content-Type: image/png' --data-binary @chest.png {url}/v1/predict\n  curl -s -H 'Content-Type: application/dicom' -H 'Accept: application/fhir+json' --data-binary @chest.dcm {url}/v1/predict\n  (synthetic PNGs: chexvision synth --rows 5 --size 256 --out samples; the model learnt synthetic images: its answers say nothing about patients)"
    )?;
    // The inference service's own settings: the API where asked, the
    // operations endpoints on any free port (9090 may be taken).
    let dir = tempfile::tempdir()?;
    let serve_config = dir.path().join("serve.yaml");
    std::fs::write(
        &serve_config,
        format!(
            "http:\n  bind: 127.0.0.1:0\nservice:\n  api:\n    bind: {}\n  model:\n    registry_poll_secs: 5\n",
            args.bind
        ),
    )?;
    let serve_cli = with_config(cli, Some(serve_config));
    serve::serve(
        &serve_cli,
        &serve::ServeArgs {
            checkpoint: None,
            checkpoint_sha256: None,
            bind: Some(args.bind.clone()),
        },
        out,
    )
    .await
}

/// Stages 1 to 5: a trained, evaluated, promoted model.
async fn build_model(
    cli: &Cli,
    args: &DemoArgs,
    store_uri: &str,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let train_config = args
        .train_config
        .clone()
        .unwrap_or_else(|| PathBuf::from(TINY));
    if !Path::new(&train_config).is_file() {
        bail!(
            "{}: no such training config (run the demo from the repository root, or pass --train-config)",
            train_config.display()
        );
    }
    let training: Config<TrainSettings> = Loader::new()
        .file(Some(&train_config))
        .store_and_bus_flags(cli.store.as_deref(), cli.bus.as_deref())
        .load()?;
    let size = training.service.image_size;
    let platform = cli.load_config()?;

    let t = stage(
        out,
        1,
        &format!("{} synthetic chest X-rays, 256 px", args.rows),
    )?;
    let source = tempfile::tempdir()?;
    data::synth(
        data::SynthArgs {
            rows: args.rows,
            size: 256,
            seed: 7,
            out: source.path().display().to_string(),
            min_finding_share: 0.05,
            visible_at: size,
            quiet: args.quiet,
        },
        &platform,
        out,
    )
    .await?;
    writeln!(out, "  {:.1} s", t.elapsed().as_secs_f64())?;

    let t = stage(out, 2, &format!("ingest into {store_uri}"))?;
    data::ingest(
        data::IngestArgs {
            source: source.path().display().to_string(),
            dataset_id: DATASET.into(),
            shard_rows: Some(500),
            shard_bytes: None,
            max_rejected_share: None,
            quiet: args.quiet,
        },
        &platform,
        out,
    )
    .await?;
    writeln!(out, "  {:.1} s", t.elapsed().as_secs_f64())?;

    let t = stage(out, 3, &format!("preprocess to {size} px (CLAHE)"))?;
    data::preprocess(
        data::PreprocessArgs {
            dataset_id: DATASET.into(),
            size,
            format: data::ReadyFormatArg::Raw,
            quiet: args.quiet,
        },
        &platform,
        out,
    )
    .await?;
    writeln!(out, "  {:.1} s", t.elapsed().as_secs_f64())?;

    let t = stage(out, 4, &format!("train ({})", train_config.display()))?;
    let run_id = format!("demo-{}", chrono_free_stamp());
    // Epochs from the flag: a config that inherits the chosen one.
    let dir = tempfile::tempdir()?;
    let config = match args.epochs {
        Some(epochs) => {
            let path = dir.path().join("train.yaml");
            std::fs::write(
                &path,
                format!(
                    "inherits: {}\nservice:\n  recipe:\n    epochs: {epochs}\n",
                    std::fs::canonicalize(&train_config)?.display()
                ),
            )?;
            path
        }
        None => train_config.clone(),
    };
    train::train(
        &with_config(cli, Some(config)),
        &train::TrainArgs {
            dataset_id: DATASET.into(),
            run_id: Some(run_id.clone()),
            quiet: args.quiet,
        },
        out,
    )
    .await?;
    writeln!(out, "  {:.1} s", t.elapsed().as_secs_f64())?;

    let t = stage(out, 5, "evaluate on the test split, register, promote")?;
    evaluate::evaluate_command(
        &with_config(cli, None),
        &evaluate::EvaluateArgs {
            run_id,
            checkpoint: "best".into(),
            split: None,
            tta: false,
            ensemble: Vec::new(),
            dataset_id: None,
            device: None,
            promote: true,
            quiet: args.quiet,
        },
        out,
    )
    .await?;
    writeln!(out, "  {:.1} s", t.elapsed().as_secs_f64())?;
    Ok(())
}

/// Seconds since the epoch: a run id that sorts by time.
fn chrono_free_stamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn print_report(out: &mut (dyn Write + Send), version: &str, report: &Report) -> Result<()> {
    let num = |v: Option<f64>| v.map_or("   –  ".into(), |v| format!("{v:.4}"));
    let interval = |i: Option<[f64; 2]>| i.map_or("–".into(), |[a, b]| format!("{a:.3}–{b:.3}"));
    writeln!(
        out,
        "\nmodel {version}: {} split, {} images{}",
        report.split,
        report.images,
        if report.dataset.synthetic {
            " (synthetic: says nothing about patients)"
        } else {
            ""
        }
    )?;
    writeln!(
        out,
        "  {:<20} {:>7}  {:<13} {:>9}",
        "finding", "AUC", "95 % interval", "positives"
    )?;
    for f in report
        .findings
        .iter()
        .chain(std::iter::once(&report.binary))
    {
        writeln!(
            out,
            "  {:<20} {:>7}  {:<13} {:>9}",
            f.name,
            num(f.auc),
            interval(f.auc_interval),
            f.positives
        )?;
    }
    writeln!(
        out,
        "  {:<20} {:>7}  {:<13}",
        "macro (14 findings)",
        num(report.macro_auc),
        interval(report.macro_auc_interval)
    )?;
    Ok(())
}
