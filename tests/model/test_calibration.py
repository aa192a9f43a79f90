"""Post-hoc calibration: fitted maps are increasing, repair a distorted probability, and travel in the config."""

from __future__ import annotations

import numpy as np
import pytest

from creditflow.model.calibration import Calibration, calibrated, fit_calibration
from creditflow.train.metrics import calibration_error


def distorted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true P(default), outcomes, an over-confident score): the score is the truth pushed towards 0 and 1."""
    rng = np.random.default_rng(seed)
    truth = np.clip(rng.beta(1.2, 12.0, n), 1e-4, 0.999)
    y = (rng.random(n) < truth).astype(int)
    logit = np.log(truth / (1 - truth))
    return truth, y, 1 / (1 + np.exp(-(1.5 * logit + 2.0)))  # what scale_pos_weight and deep trees do


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_calibration_repairs_an_over_confident_score_on_new_rows(method: str) -> None:
    _, y_fit, score_fit = distorted(20_000, seed=1)
    truth, y_new, score_new = distorted(20_000, seed=2)  # fitted on one sample, judged on another
    calibration = fit_calibration(method, score_fit, y_fit)
    before, after = calibration_error(y_new, score_new), calibration_error(y_new, calibration.apply(score_new))
    assert before > 0.05 and after < before / 3, (before, after)
    assert np.abs(calibration.apply(score_new) - truth).mean() < np.abs(score_new - truth).mean() / 3


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_the_map_never_reverses_an_order_and_round_trips_through_the_config(method: str) -> None:
    """Increasing: decisions keep their order and every reason its direction."""
    _, y, score = distorted(5_000, seed=3)
    calibration = fit_calibration(method, score, y)
    grid = np.linspace(0, 1, 2_001)
    assert np.all(np.diff(calibration.apply(grid)) >= 0)
    assert np.all((calibration.apply(grid) >= 0) & (calibration.apply(grid) <= 1))
    again = Calibration.from_config(calibration.to_config())
    np.testing.assert_array_equal(again.apply(score), calibration.apply(score))
    assert Calibration.from_config(None) is None and calibrated(score, None) is score
