#!/usr/bin/env python3
"""Writes the metrics crate's reference fixtures:

- shared/metrics/tests/fixtures/sklearn_parity.json: inputs and
  scikit-learn's answers (roc_auc_score, average_precision_score,
  confusion_matrix, f1/precision/recall at a threshold, brier_score_loss,
  calibration_curve with 15 uniform bins and the ECE over its bins, and
  the max-F1 / Youden thresholds found by brute force over every distinct
  score) for random, heavily tied and highly imbalanced data. The Rust
  metrics crate must match them to 1e-9.
- shared/metrics/tests/fixtures/delong.json: DeLong's test of correlated
  model pairs by a NumPy reference written here from the 1988 definition
  (the O(m·n) kernel, not the midrank shortcut the crate uses); 1e-6.
- shared/metrics/tests/fixtures/bootstrap.json: patient-level bootstrap
  draws made here with NumPy, each resample's AUC by scikit-learn with the
  draw counts as sample weights, and numpy.percentile's 95 % interval.

    python3 -m pip install scikit-learn numpy
    python3 scripts/make_metrics_fixtures.py
"""
import json
import math
import pathlib

import numpy as np
import sklearn
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "shared/metrics/tests/fixtures"
OUT = FIXTURES / "sklearn_parity.json"
ECE_BINS = 15


def calibration(labels, scores):
    """sklearn's reliability curve and the ECE over the same bins."""
    prob_true, prob_pred = calibration_curve(labels, scores, n_bins=ECE_BINS, strategy="uniform")
    # The bin counts, binned exactly as calibration_curve does.
    bins = np.linspace(0.0, 1.0, ECE_BINS + 1)
    binids = np.searchsorted(bins[1:-1], scores)
    counts = np.bincount(binids, minlength=ECE_BINS)
    counts = counts[counts > 0]
    ece = float(np.sum(counts / len(scores) * np.abs(prob_true - prob_pred)))
    return {"prob_true": prob_true.tolist(), "prob_pred": prob_pred.tolist(), "counts": counts.tolist(), "ece": ece}


def best_threshold(labels, scores, rule):
    """Brute force over every distinct score; ties go to the higher threshold."""
    best = None
    for t in sorted(set(scores.tolist()), reverse=True):
        predicted = scores >= t
        tp = int(np.sum(predicted & labels))
        fp = int(np.sum(predicted & ~labels))
        fn = int(np.sum(~predicted & labels))
        tn = int(np.sum(~predicted & ~labels))
        if rule == "max_f1":
            value = f1_score(labels, predicted, zero_division=0)
        else:
            value = tp / (tp + fn) + tn / (tn + fp) - 1.0
        if best is None or value > best[1]:
            best = (t, value)
    return best[0]


def case(name, labels, scores, threshold=0.5):
    labels = np.asarray(labels, dtype=bool)
    # Six decimals keep the file small; both sides compute from these values.
    scores = np.round(np.asarray(scores, dtype=float), 6)
    predicted = scores >= threshold
    entry = {
        "name": name,
        "labels": labels.tolist(),
        "scores": scores.tolist(),
        "threshold": threshold,
        "f1": f1_score(labels, predicted, zero_division=0),
        "precision": precision_score(labels, predicted, zero_division=0),
        "recall": recall_score(labels, predicted, zero_division=0),
        "auc": roc_auc_score(labels, scores) if 0 < labels.sum() < len(labels) else None,
        "confusion_matrix": confusion_matrix(labels, predicted, labels=[False, True]).tolist(),
        "brier": brier_score_loss(labels, scores),
        "calibration": calibration(labels, scores),
    }
    two_outcomes = 0 < labels.sum() < len(labels)
    entry["average_precision"] = average_precision_score(labels, scores) if two_outcomes else None
    entry["max_f1_threshold"] = best_threshold(labels, scores, "max_f1") if two_outcomes else None
    entry["youden_threshold"] = best_threshold(labels, scores, "youden") if two_outcomes else None
    return entry


def delong_reference(scores_a, scores_b, labels):
    """DeLong et al. (1988) from its definition: psi kernel over all pairs."""
    out = {}
    components = []
    for scores in (scores_a, scores_b):
        x = scores[labels][:, None]  # positives
        y = scores[~labels][None, :]  # negatives
        psi = (x > y).astype(float) + 0.5 * (x == y)
        components.append((psi.mean(axis=1), psi.mean(axis=0)))
    m, n = int(labels.sum()), int((~labels).sum())
    v10 = np.vstack([c[0] for c in components])
    v01 = np.vstack([c[1] for c in components])
    cov = np.cov(v10) / m + np.cov(v01) / n
    auc_a, auc_b = v10[0].mean(), v10[1].mean()
    delta = auc_a - auc_b
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    se = math.sqrt(max(var, 0.0))
    z = delta / se
    out.update(auc_a=auc_a, auc_b=auc_b, delta=delta, std_error=se, z=z, p_value=math.erfc(abs(z) / math.sqrt(2)))
    return out


def delong_cases(rng):
    cases = []
    for i in range(8):
        n = int(rng.integers(60, 500))
        labels = rng.random(n) < rng.uniform(0.1, 0.5)
        labels[0], labels[1] = True, False
        truth = rng.normal(0, 1, n) + 1.2 * labels
        # Two correlated models: a shared signal plus their own noise;
        # rounding makes ties within and across models.
        scores_a = np.round(truth + rng.normal(0, rng.uniform(0.3, 1.0), n), 1 + i % 3)
        scores_b = np.round(truth + rng.normal(0, rng.uniform(0.3, 1.5), n), 1 + i % 3)
        cases.append({"name": f"delong-{i}", "labels": labels.tolist(), "scores_a": scores_a.tolist(),
                      "scores_b": scores_b.tolist(), **delong_reference(scores_a, scores_b, labels)})
    return cases


def bootstrap_fixture(rng):
    """3 classes, patients with 1–6 images, 300 resamples of patients."""
    classes = 3
    images_per_patient = rng.integers(1, 7, 60)
    patient = np.repeat(np.arange(len(images_per_patient)), images_per_patient)
    rows = len(patient)
    # A patient's images share labels often (correlation the bootstrap must keep).
    patient_labels = rng.random((len(images_per_patient), classes)) < [0.3, 0.15, 0.5]
    labels = patient_labels[patient] ^ (rng.random((rows, classes)) < 0.1)
    scores = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1), 3)
    draws = rng.integers(0, len(images_per_patient), (300, len(images_per_patient)))
    per_class = [[] for _ in range(classes)]
    macro = []
    for draw in draws:
        weight = np.bincount(draw, minlength=len(images_per_patient))[patient]
        aucs = []
        for c in range(classes):
            y = labels[weight > 0, c]
            if 0 < y.sum() < len(y):
                auc = roc_auc_score(labels[:, c], scores[:, c], sample_weight=weight)
                per_class[c].append(auc)
                aucs.append(auc)
        if aucs:
            macro.append(float(np.mean(aucs)))
    interval = lambda v: {"lower": float(np.percentile(v, 2.5)), "upper": float(np.percentile(v, 97.5)), "resamples": len(v)}
    return {
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "classes": classes,
        "patient": patient.tolist(),
        "labels": labels.reshape(-1).tolist(),
        "scores": scores.reshape(-1).tolist(),
        "draws": draws.tolist(),
        "per_class": [interval(v) for v in per_class],
        "macro": interval(macro),
    }


def main():
    rng = np.random.default_rng(20261130)
    cases = []
    # Random: scores loosely related to labels.
    for i in range(5):
        n = int(rng.integers(50, 600))
        labels = rng.random(n) < 0.3
        scores = np.clip(rng.normal(0.4 + 0.25 * labels, 0.2), 0, 1)
        cases.append(case(f"random-{i}", labels, scores))
    # Heavily tied: scores on a coarse grid (many equal values across classes).
    for i in range(5):
        n = int(rng.integers(100, 600))
        labels = rng.random(n) < 0.4
        scores = np.round(np.clip(rng.normal(0.45 + 0.15 * labels, 0.25), 0, 1) * 4) / 4
        cases.append(case(f"tied-{i}", labels, scores, threshold=0.5))
    # Highly imbalanced: rare positives (Hernia is 0.2 % of NIH).
    for i in range(5):
        n = int(rng.integers(1000, 2000))
        labels = rng.random(n) < 0.004
        labels[int(rng.integers(0, n))] = True  # at least one positive
        scores = np.clip(rng.normal(0.2 + 0.3 * labels, 0.15), 0, 1)
        cases.append(case(f"imbalanced-{i}", labels, scores, threshold=0.3))
    # Degenerate: one class only (AUC undefined), and all predicted negative.
    cases.append(case("one-class", [False] * 20, rng.random(20)))
    cases.append(case("nothing-predicted", [True, False, True, False], [0.1, 0.2, 0.3, 0.05]))
    # Probabilities exactly on bin edges (the tied grid already has some).
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    cases.append(case("bin-edges", rng.random(64) < 0.5, rng.choice(edges, 64)))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"sklearn": sklearn.__version__, "cases": cases}))
    print(f"wrote {len(cases)} cases to {OUT}")
    delong = delong_cases(rng)
    (FIXTURES / "delong.json").write_text(json.dumps({"numpy": np.__version__, "cases": delong}))
    print(f"wrote {len(delong)} DeLong cases")
    (FIXTURES / "bootstrap.json").write_text(json.dumps(bootstrap_fixture(rng)))
    print("wrote the bootstrap fixture")


if __name__ == "__main__":
    main()
