//! The promotion policy: whether a challenger replaces the production model.
//!
//! The first model is promoted. Afterwards both models are compared on the
//! **same test images** (rows matched by image id): the challenger is
//! promoted only if
//!
//! 1. its macro AUC exceeds the champion's by at least `margin`,
//! 2. a paired test says the gain is not chance: a patient-level paired
//!    bootstrap of the macro-AUC difference (each resample draws patients,
//!    and both models are scored on the same draw) with one-sided
//!    `p = (#{Δ* ≤ 0} + 1) / (B + 1)` below `alpha`, and
//! 3. no finding's AUC drops by more than `max_class_drop`.
//!
//! Per-finding DeLong tests (ΔAUC, standard error, two-sided p) are
//! computed and recorded beside the decision for the people who read it.

use chexvision_metrics::{delong_test, BootstrapConfig, PatientData};
use serde::{Deserialize, Serialize};

/// The configurable thresholds of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromotionPolicy {
    /// Least macro-AUC gain over the champion.
    pub margin: f64,
    /// Significance level of the paired test.
    pub alpha: f64,
    /// Largest drop of any one finding's AUC that is still accepted.
    pub max_class_drop: f64,
    /// Resamples of the paired bootstrap (at least 1,000).
    pub resamples: usize,
    pub seed: u64,
}

impl Default for PromotionPolicy {
    fn default() -> Self {
        PromotionPolicy {
            margin: 0.005,
            alpha: 0.05,
            max_class_drop: 0.02,
            resamples: chexvision_metrics::MIN_RESAMPLES,
            seed: 20_261_206,
        }
    }
}

impl PromotionPolicy {
    /// Every value in range, or what is not.
    pub fn validate(&self) -> Result<(), String> {
        let check = |name: &str, v: f64, lo: f64, hi: f64| {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("promotion.{name} = {v} is outside [{lo}, {hi}]"))
            }
        };
        check("margin", self.margin, 0.0, 1.0)?;
        check("alpha", self.alpha, 1e-6, 0.5)?;
        check("max_class_drop", self.max_class_drop, 0.0, 1.0)?;
        if !(chexvision_metrics::MIN_RESAMPLES..=100_000).contains(&self.resamples) {
            return Err(format!(
                "promotion.resamples = {} is outside [{}, 100000]",
                self.resamples,
                chexvision_metrics::MIN_RESAMPLES
            ));
        }
        Ok(())
    }
}

/// One model's scores on a test split, rows in any order.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredSplit {
    pub image_ids: Vec<String>,
    pub patient_ids: Vec<String>,
    /// Row-major `rows × findings` labels and probabilities.
    pub labels: Vec<bool>,
    pub probabilities: Vec<f64>,
    pub findings: Vec<String>,
}

impl ScoredSplit {
    pub fn rows(&self) -> usize {
        self.image_ids.len()
    }

    fn column(&self, c: usize, values: &[f64]) -> Vec<f64> {
        let k = self.findings.len();
        (0..self.rows()).map(|r| values[r * k + c]).collect()
    }
}

/// One finding compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindingComparison {
    pub finding: String,
    pub challenger_auc: Option<f64>,
    pub champion_auc: Option<f64>,
    pub delta: Option<f64>,
    pub delong_std_error: Option<f64>,
    pub delong_p_value: Option<f64>,
}

/// What the policy decided, with the numbers it decided on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub promote: bool,
    /// Why, in a sentence a person reads (the first failed criterion, or
    /// that all held).
    pub reason: String,
    pub policy: PromotionPolicy,
    /// The images both models were scored on.
    pub images: usize,
    pub patients: usize,
    pub challenger_macro_auc: Option<f64>,
    pub champion_macro_auc: Option<f64>,
    pub macro_delta: Option<f64>,
    /// 95 % paired-bootstrap interval of the macro-AUC difference.
    pub macro_delta_interval: Option<[f64; 2]>,
    pub p_value: Option<f64>,
    pub test: String,
    pub findings: Vec<FindingComparison>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    #[error("the two evaluations do not score the same images: {0}")]
    Mismatch(String),
    #[error("invalid promotion policy: {0}")]
    Policy(String),
}

/// The decision for a first model (no champion).
pub fn first_model(challenger_macro_auc: Option<f64>, policy: &PromotionPolicy) -> Decision {
    Decision {
        promote: true,
        reason: "first model: no production model to compare with".into(),
        policy: *policy,
        images: 0,
        patients: 0,
        challenger_macro_auc,
        champion_macro_auc: None,
        macro_delta: None,
        macro_delta_interval: None,
        p_value: None,
        test: "none".into(),
        findings: Vec::new(),
    }
}

/// Compares `challenger` with `champion` on the images both scored.
pub fn decide(
    challenger: &ScoredSplit,
    champion: &ScoredSplit,
    policy: &PromotionPolicy,
) -> Result<Decision, PolicyError> {
    policy.validate().map_err(PolicyError::Policy)?;
    let champion = align(challenger, champion)?;
    let k = challenger.findings.len();
    let rows = challenger.rows();
    let a = PatientData::new(
        &challenger.probabilities,
        &challenger.labels,
        k,
        &challenger.patient_ids,
    )
    .ok_or_else(|| PolicyError::Mismatch("challenger scores are empty or not finite".into()))?;
    let b = PatientData::new(
        &champion.probabilities,
        &challenger.labels,
        k,
        &challenger.patient_ids,
    )
    .ok_or_else(|| PolicyError::Mismatch("champion scores are empty or not finite".into()))?;

    let everyone: Vec<usize> = (0..a.patients()).collect();
    let (a_class, a_macro) = a.resample_auc(&everyone);
    let (b_class, b_macro) = b.resample_auc(&everyone);
    let findings: Vec<FindingComparison> = (0..k)
        .map(|c| {
            let labels: Vec<bool> = (0..rows).map(|r| challenger.labels[r * k + c]).collect();
            let test = delong_test(
                &challenger.column(c, &challenger.probabilities),
                &champion.column(c, &champion.probabilities),
                &labels,
            );
            FindingComparison {
                finding: challenger.findings[c].clone(),
                challenger_auc: a_class[c],
                champion_auc: b_class[c],
                delta: a_class[c].zip(b_class[c]).map(|(x, y)| x - y),
                delong_std_error: test.map(|t| t.std_error),
                delong_p_value: test.map(|t| t.p_value),
            }
        })
        .collect();

    let config = BootstrapConfig {
        resamples: policy.resamples,
        seed: policy.seed,
        confidence: 0.95,
    };
    let paired = chexvision_metrics::bootstrap::paired_macro_bootstrap(&a, &b, &config);
    let macro_delta = a_macro.zip(b_macro).map(|(x, y)| x - y);
    let mut decision = Decision {
        promote: false,
        reason: String::new(),
        policy: *policy,
        images: rows,
        patients: a.patients(),
        challenger_macro_auc: a_macro,
        champion_macro_auc: b_macro,
        macro_delta,
        macro_delta_interval: paired.as_ref().map(|p| [p.lower, p.upper]),
        p_value: paired.as_ref().map(|p| p.p_value),
        test: format!(
            "paired patient bootstrap of the macro-AUC difference, {} resamples, one-sided",
            policy.resamples
        ),
        findings,
    };
    let worst_drop = decision
        .findings
        .iter()
        .filter_map(|f| f.delta.map(|d| (d, &f.finding)))
        .min_by(|x, y| x.0.total_cmp(&y.0));
    decision.reason = match (macro_delta, decision.p_value) {
        (None, _) | (_, None) => "macro AUC undefined on the shared images".into(),
        (Some(d), _) if d < policy.margin => format!(
            "macro AUC gain {d:+.4} is below the margin {:.4}",
            policy.margin
        ),
        (Some(_), Some(p)) if p >= policy.alpha => format!(
            "the gain is not significant: paired bootstrap p = {p:.4} ≥ alpha {}",
            policy.alpha
        ),
        _ => match worst_drop {
            Some((d, finding)) if -d > policy.max_class_drop => format!(
                "{finding} AUC drops by {:.4}, more than max_class_drop {:.4}",
                -d, policy.max_class_drop
            ),
            _ => {
                decision.promote = true;
                format!(
                    "macro AUC {:+.4} (p = {:.4}) with no finding dropping more than {:.4}",
                    macro_delta.unwrap_or_default(),
                    decision.p_value.unwrap_or_default(),
                    policy.max_class_drop
                )
            }
        },
    };
    Ok(decision)
}

/// `champion`'s rows reordered to `challenger`'s image order; every image
/// of the challenger must be present with the same labels.
fn align(challenger: &ScoredSplit, champion: &ScoredSplit) -> Result<ScoredSplit, PolicyError> {
    if challenger.findings != champion.findings {
        return Err(PolicyError::Mismatch(format!(
            "findings differ: {:?} vs {:?}",
            challenger.findings, champion.findings
        )));
    }
    if challenger.rows() != champion.rows() {
        return Err(PolicyError::Mismatch(format!(
            "{} images vs {}",
            challenger.rows(),
            champion.rows()
        )));
    }
    let k = challenger.findings.len();
    let index: std::collections::HashMap<&str, usize> = champion
        .image_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut aligned = ScoredSplit {
        image_ids: challenger.image_ids.clone(),
        patient_ids: challenger.patient_ids.clone(),
        labels: Vec::with_capacity(challenger.labels.len()),
        probabilities: Vec::with_capacity(challenger.probabilities.len()),
        findings: challenger.findings.clone(),
    };
    for (r, id) in challenger.image_ids.iter().enumerate() {
        let &i = index
            .get(id.as_str())
            .ok_or_else(|| PolicyError::Mismatch(format!("image {id} only in the challenger's")))?;
        let labels = &champion.labels[i * k..(i + 1) * k];
        if labels != &challenger.labels[r * k..(r + 1) * k] {
            return Err(PolicyError::Mismatch(format!(
                "image {id} has other labels"
            )));
        }
        aligned.labels.extend_from_slice(labels);
        aligned
            .probabilities
            .extend_from_slice(&champion.probabilities[i * k..(i + 1) * k]);
    }
    Ok(aligned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 300 images of 100 patients, 2 findings; positives score `signal`
    /// higher, plus uniform noise seeded by `noise_seed`.
    fn split(signal: f64, noise_seed: u64) -> ScoredSplit {
        let mut state = noise_seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut noise = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        let mut s = ScoredSplit {
            image_ids: Vec::new(),
            patient_ids: Vec::new(),
            labels: Vec::new(),
            probabilities: Vec::new(),
            findings: vec!["A".into(), "B".into()],
        };
        for r in 0..300 {
            s.image_ids.push(format!("img{r}"));
            s.patient_ids.push(format!("p{}", r / 3));
            for c in 0..2 {
                let y = (r * 7 + c * 3) % 5 < 2;
                s.labels.push(y);
                s.probabilities
                    .push((0.5 + noise() + if y { signal } else { 0.0 }).clamp(0.0, 1.0));
            }
        }
        s
    }

    #[test]
    fn a_clearly_better_model_is_promoted_and_a_worse_one_refused() {
        let policy = PromotionPolicy::default();
        let strong = split(0.6, 1);
        let weak = split(0.1, 2);
        let up = decide(&strong, &weak, &policy).unwrap();
        assert!(up.promote, "{}", up.reason);
        assert!(up.p_value.unwrap() < 0.05);
        let down = decide(&weak, &strong, &policy).unwrap();
        assert!(!down.promote);
        assert!(down.reason.contains("below the margin"), "{}", down.reason);
        // Against itself: no gain.
        let same = decide(&strong, &strong, &policy).unwrap();
        assert!(!same.promote);
        assert_eq!(same.macro_delta, Some(0.0));
    }

    #[test]
    fn rows_are_matched_by_image_and_mismatches_refused() {
        let policy = PromotionPolicy::default();
        let a = split(0.6, 1);
        let mut shuffled = split(0.1, 2);
        shuffled.image_ids.reverse();
        shuffled.patient_ids.reverse();
        let pairs: Vec<(Vec<bool>, Vec<f64>)> = shuffled
            .labels
            .chunks(2)
            .zip(shuffled.probabilities.chunks(2))
            .map(|(l, p)| (l.to_vec(), p.to_vec()))
            .rev()
            .collect();
        shuffled.labels = pairs.iter().flat_map(|p| p.0.clone()).collect();
        shuffled.probabilities = pairs.iter().flat_map(|p| p.1.clone()).collect();
        let straight = decide(&a, &split(0.1, 2), &policy).unwrap();
        let reordered = decide(&a, &shuffled, &policy).unwrap();
        assert_eq!(straight, reordered);
        let mut other = split(0.1, 2);
        other.image_ids[0] = "elsewhere".into();
        assert!(matches!(
            decide(&a, &other, &policy),
            Err(PolicyError::Mismatch(_))
        ));
    }

    #[test]
    fn a_collapsing_finding_blocks_promotion() {
        let policy = PromotionPolicy::default();
        let champion = split(0.3, 2);
        // Much better on A, worse on B (signal 0.2 against the champion's 0.3).
        let mut challenger = split(0.9, 1);
        let weaker_b = split(0.2, 3);
        for r in 0..challenger.rows() {
            challenger.probabilities[r * 2 + 1] = weaker_b.probabilities[r * 2 + 1];
        }
        let d = decide(&challenger, &champion, &policy).unwrap();
        assert!(!d.promote);
        assert!(d.reason.starts_with("B AUC drops"), "{}", d.reason);
    }

    #[test]
    fn policy_bounds() {
        assert!(PromotionPolicy::default().validate().is_ok());
        let bad = PromotionPolicy {
            alpha: f64::NAN,
            ..PromotionPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("alpha"));
        let few = PromotionPolicy {
            resamples: 10,
            ..PromotionPolicy::default()
        };
        assert!(few.validate().is_err());
    }
}
