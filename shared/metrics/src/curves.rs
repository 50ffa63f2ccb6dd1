//! Threshold sweeps over one class's scores: the ROC and precision–recall
//! curves, average precision, and thresholds chosen on them.
//!
//! Every function sweeps the distinct scores from the highest down, so a
//! group of tied scores enters the prediction at once, as in scikit-learn's
//! `roc_curve` / `precision_recall_curve` (a score at or above the
//! threshold is a positive prediction).

use serde::{Deserialize, Serialize};

use crate::ThresholdCounts;

/// Cumulative counts at each distinct score, highest score first.
struct Sweep {
    /// (threshold, true positives, false positives) after each tie group.
    steps: Vec<(f64, u64, u64)>,
    positives: u64,
    negatives: u64,
}

fn sweep(scores: &[f64], labels: &[bool]) -> Option<Sweep> {
    if scores.len() != labels.len() || scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let positives = labels.iter().filter(|l| **l).count() as u64;
    let negatives = labels.len() as u64 - positives;
    let mut steps = Vec::new();
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut start = 0;
    while start < order.len() {
        let threshold = scores[order[start]];
        let mut end = start;
        while end < order.len() && scores[order[end]] == threshold {
            if labels[order[end]] {
                tp += 1;
            } else {
                fp += 1;
            }
            end += 1;
        }
        steps.push((threshold, tp, fp));
        start = end;
    }
    Some(Sweep {
        steps,
        positives,
        negatives,
    })
}

/// One point of a curve, at the threshold that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub threshold: f64,
    pub x: f64,
    pub y: f64,
}

/// ROC curve points (x = false positive rate, y = true positive rate),
/// starting at (0, 0) with an infinite threshold, one point per distinct
/// score. None when the class has a single outcome.
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Option<Vec<CurvePoint>> {
    let sweep = sweep(scores, labels)?;
    if sweep.positives == 0 || sweep.negatives == 0 {
        return None;
    }
    let (p, n) = (sweep.positives as f64, sweep.negatives as f64);
    let mut points = vec![CurvePoint {
        threshold: f64::INFINITY,
        x: 0.0,
        y: 0.0,
    }];
    points.extend(sweep.steps.iter().map(|&(threshold, tp, fp)| CurvePoint {
        threshold,
        x: fp as f64 / n,
        y: tp as f64 / p,
    }));
    Some(points)
}

/// Precision–recall points (x = recall, y = precision), one per distinct
/// score from the highest down. None when the class has a single outcome.
pub fn precision_recall_curve(scores: &[f64], labels: &[bool]) -> Option<Vec<CurvePoint>> {
    let sweep = sweep(scores, labels)?;
    if sweep.positives == 0 || sweep.negatives == 0 {
        return None;
    }
    let p = sweep.positives as f64;
    Some(
        sweep
            .steps
            .iter()
            .map(|&(threshold, tp, fp)| CurvePoint {
                threshold,
                x: tp as f64 / p,
                y: tp as f64 / (tp + fp) as f64,
            })
            .collect(),
    )
}

/// Average precision, as scikit-learn's `average_precision_score`: the sum
/// over distinct thresholds of (recall gained) × (precision there), with no
/// interpolation. None when the class has a single outcome.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let points = precision_recall_curve(scores, labels)?;
    let mut previous_recall = 0.0;
    let mut ap = 0.0;
    for point in points {
        ap += (point.x - previous_recall) * point.y;
        previous_recall = point.x;
    }
    Some(ap)
}

/// How a per-class decision threshold is chosen on the validation split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdRule {
    /// The threshold with the highest F1.
    #[default]
    MaxF1,
    /// The threshold with the highest Youden's J (sensitivity + specificity − 1).
    YoudenJ,
}

impl ThresholdRule {
    pub fn name(self) -> &'static str {
        match self {
            ThresholdRule::MaxF1 => "max_f1",
            ThresholdRule::YoudenJ => "youden_j",
        }
    }
}

/// The threshold `rule` picks among the distinct scores, with the counts
/// there; on a tie of the criterion the higher threshold wins (fewer
/// positive calls for the same score). None when the class has a single
/// outcome.
pub fn choose_threshold(
    scores: &[f64],
    labels: &[bool],
    rule: ThresholdRule,
) -> Option<(f64, ThresholdCounts)> {
    let sweep = sweep(scores, labels)?;
    if sweep.positives == 0 || sweep.negatives == 0 {
        return None;
    }
    let (p, n) = (sweep.positives, sweep.negatives);
    let mut best: Option<(f64, f64, ThresholdCounts)> = None;
    for &(threshold, tp, fp) in &sweep.steps {
        let counts = ThresholdCounts {
            true_positives: tp,
            false_positives: fp,
            true_negatives: n - fp,
            false_negatives: p - tp,
        };
        let criterion = match rule {
            ThresholdRule::MaxF1 => counts.f1(),
            ThresholdRule::YoudenJ => counts.recall() + counts.specificity() - 1.0,
        };
        // Steps run from the highest threshold down: only a strictly
        // better criterion moves the choice to a lower threshold.
        if best.is_none_or(|(_, c, _)| criterion > c) {
            best = Some((threshold, criterion, counts));
        }
    }
    best.map(|(threshold, _, counts)| (threshold, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_precision_by_hand() {
        // Ranked: + (P 1, R .5), - (P .5), + (P 2/3, R 1) → AP = .5·1 + .5·2/3.
        let ap = average_precision(&[0.9, 0.8, 0.7, 0.1], &[true, false, true, false]).unwrap();
        assert!((ap - (0.5 + 0.5 * 2.0 / 3.0)).abs() < 1e-12, "{ap}");
        assert_eq!(average_precision(&[0.1, 0.2], &[false, false]), None);
        assert_eq!(average_precision(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn roc_curve_ends_at_one_one() {
        let points = roc_curve(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert_eq!(points.first().map(|p| (p.x, p.y)), Some((0.0, 0.0)));
        assert_eq!(points.last().map(|p| (p.x, p.y)), Some((1.0, 1.0)));
        assert_eq!(points.len(), 5);
    }

    #[test]
    fn thresholds_pick_the_separating_score() {
        let scores = [0.1, 0.2, 0.3, 0.6, 0.7, 0.9];
        let labels = [false, false, false, true, true, true];
        for rule in [ThresholdRule::MaxF1, ThresholdRule::YoudenJ] {
            let (threshold, counts) = choose_threshold(&scores, &labels, rule).unwrap();
            assert_eq!(threshold, 0.6, "{rule:?}");
            assert_eq!(counts.f1(), 1.0);
        }
        assert!(choose_threshold(&[0.5], &[true], ThresholdRule::MaxF1).is_none());
    }
}
