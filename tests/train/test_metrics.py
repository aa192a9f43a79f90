"""Metrics on known inputs."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from creditflow.train.metrics import (
    _weighted_figures,
    approval_rate,
    bootstrap_intervals,
    calibration_error,
    evaluate,
    ks_statistic,
    paired_bootstrap_auc,
)


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


def _sorted_with_ties(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(p, kind="stable")
    return y[order].astype("float64"), p[order], np.unique(p[order], return_inverse=True)[1]


def test_a_resample_as_row_counts_gives_the_figures_of_the_rows_it_repeats() -> None:
    """The bootstrap's fast path (rows sorted once, counted `w` times) equals `evaluate` on the repeated rows, ties
    in P(default) included; calibration error too where no two probabilities tie (ties may fall either side of a
    bin edge)."""
    rng = np.random.default_rng(3)
    p = rng.beta(1, 8, 2_000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    w = rng.integers(0, 4, p.size)
    for probabilities, with_ece in ((np.round(p, 2), False), (p, True)):
        ys, ps, ties = _sorted_with_ties(y, probabilities)
        ws = w[np.argsort(probabilities, kind="stable")]
        repeated_y, repeated_p = np.repeat(ys, ws), np.repeat(ps, ws)
        auc, ks, brier, ece, approved = _weighted_figures(ys, ps, ties, ws.astype("float64"), 0.2)
        expected = evaluate(repeated_y, repeated_p, 0.2)
        assert (auc, ks, brier) == pytest.approx((expected["roc_auc"], expected["ks"], expected["brier"]), abs=1e-12)
        assert approved == pytest.approx(approval_rate(repeated_p, 0.2)) == pytest.approx(1 - expected["decline_rate"])
        if with_ece:
            assert ece == pytest.approx(expected["calibration_error"], abs=1e-12)


def test_bootstrap_intervals_hold_the_figures_and_narrow_with_more_rows() -> None:
    rng = np.random.default_rng(4)
    p = rng.beta(1, 8, 30_000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    wide, narrow = bootstrap_intervals(y[:1_000], p[:1_000], 0.2), bootstrap_intervals(y, p, 0.2)
    point = evaluate(y, p, 0.2)
    for name in ("roc_auc", "ks", "brier"):
        low, high = narrow[name]
        assert low < point[name] < high
        assert high - low < (wide[name][1] - wide[name][0]) / 2
    assert narrow["approval_rate"][0] < approval_rate(p, 0.2) < narrow["approval_rate"][1]
    assert bootstrap_intervals(y, p, 0.2) == narrow  # a fixed seed: the same intervals every time


def test_one_class_gives_no_auc_interval_but_the_rest() -> None:
    p = np.linspace(0.01, 0.3, 50)
    intervals = bootstrap_intervals(np.zeros(50, dtype=int), p, 0.2, n_boot=20)
    assert all(np.isnan(intervals[name]).all() for name in ("roc_auc", "ks"))
    assert intervals["brier"][0] <= intervals["brier"][1]
    assert intervals["approval_rate"][0] <= approval_rate(p, 0.2) <= intervals["approval_rate"][1]
