//! `report.json`: schema (versioned) and its computation from the scores of
//! the validation split (thresholds) and of the reported split.
//!
//! Schema version 1. Every probability-derived number of a finding with a
//! single outcome in the split is `null` ("undefined"), never a made-up
//! value; such findings are left out of the macro means and listed in
//! `undefined_findings`.

use std::collections::BTreeMap;

use chexvision_dataset::LABELS;
use chexvision_metrics::{
    average_precision, brier_score, calibration, choose_threshold, roc_auc, BootstrapConfig,
    Calibration, PatientData, ThresholdCounts, ThresholdRule, ECE_BINS,
};
use serde::{Deserialize, Serialize};

use crate::score::{SplitScores, OUTPUTS};

pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// The binary head's name where findings and it are listed together.
pub const ABNORMAL: &str = "abnormal";

/// Metrics at one threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AtThreshold {
    pub threshold: f64,
    pub precision: f64,
    pub recall: f64,
    pub specificity: f64,
    pub f1: f64,
    /// `[[TN, FP], [FN, TP]]` (scikit-learn's layout).
    pub confusion_matrix: [[u64; 2]; 2],
}

impl AtThreshold {
    fn new(scores: &[f64], labels: &[bool], threshold: f64) -> Self {
        let c = ThresholdCounts::new(scores, labels, threshold);
        AtThreshold {
            threshold,
            precision: c.precision(),
            recall: c.recall(),
            specificity: c.specificity(),
            f1: c.f1(),
            confusion_matrix: c.matrix(),
        }
    }
}

/// One output (a finding, or the binary head).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputReport {
    pub name: String,
    pub positives: u64,
    pub auc: Option<f64>,
    /// 95 % patient-bootstrap interval of the AUC.
    pub auc_interval: Option<[f64; 2]>,
    pub average_precision: Option<f64>,
    /// Chosen on the validation split by `thresholds.rule`.
    pub validation_threshold: Option<f64>,
    pub at_validation_threshold: Option<AtThreshold>,
    pub at_half: AtThreshold,
    pub brier: Option<f64>,
    pub ece: Option<f64>,
    /// Mean probability over the split: the reference the inference
    /// service's drift gauges are compared with (absent in reports made
    /// before it was added).
    #[serde(default)]
    pub mean_probability: Option<f64>,
}

impl OutputReport {
    /// Share of the split called positive at the validation threshold.
    pub fn positive_rate(&self) -> Option<f64> {
        let [[tn, fp], [fn_, tp]] = self.at_validation_threshold.as_ref()?.confusion_matrix;
        let total = tn + fp + fn_ + tp;
        (total > 0).then(|| (fp + tp) as f64 / total as f64)
    }
}

/// The dataset the report is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub dataset_id: String,
    pub ready_manifest_key: String,
    pub ready_manifest_sha256: String,
    pub synthetic: bool,
    pub image_size_px: u32,
    /// Ready images per split (the manifest's counts).
    pub rows_per_split: BTreeMap<String, u64>,
}

/// A model that scored the images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub run_id: String,
    pub checkpoint_uri: String,
    pub checkpoint_key: String,
    pub checkpoint_sha256: String,
    /// Size of the checkpoint file (0 in reports written before it was
    /// recorded).
    #[serde(default)]
    pub checkpoint_bytes: u64,
    pub model_kind: String,
    pub epoch: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdInfo {
    pub rule: ThresholdRule,
    pub split: String,
    pub images: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub validation_seconds: f64,
    pub scoring_seconds: f64,
    pub metrics_seconds: f64,
    pub total_seconds: f64,
    /// Images of the reported split per second of its scoring.
    pub images_per_second: f64,
}

/// `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub run_id: String,
    pub dataset: DatasetInfo,
    /// The evaluated model; with an ensemble, its first member.
    pub model: ModelInfo,
    /// Every model whose probabilities were averaged (one without an ensemble).
    pub ensemble: Vec<ModelInfo>,
    pub tta: bool,
    pub split: String,
    pub images: usize,
    pub patients: usize,
    /// Images the split lists that could not be scored.
    pub skipped: usize,
    pub findings: Vec<OutputReport>,
    pub binary: OutputReport,
    pub macro_auc: Option<f64>,
    pub macro_auc_interval: Option<[f64; 2]>,
    pub macro_average_precision: Option<f64>,
    pub undefined_findings: Vec<String>,
    /// Reliability curve of the binary head.
    pub calibration: Option<Calibration>,
    pub thresholds: ThresholdInfo,
    pub bootstrap: BootstrapConfig,
    pub timings: Timings,
    pub created_at_unix_ms: u64,
    pub producer: String,
}

impl Report {
    /// Per-finding AUC by name (the 14 findings).
    pub fn per_class_auc(&self) -> BTreeMap<String, Option<f64>> {
        self.findings
            .iter()
            .map(|f| (f.name.clone(), f.auc))
            .collect()
    }

    /// Chosen thresholds by name, the binary head's as `abnormal`.
    pub fn thresholds_by_name(&self) -> BTreeMap<String, f64> {
        self.findings
            .iter()
            .chain(std::iter::once(&self.binary))
            .filter_map(|f| f.validation_threshold.map(|t| (f.name.clone(), t)))
            .collect()
    }
}

/// The metrics part of a report (everything but identities and timings).
pub struct ComputedMetrics {
    pub findings: Vec<OutputReport>,
    pub binary: OutputReport,
    pub macro_auc: Option<f64>,
    pub macro_auc_interval: Option<[f64; 2]>,
    pub macro_average_precision: Option<f64>,
    pub undefined_findings: Vec<String>,
    pub calibration: Option<Calibration>,
    pub patients: usize,
}

/// Computes every metric of `test`, with thresholds chosen on `validation`.
pub fn compute(
    test: &SplitScores,
    validation: &SplitScores,
    rule: ThresholdRule,
    bootstrap: &BootstrapConfig,
) -> ComputedMetrics {
    let k = LABELS.len();
    let intervals = PatientData::new(
        &test.finding_probabilities(),
        &test.labels,
        k,
        &test.patient_ids,
    )
    .map(|data| data.auc_intervals(bootstrap));
    let binary_intervals =
        PatientData::new(&test.probability(k), &test.label(k), 1, &test.patient_ids)
            .map(|data| data.auc_intervals(bootstrap));
    let output = |c: usize, interval: Option<[f64; 2]>| -> OutputReport {
        let scores = test.probability(c);
        let labels = test.label(c);
        let threshold = choose_threshold(&validation.probability(c), &validation.label(c), rule)
            .map(|(t, _)| t);
        OutputReport {
            name: if c < k {
                LABELS[c].to_string()
            } else {
                ABNORMAL.into()
            },
            positives: labels.iter().filter(|y| **y).count() as u64,
            auc: roc_auc(&scores, &labels),
            auc_interval: interval,
            average_precision: average_precision(&scores, &labels),
            validation_threshold: threshold,
            at_validation_threshold: threshold.map(|t| AtThreshold::new(&scores, &labels, t)),
            at_half: AtThreshold::new(&scores, &labels, 0.5),
            brier: brier_score(&scores, &labels),
            ece: calibration(&scores, &labels, ECE_BINS).map(|c| c.ece),
            mean_probability: (!scores.is_empty())
                .then(|| scores.iter().sum::<f64>() / scores.len() as f64),
        }
    };
    let pair = |i: Option<chexvision_metrics::Interval>| i.map(|i| [i.lower, i.upper]);
    let findings: Vec<OutputReport> = (0..k)
        .map(|c| output(c, intervals.as_ref().and_then(|iv| pair(iv.per_class[c]))))
        .collect();
    let binary = output(
        k,
        binary_intervals
            .as_ref()
            .and_then(|iv| pair(iv.per_class[0])),
    );
    let defined: Vec<f64> = findings.iter().filter_map(|f| f.auc).collect();
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let aps: Vec<f64> = findings
        .iter()
        .filter_map(|f| f.average_precision)
        .collect();
    let undefined_findings = findings
        .iter()
        .filter(|f| f.auc.is_none())
        .map(|f| f.name.clone())
        .collect();
    let patients = intervals.as_ref().map_or(0, |iv| iv.patients);
    ComputedMetrics {
        macro_auc: mean(&defined),
        macro_auc_interval: intervals.as_ref().and_then(|iv| pair(iv.macro_auc)),
        macro_average_precision: mean(&aps),
        undefined_findings,
        calibration: calibration(&test.probability(k), &test.label(k), ECE_BINS),
        findings,
        binary,
        patients,
    }
}

/// Probabilities of all outputs must be finite and in [0, 1]: a model that
/// produced NaN is reported as such, not averaged into numbers.
pub fn check_probabilities(scores: &SplitScores) -> Result<(), String> {
    match scores
        .probabilities
        .iter()
        .position(|p| !(0.0..=1.0).contains(p))
    {
        Some(i) => Err(format!(
            "image {} has probability {} for output {}: the model produced non-finite outputs",
            scores.image_ids[i / OUTPUTS],
            scores.probabilities[i],
            i % OUTPUTS
        )),
        None => Ok(()),
    }
}
