"""Post-hoc calibration of P(default): fitted on out-of-fold predictions, applied to the served probability.

Both methods are increasing maps of the model's probability, so the decision order and the direction
of every reason (contributions to the model's own score) are kept; only the probability's scale moves.
`sigmoid` (Platt scaling on the log-odds) has two parameters and suits small data; `isotonic` is a
step function through the out-of-fold points, more flexible and more data hungry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.special import expit, logit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

Method = Literal["sigmoid", "isotonic"]
EDGE = 1e-12  # probabilities are clipped this far from 0 and 1 before their log-odds are taken


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration map; it travels in the model config as plain numbers."""

    method: Method
    slope: float = 1.0  # sigmoid: p' = expit(slope * logit(p) + intercept)
    intercept: float = 0.0
    x: tuple[float, ...] = ()  # isotonic: p' = interpolation through (x, y)
    y: tuple[float, ...] = ()

    def apply(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype="float64")
        if self.method == "sigmoid":
            return expit(self.slope * logit(np.clip(p, EDGE, 1 - EDGE)) + self.intercept)
        return np.interp(p, self.x, self.y)

    def to_config(self) -> dict[str, Any]:
        return {"method": self.method, "slope": self.slope, "intercept": self.intercept,
                "x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> Calibration | None:
        if not config:
            return None
        return cls(config["method"], float(config["slope"]), float(config["intercept"]),
                   tuple(map(float, config["x"])), tuple(map(float, config["y"])))


def fit_calibration(method: Method, p: np.ndarray, y: np.ndarray) -> Calibration:
    """The map from out-of-fold probabilities `p` to the observed outcomes `y`."""
    p, y = np.asarray(p, dtype="float64"), np.asarray(y)
    if method == "sigmoid":
        platt = LogisticRegression(penalty=None).fit(logit(np.clip(p, EDGE, 1 - EDGE)).reshape(-1, 1), y)
        return Calibration("sigmoid", float(platt.coef_[0, 0]), float(platt.intercept_[0]))
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True).fit(p, y)
    return Calibration("isotonic", x=tuple(map(float, iso.X_thresholds_)), y=tuple(map(float, iso.y_thresholds_)))


def calibrated(p: np.ndarray, calibration: Calibration | None) -> np.ndarray:
    """`p` through the calibration map, or unchanged without one."""
    return p if calibration is None else calibration.apply(p)
