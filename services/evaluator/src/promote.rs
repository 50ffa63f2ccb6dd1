//! From a finished evaluation to the registry: the model's record, and the
//! promotion decision against the production model on the same images.
//!
//! The champion's scores come from its own `predictions.parquet` when it
//! was evaluated on the challenger's dataset and split; otherwise the
//! champion is evaluated again on the challenger's dataset (its outputs go
//! to its own `-on-{dataset}` folder).

use std::sync::Arc;

use chexvision_dataset::LABELS;
use chexvision_models::candle_core::Device;
use chexvision_registry::{
    decide, first_model, version_of, CheckpointRef, Decision, EvaluationRef, HistoryEntry,
    MetricsSummary, ModelRecord, PointerChange, PromotionPolicy, Registry, ScoredSplit,
};
use chexvision_store::ObjectStore;

use crate::evaluate::{
    evaluate, CheckpointChoice, EvalHooks, EvaluationOutcome, EvaluationRequest, ModelChoice,
};
use crate::predictions::read_predictions;
use crate::score::SplitScores;
use crate::settings::EvaluationSettings;
use crate::EvalError;

/// The registry record of an evaluated checkpoint.
pub fn record_of(outcome: &EvaluationOutcome) -> ModelRecord {
    let report = &outcome.report;
    let model = &report.model;
    ModelRecord {
        schema_version: chexvision_registry::SCHEMA_VERSION,
        version: version_of(&model.run_id, &model.checkpoint_sha256),
        run_id: model.run_id.clone(),
        checkpoint: CheckpointRef {
            uri: model.checkpoint_uri.clone(),
            key: model.checkpoint_key.clone(),
            sha256: model.checkpoint_sha256.clone(),
            size_bytes: model.checkpoint_bytes,
        },
        model_kind: model.model_kind.clone(),
        image_size_px: report.dataset.image_size_px,
        dataset_id: report.dataset.dataset_id.clone(),
        synthetic: report.dataset.synthetic,
        evaluation: EvaluationRef {
            report_key: outcome.report_key.clone(),
            predictions_key: outcome.predictions_key.clone(),
            split: report.split.clone(),
            images: report.images as u64,
            dataset_manifest_sha256: report.dataset.ready_manifest_sha256.clone(),
        },
        metrics: MetricsSummary {
            macro_auc: report.macro_auc,
            macro_auc_interval: report.macro_auc_interval,
            per_class_auc: report.per_class_auc(),
            binary_auc: report.binary.auc,
            ece: report.calibration.as_ref().map(|c| c.ece),
        },
        thresholds: report.thresholds_by_name(),
        threshold_rule: report.thresholds.rule.name().into(),
        created_at_unix_ms: report.created_at_unix_ms,
    }
}

fn scored(scores: &SplitScores) -> ScoredSplit {
    ScoredSplit {
        image_ids: scores.image_ids.clone(),
        patient_ids: scores.patient_ids.clone(),
        labels: scores.labels.clone(),
        probabilities: scores.finding_probabilities(),
        findings: LABELS.iter().map(|s| s.to_string()).collect(),
    }
}

/// What the registry did with an evaluation.
#[derive(Debug, Clone)]
pub struct Promotion {
    pub record: ModelRecord,
    /// None when the model is production already (nothing to decide).
    pub entry: Option<HistoryEntry>,
    pub change: Option<PointerChange>,
}

/// Registers `outcome`'s checkpoint and lets the policy decide on it.
/// Synchronous: a champion without predictions on these images is
/// evaluated here.
#[allow(clippy::too_many_arguments)]
pub fn register_and_decide(
    store: Arc<dyn ObjectStore>,
    runtime: &tokio::runtime::Handle,
    registry: &Registry,
    outcome: &EvaluationOutcome,
    policy: &PromotionPolicy,
    settings: &EvaluationSettings,
    device: &Device,
    by: &str,
    interrupted: &dyn Fn() -> bool,
) -> Result<Promotion, EvalError> {
    let registry_error = EvalError::from;
    let record = runtime
        .block_on(registry.register(&record_of(outcome)))
        .map_err(registry_error)?;
    let champion = runtime
        .block_on(registry.production_record())
        .map_err(registry_error)?;
    let decision: Decision = match champion {
        None => first_model(record.metrics.macro_auc, policy),
        Some(champion) if champion.version == record.version => {
            return Ok(Promotion {
                record,
                entry: None,
                change: None,
            })
        }
        Some(champion) => {
            // The images of this evaluation (the stored record may be of an
            // earlier evaluation of the same checkpoint on other images).
            let report = &outcome.report;
            let same_images = champion.dataset_id == report.dataset.dataset_id
                && champion.evaluation.split == report.split
                && champion.evaluation.dataset_manifest_sha256
                    == report.dataset.ready_manifest_sha256;
            let champion_scores = if same_images {
                let key = &champion.evaluation.predictions_key;
                let bytes = runtime
                    .block_on(store.get(key))
                    .map_err(|e| EvalError::Store(format!("champion predictions {key}: {e}")))?;
                read_predictions(bytes)?
            } else {
                tracing::info!(
                    champion = %champion.version,
                    dataset = %report.dataset.dataset_id,
                    "the champion was evaluated on other images: evaluating it on the challenger's"
                );
                let dataset_id = report.dataset.dataset_id.clone();
                let request = EvaluationRequest {
                    model: ModelChoice {
                        run_id: champion.run_id.clone(),
                        checkpoint: CheckpointChoice::Key(champion.checkpoint.key.clone()),
                        expected_sha256: Some(champion.checkpoint.sha256.clone()),
                    },
                    ensemble: Vec::new(),
                    dataset_id: Some(dataset_id),
                    settings: EvaluationSettings {
                        split: report.split.clone(),
                        plots: false,
                        ..settings.clone()
                    },
                };
                evaluate(
                    store.clone(),
                    runtime.clone(),
                    &request,
                    device,
                    EvalHooks {
                        progress: &mut |_| {},
                        interrupted,
                    },
                )?
                .scores
            };
            decide(&scored(&outcome.scores), &scored(&champion_scores), policy)
                .map_err(|e| EvalError::Registry(e.to_string()))?
        }
    };
    let (entry, change) = runtime
        .block_on(registry.apply_decision(&record.version, decision, by))
        .map_err(registry_error)?;
    Ok(Promotion {
        record,
        entry: Some(entry),
        change,
    })
}
