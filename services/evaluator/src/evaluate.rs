//! One evaluation, start to end: the checkpoint (digest checked), the
//! dataset's ready manifest at the model's input size, thresholds chosen on
//! the validation split, the reported split scored (with TTA and ensemble
//! members as asked), every metric, and the outputs written under
//! [`evaluation_prefix`]:
//!
//! ```text
//! evaluations/{run_id}/{sha12}[-{split}][-tta][-ensemble-{sha12 of members}][-on-{dataset}]/
//!   report.json  predictions.parquet  report.md  *.png
//! ```
//!
//! The plain evaluation of a checkpoint (test split, no TTA, no ensemble,
//! its own dataset) lives at `evaluations/{run_id}/{sha12}/`; variants get
//! their own folder so they never overwrite it.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chexvision_dataset::{ready_manifest_key, ReadyManifest, Split, LABELS};
use chexvision_metrics::BootstrapConfig;
use chexvision_models::candle_core::Device;
use chexvision_models::ModelConfig;
use chexvision_store::{sha256_hex, ObjectStore};
use chexvision_trainer::{read_run_state, EpochRecord, RunState};

use crate::plots::{all_plots, HistoryPoint};
use crate::predictions::write_predictions;
use crate::report::{
    check_probabilities, compute, DatasetInfo, ModelInfo, Report, ThresholdInfo, Timings,
    REPORT_SCHEMA_VERSION,
};
use crate::score::{score_split, ModelRunner, ScoreOptions, SplitScores};
use crate::settings::EvaluationSettings;
use crate::summary::{model_card_section, report_markdown};
use crate::EvalError;

/// Further models an ensemble may average with the first.
pub const MAX_ENSEMBLE: usize = 7;

/// Which checkpoint of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointChoice {
    /// The epoch with the best validation macro AUC (`history.json`).
    Best,
    /// The last finished epoch.
    Final,
    /// A key in the store (an epoch file, `best.safetensors`, ...).
    Key(String),
}

impl CheckpointChoice {
    /// `best`, `final`, or a store key / URI (`uri_prefix` is the store's
    /// URI of the empty key; a URI elsewhere is refused).
    pub fn parse(text: &str, uri_prefix: &str) -> Result<Self, EvalError> {
        match text {
            "best" => Ok(CheckpointChoice::Best),
            "final" => Ok(CheckpointChoice::Final),
            other if other.contains("://") => chexvision_store::key_of_uri(other, uri_prefix)
                .map(CheckpointChoice::Key)
                .ok_or_else(|| {
                    EvalError::Invalid(format!(
                        "checkpoint {other} is not in this store ({uri_prefix})"
                    ))
                }),
            key => Ok(CheckpointChoice::Key(key.to_owned())),
        }
    }
}

/// A model of an evaluation: a run and which of its checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelChoice {
    pub run_id: String,
    pub checkpoint: CheckpointChoice,
    /// The sha256 the caller was told (an event's); checked when given.
    pub expected_sha256: Option<String>,
}

/// What to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluationRequest {
    pub model: ModelChoice,
    /// Further models whose probabilities are averaged with the first's.
    pub ensemble: Vec<ModelChoice>,
    /// Another dataset than the run's own (a champion re-evaluated on a
    /// challenger's images).
    pub dataset_id: Option<String>,
    pub settings: EvaluationSettings,
}

/// A resolved checkpoint, its bytes verified.
pub struct ResolvedModel {
    pub info: ModelInfo,
    pub state: RunState,
    pub history: Vec<EpochRecord>,
    pub bytes: Bytes,
}

/// What an evaluation wrote.
#[derive(Debug, Clone)]
pub struct EvaluationOutcome {
    pub report: Report,
    pub prefix: String,
    pub report_key: String,
    pub report_sha256: String,
    pub report_size: u64,
    pub predictions_key: String,
    pub scores: SplitScores,
}

/// Phases an evaluation reports, for a progress bar or metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EvalProgress {
    /// Scoring `split`, `total` images expected.
    Scoring {
        split: Split,
        total: u64,
    },
    /// `images` more of the current split scored.
    Scored {
        images: usize,
    },
    Metrics,
    Writing,
}

/// How an evaluation reports and is stopped.
pub struct EvalHooks<'a> {
    pub progress: &'a mut dyn FnMut(EvalProgress),
    /// Polled between batches: true stops the evaluation (SIGTERM).
    pub interrupted: &'a dyn Fn() -> bool,
}

fn model_kind(config: &ModelConfig) -> &'static str {
    match config {
        ModelConfig::Densenet(_) => "densenet121",
        ModelConfig::SeResnet(_) => "se_resnet",
    }
}

fn sha12(sha: &str) -> String {
    sha.chars().take(12).collect()
}

/// Where the evaluation of `request`'s checkpoint with `sha256` goes.
pub fn evaluation_prefix(
    request: &EvaluationRequest,
    sha256: &str,
    member_shas: &[String],
    own_dataset: &str,
) -> String {
    let mut folder = sha12(sha256);
    if request.settings.split != "test" {
        folder.push_str(&format!("-{}", request.settings.split));
    }
    if request.settings.tta {
        folder.push_str("-tta");
    }
    if !member_shas.is_empty() {
        folder.push_str(&format!(
            "-ensemble-{}",
            sha12(&sha256_hex(member_shas.join(",").as_bytes()))
        ));
    }
    if let Some(dataset) = request.dataset_id.as_deref().filter(|d| *d != own_dataset) {
        folder.push_str(&format!("-on-{dataset}"));
    }
    format!("evaluations/{}/{folder}/", request.model.run_id)
}

/// Reads `runs/{run_id}` and the chosen checkpoint, verified.
pub fn resolve_model(
    store: &dyn ObjectStore,
    runtime: &tokio::runtime::Handle,
    choice: &ModelChoice,
) -> Result<ResolvedModel, EvalError> {
    let run_id = &choice.run_id;
    if !chexvision_dataset::is_valid_id(run_id) {
        return Err(EvalError::Invalid(format!("`{run_id}` is not a run id")));
    }
    let state = runtime
        .block_on(read_run_state(store, run_id))
        .map_err(|e| EvalError::Store(format!("runs/{run_id}/state.json: {e}")))?
        .ok_or_else(|| EvalError::UnknownRun(run_id.clone()))?;
    let history_key = format!("runs/{run_id}/history.json");
    let history: Vec<EpochRecord> = runtime
        .block_on(chexvision_store::get_json(store, &history_key))
        .map_err(|e| EvalError::Store(format!("{history_key}: {e}")))?
        .unwrap_or_default();
    let epoch_key = |e: u32| format!("runs/{run_id}/checkpoints/epoch-{e:03}.safetensors");
    let (key, epoch, recorded_sha) = match &choice.checkpoint {
        CheckpointChoice::Best => {
            let best = history.iter().rev().find(|r| r.best).ok_or_else(|| {
                EvalError::MissingCheckpoint(format!("run {run_id} has no best checkpoint yet"))
            })?;
            (
                epoch_key(best.epoch),
                Some(best.epoch),
                Some(best.checkpoint_sha256.clone()),
            )
        }
        CheckpointChoice::Final => {
            let last = history.last().ok_or_else(|| {
                EvalError::MissingCheckpoint(format!("run {run_id} has no finished epoch"))
            })?;
            (
                epoch_key(last.epoch),
                Some(last.epoch),
                Some(last.checkpoint_sha256.clone()),
            )
        }
        CheckpointChoice::Key(key) => {
            chexvision_store::validate_key(key)
                .map_err(|e| EvalError::Invalid(format!("checkpoint key: {e}")))?;
            let epoch = history
                .iter()
                .find(|r| epoch_key(r.epoch) == *key)
                .map(|r| r.epoch);
            (key.clone(), epoch, None)
        }
    };
    let bytes = match runtime.block_on(store.get(&key)) {
        Ok(bytes) => bytes,
        Err(e) if e.is_not_found() => {
            return Err(EvalError::MissingCheckpoint(format!(
                "{key} does not exist"
            )))
        }
        Err(e) => return Err(EvalError::Store(format!("reading {key}: {e}"))),
    };
    let sha256 = sha256_hex(&bytes);
    for expected in [choice.expected_sha256.as_ref(), recorded_sha.as_ref()]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
    {
        if *expected != sha256 {
            return Err(EvalError::Corrupt(format!(
                "{key} has sha256 {sha256}, but {expected} was announced for it"
            )));
        }
    }
    Ok(ResolvedModel {
        info: ModelInfo {
            run_id: run_id.clone(),
            checkpoint_uri: store.uri(&key),
            checkpoint_key: key,
            checkpoint_sha256: sha256,
            checkpoint_bytes: bytes.len() as u64,
            model_kind: model_kind(&state.settings.model).into(),
            epoch,
        },
        state,
        history,
        bytes,
    })
}

/// The ready manifest of `dataset_id` at `size`, and its sha256.
fn ready_manifest(
    store: &dyn ObjectStore,
    runtime: &tokio::runtime::Handle,
    dataset_id: &str,
    size: u32,
) -> Result<(String, ReadyManifest, String), EvalError> {
    let key = ready_manifest_key(dataset_id, size);
    let bytes = match runtime.block_on(store.get(&key)) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => {
            return Err(EvalError::NotPrepared(
                chexvision_trainer::plan::not_prepared(dataset_id, size),
            ))
        }
        Err(e) => return Err(EvalError::Store(format!("reading {key}: {e}"))),
    };
    let manifest: ReadyManifest =
        serde_json::from_slice(&bytes).map_err(|e| EvalError::Data(format!("{key}: {e}")))?;
    if manifest.manifest.label_order != LABELS {
        return Err(EvalError::Data(format!(
            "{key}: label order differs from this build's"
        )));
    }
    let sha = sha256_hex(&bytes);
    Ok((key, manifest, sha))
}

fn split_keys(manifest: &ReadyManifest, split: Split) -> (Vec<String>, u64) {
    let keys = manifest
        .manifest
        .shards
        .iter()
        .filter(|s| s.split == split.name() && s.rows > 0)
        .map(|s| s.key.clone())
        .collect();
    let rows = manifest
        .manifest
        .rows_per_split
        .get(split.name())
        .copied()
        .unwrap_or(0);
    (keys, rows)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs `request` and writes its outputs. Synchronous (model compute);
/// store calls go through `runtime`, which must not be driven by this
/// thread.
pub fn evaluate(
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Handle,
    request: &EvaluationRequest,
    device: &Device,
    hooks: EvalHooks<'_>,
) -> Result<EvaluationOutcome, EvalError> {
    let started = Instant::now();
    let EvalHooks {
        progress,
        interrupted,
    } = hooks;
    let mut problems = request.settings.problems();
    if request.ensemble.len() > MAX_ENSEMBLE {
        problems.push((
            "ensemble".into(),
            format!(
                "{} further models; at most {MAX_ENSEMBLE} (each is held in memory)",
                request.ensemble.len()
            ),
        ));
    }
    if !problems.is_empty() {
        let text: Vec<String> = problems.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        return Err(EvalError::Invalid(text.join("; ")));
    }
    let main = resolve_model(store.as_ref(), &runtime, &request.model)?;
    let mut members = Vec::new();
    for choice in &request.ensemble {
        members.push(resolve_model(store.as_ref(), &runtime, choice)?);
    }
    let mut runners = vec![ModelRunner::new(&main.bytes, device)?];
    for member in &members {
        runners.push(ModelRunner::new(&member.bytes, device)?);
    }
    let size = runners[0].input_size;
    let dataset_id = request
        .dataset_id
        .clone()
        .unwrap_or_else(|| main.state.dataset_id.clone());
    let (manifest_key, manifest, manifest_sha) =
        ready_manifest(store.as_ref(), &runtime, &dataset_id, size)?;
    let split = Split::from_name(&request.settings.split)
        .ok_or_else(|| EvalError::Invalid(format!("split `{}`", request.settings.split)))?;
    let options = ScoreOptions {
        tta: request.settings.tta,
        batch_size: request.settings.batch_size,
    };
    let mut score = |split: Split| -> Result<SplitScores, EvalError> {
        let (keys, total) = split_keys(&manifest, split);
        if keys.is_empty() {
            return Err(EvalError::Data(format!(
                "dataset {dataset_id} has no ready {} images at {size} px",
                split.name()
            )));
        }
        progress(EvalProgress::Scoring { split, total });
        let scores = score_split(
            store.clone(),
            runtime.clone(),
            &keys,
            &runners,
            &options,
            &mut |images| progress(EvalProgress::Scored { images }),
            interrupted,
        )?;
        check_probabilities(&scores).map_err(EvalError::Model)?;
        Ok(scores)
    };
    let validation_started = Instant::now();
    let validation = score(Split::Validation)?;
    let validation_seconds = validation_started.elapsed().as_secs_f64();
    let scoring_started = Instant::now();
    let scores = if split == Split::Validation {
        validation.clone()
    } else {
        score(split)?
    };
    let scoring_seconds = if split == Split::Validation {
        validation_seconds
    } else {
        scoring_started.elapsed().as_secs_f64()
    };
    if scores.rows() == 0 {
        return Err(EvalError::Data(format!(
            "no image of the {} split could be scored ({} skipped)",
            split.name(),
            scores.skipped.len()
        )));
    }

    progress(EvalProgress::Metrics);
    let metrics_started = Instant::now();
    let bootstrap = BootstrapConfig {
        resamples: request.settings.bootstrap_resamples,
        seed: request.settings.bootstrap_seed,
        confidence: 0.95,
    };
    let metrics = compute(
        &scores,
        &validation,
        request.settings.threshold_rule,
        &bootstrap,
    );
    let metrics_seconds = metrics_started.elapsed().as_secs_f64();

    let member_shas: Vec<String> = members
        .iter()
        .map(|m| m.info.checkpoint_sha256.clone())
        .collect();
    let prefix = evaluation_prefix(
        request,
        &main.info.checkpoint_sha256,
        &member_shas,
        &main.state.dataset_id,
    );
    let mut ensemble = vec![main.info.clone()];
    ensemble.extend(members.iter().map(|m| m.info.clone()));
    let mut report = Report {
        schema_version: REPORT_SCHEMA_VERSION,
        run_id: main.info.run_id.clone(),
        dataset: DatasetInfo {
            dataset_id: dataset_id.clone(),
            ready_manifest_key: manifest_key,
            ready_manifest_sha256: manifest_sha,
            synthetic: manifest.manifest.synthetic,
            image_size_px: size,
            rows_per_split: manifest.manifest.rows_per_split.clone(),
        },
        model: main.info.clone(),
        ensemble,
        tta: request.settings.tta,
        split: split.name().into(),
        images: scores.rows(),
        patients: metrics.patients,
        skipped: scores.skipped.len(),
        findings: metrics.findings,
        binary: metrics.binary,
        macro_auc: metrics.macro_auc,
        macro_auc_interval: metrics.macro_auc_interval,
        macro_average_precision: metrics.macro_average_precision,
        undefined_findings: metrics.undefined_findings,
        calibration: metrics.calibration,
        thresholds: ThresholdInfo {
            rule: request.settings.threshold_rule,
            split: Split::Validation.name().into(),
            images: validation.rows(),
        },
        bootstrap,
        timings: Timings {
            validation_seconds,
            scoring_seconds,
            metrics_seconds,
            total_seconds: 0.0,
            images_per_second: scores.rows() as f64 / scoring_seconds.max(1e-9),
        },
        created_at_unix_ms: now_ms(),
        producer: format!("chexvision-evaluator {}", env!("CARGO_PKG_VERSION")),
    };

    progress(EvalProgress::Writing);
    let put = |key: &str, bytes: Vec<u8>| -> Result<chexvision_store::PutReceipt, EvalError> {
        runtime
            .block_on(store.put(key, Bytes::from(bytes)))
            .map_err(|e| EvalError::Store(format!("writing {key}: {e}")))
    };
    let predictions_key = format!("{prefix}predictions.parquet");
    put(&predictions_key, write_predictions(&scores)?)?;
    if request.settings.plots {
        let history: Vec<HistoryPoint> = main
            .history
            .iter()
            .map(|h| HistoryPoint {
                epoch: h.epoch,
                train_loss: h.train_loss,
                val_macro_auc: h.val_macro_auc,
            })
            .collect();
        for (name, png) in all_plots(&report, &scores, &history)? {
            put(&format!("{prefix}{name}"), png)?;
        }
    }
    report.timings.total_seconds = started.elapsed().as_secs_f64();
    put(
        &format!("{prefix}report.md"),
        report_markdown(&report).into_bytes(),
    )?;
    let report_key = format!("{prefix}report.json");
    let report_bytes = serde_json::to_vec_pretty(&report)
        .map_err(|e| EvalError::Data(format!("report.json: {e}")))?;
    // The report last: its presence means the evaluation is complete.
    let receipt = put(&report_key, report_bytes)?;
    if request.ensemble.is_empty() && request.dataset_id.is_none() {
        update_model_card(
            store.as_ref(),
            &runtime,
            &main.info.run_id,
            &report,
            &prefix,
        )?;
    }
    Ok(EvaluationOutcome {
        report,
        prefix,
        report_key,
        report_sha256: receipt.sha256,
        report_size: receipt.size,
        predictions_key,
        scores,
    })
}

/// Replaces (or appends) the run's model card's evaluation section.
fn update_model_card(
    store: &dyn ObjectStore,
    runtime: &tokio::runtime::Handle,
    run_id: &str,
    report: &Report,
    prefix: &str,
) -> Result<(), EvalError> {
    let key = format!("runs/{run_id}/MODEL_CARD.md");
    let card = match runtime.block_on(store.get(&key)) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.is_not_found() => format!("# Model card: run {run_id}\n"),
        Err(e) => return Err(EvalError::Store(format!("reading {key}: {e}"))),
    };
    let section = model_card_section(report, prefix);
    let marker = crate::summary::MODEL_CARD_MARKER;
    let base = match card.find(marker) {
        Some(at) => card[..at].trim_end().to_owned(),
        None => card.trim_end().to_owned(),
    };
    runtime
        .block_on(store.put(&key, Bytes::from(format!("{base}\n\n{section}"))))
        .map_err(|e| EvalError::Store(format!("writing {key}: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_choices() {
        let parse = |t: &str, root: &str| CheckpointChoice::parse(t, root).ok();
        assert_eq!(parse("best", "s3://b/p"), Some(CheckpointChoice::Best));
        assert_eq!(parse("final", "s3://b/p"), Some(CheckpointChoice::Final));
        let key = |k: &str| Some(CheckpointChoice::Key(k.into()));
        assert_eq!(
            parse("runs/a/x.safetensors", "s3://b/p"),
            key("runs/a/x.safetensors")
        );
        // The store's root with or without its trailing '/'.
        assert_eq!(parse("s3://b/p/runs/a/x", "s3://b/p"), key("runs/a/x"));
        assert_eq!(parse("s3://b/p/runs/a/x", "s3://b/p/"), key("runs/a/x"));
        assert_eq!(
            parse("file:///tmp/s/runs/a", "file:///tmp/s"),
            key("runs/a")
        );
        // Another store, or a sibling prefix: refused.
        assert_eq!(parse("s3://b/other/runs/a", "s3://b/p"), None);
        assert_eq!(parse("s3://b/p2/runs/a", "s3://b/p"), None);
        assert_eq!(parse("s3://b/p/", "s3://b/p"), None);
    }
}
