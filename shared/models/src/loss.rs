//! The training loss, in the numerically stable form.

use candle_core::Tensor;

use crate::{DualLogits, Result};

/// Mean binary cross-entropy with logits, optionally with a per-class
/// positive weight (PyTorch's `binary_cross_entropy_with_logits`):
///
/// `l = (1 − y)·x + (1 + (w − 1)·y)·(log(1 + e^−|x|) + max(−x, 0))`
///
/// which never evaluates `log(sigmoid(x))` and so stays finite for large
/// |x| (candle's own version computes sigmoid then log).
pub fn bce_with_logits(
    logits: &Tensor,
    targets: &Tensor,
    pos_weight: Option<&Tensor>,
) -> Result<Tensor> {
    let softplus_neg = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?; // log(1 + e^−|x|)
    let relu_neg = logits.neg()?.relu()?; // max(−x, 0)
    let log_term = (softplus_neg + relu_neg)?; // = −log(sigmoid(x))
    let neg_part = ((targets.affine(-1.0, 1.0))? * logits)?; // (1 − y)·x
    let weight = match pos_weight {
        Some(w) => (targets.broadcast_mul(&(w - 1.0)?)? + 1.0)?,
        None => targets.ones_like()?,
    };
    let loss = (neg_part + (weight * log_term)?)?;
    Ok(loss.mean_all()?)
}

/// The dual-head loss of the recipe: weighted BCE on the findings plus
/// `binary_weight` × BCE on the abnormal head.
pub fn dual_head_loss(
    logits: &DualLogits,
    findings_targets: &Tensor,
    abnormal_targets: &Tensor,
    pos_weight: Option<&Tensor>,
    binary_weight: f64,
) -> Result<Tensor> {
    let findings = bce_with_logits(&logits.findings, findings_targets, pos_weight)?;
    let abnormal = bce_with_logits(&logits.abnormal, abnormal_targets, None)?;
    Ok((findings + (abnormal * binary_weight)?)?)
}
