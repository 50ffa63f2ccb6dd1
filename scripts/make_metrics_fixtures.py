#!/usr/bin/env python3
"""Writes shared/metrics/tests/fixtures/sklearn_parity.json: inputs and
scikit-learn's answers (roc_auc_score, f1/precision/recall at a threshold)
for random, heavily tied and highly imbalanced data. The Rust metrics crate
must match them to 1e-9.

    python3 -m pip install scikit-learn numpy
    python3 scripts/make_metrics_fixtures.py
"""
import json
import pathlib

import numpy as np
import sklearn
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

OUT = pathlib.Path(__file__).resolve().parent.parent / "shared/metrics/tests/fixtures/sklearn_parity.json"


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
    }
    return entry


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
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"sklearn": sklearn.__version__, "cases": cases}))
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
