//! `chexvision synth` and `chexvision ingest`.

use std::{io::Write, path::Path, time::Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use chexvision_bus::TopicSpec;
use chexvision_config::PlatformConfig;
use chexvision_ingest::{Ingest, IngestSettings, Progress, Source};
use chexvision_synth::{Generator, SynthConfig, SynthOptions};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Number of images.
    #[arg(long)]
    pub rows: usize,
    /// Edge of the square images, in pixels.
    #[arg(long, default_value_t = 1024)]
    pub size: u32,
    /// Seed: the same seed gives the same files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output: a folder, or s3://bucket/prefix (written in the NIH layout).
    #[arg(long)]
    pub out: String,
    /// Draw every finding in at least this share of the images (0 to 0.1;
    /// 0: the real NIH frequencies) by reweighting the real label sets; for
    /// small sets, where rare findings would have no validation positives.
    #[arg(long, default_value_t = 0.0)]
    pub min_finding_share: f64,
    /// Draw the findings thinner than a pixel or two at this training size
    /// (nodules, plate atelectasis, fibrosis, pleural thickening) larger, so
    /// they survive the downscale (0: off).
    #[arg(long, default_value_t = 0)]
    pub visible_at: u32,
    /// No progress bar (for logs).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The source: a folder, file:///path or s3://bucket/prefix holding the
    /// NIH layout or the published 320 px Parquet files.
    #[arg(long)]
    pub source: String,
    /// Dataset id: shards go to datasets/{id}/ in the store.
    #[arg(long)]
    pub dataset_id: String,
    /// Close a shard at this many rows.
    #[arg(long)]
    pub shard_rows: Option<u32>,
    /// Close a shard at this many bytes of images.
    #[arg(long)]
    pub shard_bytes: Option<u64>,
    /// Fail when more than this share of the images is rejected (0 to 1).
    #[arg(long)]
    pub max_rejected_share: Option<f64>,
    /// No progress bar (for logs).
    #[arg(long)]
    pub quiet: bool,
}

fn bar(total: u64, quiet: bool, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(&format!(
        "{what} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} ({{per_sec}}, eta {{eta}})"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

pub async fn synth(
    args: SynthArgs,
    config: &PlatformConfig,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let synth_config = SynthConfig {
        rows: args.rows,
        size_px: args.size,
        seed: args.seed,
    };
    let options = SynthOptions {
        min_finding_share: args.min_finding_share,
        visible_at_px: args.visible_at,
    };
    let generator =
        Generator::with_options(synth_config, options).context("synthetic generator")?;
    let started = Instant::now();
    let progress = bar(args.rows as u64, args.quiet, "synth");
    if args.out.starts_with("s3://") {
        // Written to a local folder first, then uploaded file by file.
        let staging = tempfile::tempdir().context("temporary folder")?;
        write_folder(&generator, staging.path(), progress.clone()).await?;
        let store = chexvision_store::open(&args.out, &config.s3).await?;
        upload_folder(staging.path(), store.as_ref()).await?;
    } else {
        let folder = args.out.strip_prefix("file://").unwrap_or(&args.out);
        write_folder(&generator, Path::new(folder), progress.clone()).await?;
    }
    progress.finish_and_clear();
    let mut extras = String::new();
    if args.min_finding_share > 0.0 {
        extras.push_str(&format!(
            ", every finding in >= {:.1} % of images",
            100.0 * args.min_finding_share
        ));
    }
    if args.visible_at > 0 {
        extras.push_str(&format!(", findings visible at {} px", args.visible_at));
    }
    writeln!(
        out,
        "wrote {} synthetic images ({} px, seed {}{extras}) in the NIH layout to {} in {:.1} s",
        args.rows,
        args.size,
        args.seed,
        args.out,
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}

async fn write_folder(generator: &Generator, folder: &Path, progress: ProgressBar) -> Result<()> {
    let generator = generator.clone();
    let folder = folder.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&folder).with_context(|| format!("create {}", folder.display()))?;
        chexvision_synth::write_nih_layout(&folder, &generator, |n| progress.set_position(n as u64))
            .map(|_| ())
            .with_context(|| format!("write {}", folder.display()))
    })
    .await?
}

async fn upload_folder(folder: &Path, store: &dyn chexvision_store::ObjectStore) -> Result<()> {
    let mut pending = vec![folder.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let key = path
                .strip_prefix(folder)?
                .to_string_lossy()
                .replace(std::path::MAIN_SEPARATOR, "/");
            let bytes = tokio::fs::read(&path).await?;
            store.put(&key, Bytes::from(bytes)).await?;
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct PreprocessArgs {
    /// Dataset to preprocess (ingested before: its manifest is read).
    #[arg(long)]
    pub dataset_id: String,
    /// Edge of the square ready images, in pixels.
    #[arg(long, default_value_t = 320)]
    pub size: u32,
    /// How ready images are stored: raw 8-bit pixels or PNG.
    #[arg(long, value_enum, default_value_t = ReadyFormatArg::Raw)]
    pub format: ReadyFormatArg,
    /// No progress bar (for logs).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ReadyFormatArg {
    Raw,
    Png,
}

pub async fn preprocess(
    args: PreprocessArgs,
    config: &PlatformConfig,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let settings = chexvision_preprocess::PreprocessSettings {
        size_px: args.size,
        ready_format: match args.format {
            ReadyFormatArg::Raw => chexvision_preprocess::ReadyFormat::Raw,
            ReadyFormatArg::Png => chexvision_preprocess::ReadyFormat::Png,
        },
        ..Default::default()
    };
    if let Some((key, why)) = chexvision_config::Validate::validate(&settings).first() {
        let flag = if key == "size_px" { "--size" } else { key };
        bail!("{flag} {why}");
    }
    let store = chexvision_store::open(&config.store, &config.s3).await?;
    let bus = chexvision_bus::connect(&config.bus, &config.kafka)?;
    bus.create_topics(&[
        TopicSpec::new(&config.topics.shards_ready, config.kafka.partitions),
        TopicSpec::new(&config.topics.datasets, config.kafka.partitions),
    ])
    .await?;
    let preprocess = chexvision_preprocess::Preprocess {
        store,
        bus,
        topics: config.topics.clone(),
        settings,
    };
    let progress = bar(0, args.quiet, "preprocess shards");
    let started = Instant::now();
    let (outcomes, ready) = preprocess
        .run_dataset(&args.dataset_id, &|done, total| {
            progress.set_length(total as u64);
            progress.set_position(done as u64);
        })
        .await?;
    progress.finish_and_clear();
    let (mut written, mut skipped, mut rows, mut rejected) = (0, 0, 0, 0);
    for outcome in &outcomes {
        let shard = match outcome {
            chexvision_preprocess::ShardOutcome::Written(s) => {
                written += 1;
                s
            }
            chexvision_preprocess::ShardOutcome::Skipped(s) => {
                skipped += 1;
                s
            }
        };
        rows += shard.rows;
        rejected += shard.rejected.len();
    }
    writeln!(
        out,
        "dataset {} at {} px: {rows} images ready, {rejected} rejected; shards: {written} written, {skipped} already done; in {:.1} s",
        args.dataset_id,
        args.size,
        started.elapsed().as_secs_f64()
    )?;
    match ready {
        Some(_) => writeln!(out, "announced: dataset ready")?,
        None => writeln!(out, "dataset ready was announced before")?,
    }
    Ok(())
}

/// Progress of an ingest as a terminal bar.
struct BarProgress(ProgressBar);

impl Progress for BarProgress {
    fn add_total(&self, images: u64) {
        self.0.inc_length(images);
    }

    fn advance(&self, images: u64) {
        self.0.inc(images);
    }
}

pub async fn ingest(
    args: IngestArgs,
    config: &PlatformConfig,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let mut settings = IngestSettings::default();
    if let Some(rows) = args.shard_rows {
        settings.shard_target_rows = rows;
    }
    if let Some(bytes) = args.shard_bytes {
        settings.shard_target_bytes = bytes;
    }
    if let Some(share) = args.max_rejected_share {
        settings.max_rejected_share = share;
    }
    let problems = chexvision_config::Validate::validate(&settings);
    if let Some((key, why)) = problems.first() {
        let flag = match key.as_str() {
            "shard_target_rows" => "--shard-rows",
            "shard_target_bytes" => "--shard-bytes",
            "max_rejected_share" => "--max-rejected-share",
            other => other,
        };
        bail!("{flag} {why}");
    }
    let store = chexvision_store::open(&config.store, &config.s3).await?;
    let bus = chexvision_bus::connect(&config.bus, &config.kafka)?;
    bus.create_topics(&[
        TopicSpec::new(&config.topics.shards_raw, config.kafka.partitions),
        TopicSpec::new(&config.topics.dead_letter, 1),
    ])
    .await?;
    let source = Source::open(&args.source, &config.s3).await?;
    let ingest = Ingest {
        store,
        bus,
        topics: config.topics.clone(),
        settings,
        metrics: None,
    };
    let progress = BarProgress(bar(0, args.quiet, "ingest"));
    let started = Instant::now();
    let report = ingest
        .run(source, &args.dataset_id, None, &progress)
        .await?;
    progress.0.finish_and_clear();
    let manifest = &report.manifest;
    let seconds = started.elapsed().as_secs_f64();
    writeln!(
        out,
        "dataset {}{}: {} images (train {}, validation {}, test {}), {} rejected, in {:.1} s",
        manifest.dataset_id,
        if manifest.synthetic {
            " (synthetic)"
        } else {
            ""
        },
        manifest.rows_total,
        manifest.rows_per_split.get("train").copied().unwrap_or(0),
        manifest
            .rows_per_split
            .get("validation")
            .copied()
            .unwrap_or(0),
        manifest.rows_per_split.get("test").copied().unwrap_or(0),
        manifest.rejected_total,
        seconds,
    )?;
    writeln!(
        out,
        "shards: {} written, {} already done; manifest {} (sha256 {})",
        report.shards_written, report.shards_skipped, report.manifest_uri, report.manifest_sha256
    )?;
    Ok(())
}
