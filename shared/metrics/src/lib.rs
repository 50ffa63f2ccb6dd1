//! Evaluation metrics, matching scikit-learn's definitions.
//!
//! - [`roc_auc`]: area under the ROC curve, with tied scores counted as half
//!   (the Mann–Whitney statistic, equal to sklearn's trapezoidal
//!   `roc_auc_score`). Undefined (None) when the labels hold one class only.
//! - [`multilabel_auc`]: per-class AUC and their macro mean over the classes
//!   where it is defined; undefined classes are reported and left out, with a
//!   warning, as a validation split without a single Hernia case would be.
//! - [`ThresholdCounts`]: the binary confusion matrix at a threshold (a
//!   score at or above it is a positive prediction) with precision, recall,
//!   specificity and F1 (0 where sklearn's `zero_division=0` gives 0).
//! - [`curves`]: ROC and precision–recall curves, [`average_precision`]
//!   (sklearn's `average_precision_score`), and [`choose_threshold`] (max F1
//!   or Youden's J) for per-class thresholds chosen on validation.
//! - [`calibration`]: [`brier_score`], the reliability curve and the
//!   expected calibration error ([`ECE_BINS`] equal-width bins).
//! - [`bootstrap`]: percentile intervals for per-class and macro AUC that
//!   resample patients, seeded, in parallel ([`PatientData`]).
//! - [`delong`]: DeLong's test of two correlated AUCs on the same images.
//!
//! Every metric of a class with a single outcome (no positive or no
//! negative) is undefined (None), never a made-up number.

pub mod bootstrap;
pub mod calibration;
pub mod curves;
pub mod delong;

pub use bootstrap::{
    paired_macro_bootstrap, AucIntervals, BootstrapConfig, Interval, PairedMacro, PatientData,
    MIN_RESAMPLES,
};
pub use calibration::{brier_score, calibration, Calibration, ReliabilityBin, ECE_BINS};
pub use curves::{
    average_precision, choose_threshold, precision_recall_curve, roc_curve, CurvePoint,
    ThresholdRule,
};
pub use delong::{delong_test, DeLong};

use serde::{Deserialize, Serialize};

/// Area under the ROC curve of `scores` against `labels`; None when all
/// labels are equal (no positive or no negative) or the lengths differ.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    if scores.len() != labels.len() || scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let positives = labels.iter().filter(|l| **l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the (1-based, tie-averaged) ranks of the positives.
    let mut positive_rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let average_rank = (start + 1 + end) as f64 / 2.0;
        let tied_positives = order[start..end].iter().filter(|&&i| labels[i]).count();
        positive_rank_sum += average_rank * tied_positives as f64;
        start = end;
    }
    let (p, n) = (positives as f64, negatives as f64);
    Some((positive_rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// Per-class AUC and their macro mean.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiLabelAuc {
    /// One entry per class, None where the class has one outcome only.
    pub per_class: Vec<Option<f64>>,
    /// Mean over the defined classes; None when no class is defined.
    pub macro_auc: Option<f64>,
    /// Indices of the classes left out of the macro mean.
    pub undefined: Vec<usize>,
}

/// AUC for each of `classes` columns of row-major `scores` / `labels`
/// (`rows × classes`).
pub fn multilabel_auc(scores: &[f64], labels: &[bool], classes: usize) -> MultiLabelAuc {
    // Rows present in both inputs; a ragged tail is ignored rather than read out of bounds.
    let rows = scores
        .len()
        .min(labels.len())
        .checked_div(classes)
        .unwrap_or(0);
    let per_class: Vec<Option<f64>> = (0..classes)
        .map(|c| {
            let column_scores: Vec<f64> = (0..rows).map(|r| scores[r * classes + c]).collect();
            let column_labels: Vec<bool> = (0..rows).map(|r| labels[r * classes + c]).collect();
            roc_auc(&column_scores, &column_labels)
        })
        .collect();
    let undefined: Vec<usize> = per_class
        .iter()
        .enumerate()
        .filter(|(_, auc)| auc.is_none())
        .map(|(c, _)| c)
        .collect();
    if !undefined.is_empty() {
        tracing::warn!(
            classes = ?undefined,
            "AUC undefined for classes with a single outcome; left out of the macro AUC"
        );
    }
    let defined: Vec<f64> = per_class.iter().flatten().copied().collect();
    let macro_auc =
        (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64);
    MultiLabelAuc {
        per_class,
        macro_auc,
        undefined,
    }
}

/// Confusion counts of predictions `score >= threshold`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThresholdCounts {
    pub true_positives: u64,
    pub false_positives: u64,
    pub true_negatives: u64,
    pub false_negatives: u64,
}

impl ThresholdCounts {
    pub fn new(scores: &[f64], labels: &[bool], threshold: f64) -> Self {
        let mut counts = ThresholdCounts::default();
        for (score, label) in scores.iter().zip(labels) {
            match (*score >= threshold, *label) {
                (true, true) => counts.true_positives += 1,
                (true, false) => counts.false_positives += 1,
                (false, false) => counts.true_negatives += 1,
                (false, true) => counts.false_negatives += 1,
            }
        }
        counts
    }

    fn ratio(numerator: u64, denominator: u64) -> f64 {
        if denominator == 0 {
            0.0
        } else {
            numerator as f64 / denominator as f64
        }
    }

    pub fn precision(&self) -> f64 {
        Self::ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }

    pub fn recall(&self) -> f64 {
        Self::ratio(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }

    /// TN / (TN + FP): the recall of the negatives.
    pub fn specificity(&self) -> f64 {
        Self::ratio(
            self.true_negatives,
            self.true_negatives + self.false_positives,
        )
    }

    pub fn accuracy(&self) -> f64 {
        Self::ratio(
            self.true_positives + self.true_negatives,
            self.true_positives + self.true_negatives + self.false_positives + self.false_negatives,
        )
    }

    /// scikit-learn's `confusion_matrix` layout: rows are the true class
    /// (negative, positive), columns the predicted one.
    pub fn matrix(&self) -> [[u64; 2]; 2] {
        [
            [self.true_negatives, self.false_positives],
            [self.false_negatives, self.true_positives],
        ]
    }

    /// 2·TP / (2·TP + FP + FN), as sklearn computes it.
    pub fn f1(&self) -> f64 {
        Self::ratio(
            2 * self.true_positives,
            2 * self.true_positives + self.false_positives + self.false_negatives,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_reversed_and_tied() {
        let labels = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &labels), Some(1.0));
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &labels), Some(0.0));
        assert_eq!(roc_auc(&[0.5; 4], &labels), Some(0.5));
        // One tie between a positive and a negative counts half.
        assert_eq!(roc_auc(&[0.1, 0.5, 0.5, 0.9], &labels), Some(0.875));
    }

    #[test]
    fn undefined_cases() {
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(roc_auc(&[0.1, 0.2], &[false, false]), None);
        assert_eq!(roc_auc(&[0.1], &[true, false]), None);
        assert_eq!(roc_auc(&[f64::NAN, 0.2], &[true, false]), None);
    }

    #[test]
    fn macro_leaves_out_undefined_classes() {
        // 3 rows × 2 classes; class 1 is never positive.
        let scores = [0.9, 0.1, 0.2, 0.3, 0.8, 0.5];
        let labels = [true, false, false, false, true, false];
        let auc = multilabel_auc(&scores, &labels, 2);
        assert_eq!(auc.per_class, vec![Some(1.0), None]);
        assert_eq!(auc.undefined, vec![1]);
        assert_eq!(auc.macro_auc, Some(1.0));
    }

    #[test]
    fn threshold_counts() {
        let counts = ThresholdCounts::new(&[0.9, 0.6, 0.4, 0.1], &[true, false, true, false], 0.5);
        assert_eq!(counts.true_positives, 1);
        assert_eq!(counts.false_positives, 1);
        assert_eq!(counts.false_negatives, 1);
        assert_eq!(counts.true_negatives, 1);
        assert_eq!(counts.f1(), 0.5);
        assert_eq!(ThresholdCounts::default().f1(), 0.0);
    }
}
