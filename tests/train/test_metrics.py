"""Metrics on known inputs."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from creditflow.train.metrics import calibration_error, evaluate, ks_statistic, paired_bootstrap_auc


def test_ks_is_one_for_perfect_separation_and_zero_for_constant() -> None:
    y = np.array([0, 0, 1, 1])
    assert ks_statistic(y, np.array([0.1, 0.2, 0.8, 0.9])) == pytest.approx(1.0)
    assert ks_statistic(y, np.full(4, 0.5)) == pytest.approx(0.0)


def test_calibration_error_zero_for_calibrated_bins() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(int)
    assert calibration_error(y, p) < 0.01
    assert calibration_error(y, np.clip(p + 0.2, 0, 1)) > 0.15


def test_evaluate_decision_metrics_follow_threshold() -> None:
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.3, 0.6, 0.7, 0.2])
    m = evaluate(y, p, threshold=0.5)
    assert m["decline_rate"] == pytest.approx(0.4)
    assert m["f1"] == pytest.approx(0.5)  # tp=1, fp=1, fn=1
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))


def test_paired_bootstrap_sees_a_better_model() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 3_000)
    good = y + rng.normal(0, 0.5, y.size)
    bad = y + rng.normal(0, 2.0, y.size)
    diff, low, high = paired_bootstrap_auc(y, good, bad, n_boot=200)
    assert diff == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, bad))
    assert 0 < low < diff < high
    same, low0, high0 = paired_bootstrap_auc(y, good, good, n_boot=50)
    assert same == low0 == high0 == 0
