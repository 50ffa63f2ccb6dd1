//! Calibration of probabilities: Brier score, the reliability curve and the
//! expected calibration error.
//!
//! Bins are scikit-learn's `calibration_curve(strategy="uniform")` bins:
//! `n_bins` equal-width bins on [0, 1] whose edges are `k · (1 / n_bins)`
//! (as `numpy.linspace` computes them), a probability equal to an inner edge
//! belonging to the lower bin. The ECE is the mean over images of the gap
//! between a bin's mean probability and its observed frequency:
//! `Σ_b (n_b / N) · |freq_b − mean_prob_b|`.

use serde::{Deserialize, Serialize};

/// Bins of the expected calibration error in reports.
pub const ECE_BINS: usize = 15;

/// Mean squared difference between probability and outcome (scikit-learn's
/// `brier_score_loss`); None for no rows, mismatched lengths or a NaN.
pub fn brier_score(probabilities: &[f64], labels: &[bool]) -> Option<f64> {
    if probabilities.is_empty()
        || probabilities.len() != labels.len()
        || probabilities.iter().any(|p| p.is_nan())
    {
        return None;
    }
    let sum: f64 = probabilities
        .iter()
        .zip(labels)
        .map(|(p, &y)| (p - if y { 1.0 } else { 0.0 }).powi(2))
        .sum();
    Some(sum / probabilities.len() as f64)
}

/// One non-empty bin of the reliability curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// Bin bounds (lower exclusive except for the first bin).
    pub lower: f64,
    pub upper: f64,
    pub count: u64,
    /// Mean predicted probability in the bin (sklearn's `prob_pred`).
    pub mean_probability: f64,
    /// Share of positives in the bin (sklearn's `prob_true`).
    pub observed_frequency: f64,
}

/// The reliability curve and the expected calibration error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub bins: Vec<ReliabilityBin>,
    pub ece: f64,
    pub n_bins: usize,
}

/// Reliability curve (non-empty bins only, as sklearn returns) and ECE of
/// probabilities in [0, 1]; None for no rows, mismatched lengths, zero
/// bins, or a probability outside [0, 1] or NaN.
pub fn calibration(probabilities: &[f64], labels: &[bool], n_bins: usize) -> Option<Calibration> {
    if n_bins == 0
        || probabilities.is_empty()
        || probabilities.len() != labels.len()
        || probabilities.iter().any(|p| !(0.0..=1.0).contains(p))
    {
        return None;
    }
    let step = 1.0 / n_bins as f64;
    let edge = |k: usize| if k == n_bins { 1.0 } else { k as f64 * step };
    let mut count = vec![0u64; n_bins];
    let mut sum_probability = vec![0f64; n_bins];
    let mut positives = vec![0u64; n_bins];
    for (&p, &y) in probabilities.iter().zip(labels) {
        // numpy.searchsorted(inner_edges, p, side="left"): inner edges < p.
        let mut bin = ((p / step) as usize).min(n_bins - 1);
        while bin > 0 && edge(bin) >= p {
            bin -= 1;
        }
        while bin + 1 < n_bins && edge(bin + 1) < p {
            bin += 1;
        }
        count[bin] += 1;
        sum_probability[bin] += p;
        positives[bin] += u64::from(y);
    }
    let total = probabilities.len() as f64;
    let mut ece = 0.0;
    let bins: Vec<ReliabilityBin> = (0..n_bins)
        .filter(|&b| count[b] > 0)
        .map(|b| {
            let n = count[b] as f64;
            let bin = ReliabilityBin {
                lower: edge(b),
                upper: edge(b + 1),
                count: count[b],
                mean_probability: sum_probability[b] / n,
                observed_frequency: positives[b] as f64 / n,
            };
            ece += n / total * (bin.observed_frequency - bin.mean_probability).abs();
            bin
        })
        .collect();
    Some(Calibration { bins, ece, n_bins })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brier_by_hand() {
        let brier = brier_score(&[1.0, 0.0, 0.5], &[true, true, false]).unwrap();
        assert!((brier - (0.0 + 1.0 + 0.25) / 3.0).abs() < 1e-15);
        assert_eq!(brier_score(&[], &[]), None);
    }

    #[test]
    fn perfectly_calibrated_bins_have_no_error() {
        // Bin of 0.25 with 1 of 4 positive; bin of 0.75 with 3 of 4.
        let probabilities = [0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75];
        let labels = [true, false, false, false, true, true, true, false];
        let cal = calibration(&probabilities, &labels, 4).unwrap();
        assert_eq!(cal.bins.len(), 2);
        assert!(cal.ece.abs() < 1e-15, "{}", cal.ece);
        // An inner edge belongs to the lower bin.
        let cal = calibration(&[0.25, 1.0, 0.0], &[false, true, false], 4).unwrap();
        assert_eq!(cal.bins[0].count, 2);
        assert_eq!(cal.bins[0].upper, 0.25);
        assert!(calibration(&[1.5], &[true], 4).is_none());
    }
}
