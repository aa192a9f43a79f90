"""The training population's profile, logged inside the model: what drift is measured against.

`reference_profile` bins every raw input column (deciles of its training values, or its training
categories, plus a bin for missing values) and the model's training scores. It travels with every
registered version as `artifacts/reference_profile.json`; `psi` compares bin shares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError

from creditflow.errors import TrackingError
from creditflow.specs import DatasetSpec

PROFILE_ARTIFACT = "reference_profile"  # the model artifact's key, and its file name (.json)
QUANTILES = np.linspace(0.1, 0.9, 9)  # decile cut points
FLOOR = 1e-4  # an empty bin's share, so the logarithm stays finite


class ColumnProfile(BaseModel):
    """One column's reference bins: numeric cut points or categories, and the training share of each bin.

    Numeric value v falls in bin `searchsorted(edges, v, side="right")`; a category in its position,
    anything unseen in training in the bin after them. The last share is always the missing values'.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["numeric", "categorical"] = "numeric"
    edges: list[float] = []
    categories: list[str] = []
    shares: list[float] = []

    def counts(self, values: pd.Series) -> np.ndarray:
        """How many of `values` fall in each bin (missing last)."""
        missing = values.isna().to_numpy()
        present = values[~missing]
        if self.kind == "categorical":
            positions = pd.Index(self.categories).get_indexer(present.astype(str))
            binned, bins = np.where(positions < 0, len(self.categories), positions), len(self.categories) + 1
        else:
            edges = np.asarray(self.edges, dtype="float64")
            binned, bins = np.searchsorted(edges, present.to_numpy("float64"), side="right"), len(edges) + 1
        return np.append(np.bincount(binned, minlength=bins), missing.sum()).astype("float64")

    def bin_labels(self) -> list[str]:
        """A label for each bin, in the order of `counts` (for charts): value ranges or categories, then missing."""
        if self.kind == "categorical":
            return [*self.categories, "other", "missing"]
        cuts = [f"{e:.3g}" for e in self.edges]
        if not cuts:
            return ["all", "missing"]
        inner = [f"[{low}, {high})" for low, high in zip(cuts, cuts[1:], strict=False)]
        return [f"< {cuts[0]}", *inner, f">= {cuts[-1]}", "missing"]


class ReferenceProfile(BaseModel):
    """The training population as the monitor compares batches with it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rows: int
    columns: dict[str, ColumnProfile]
    score: ColumnProfile


def profile_column(values: pd.Series, categorical: bool) -> ColumnProfile:
    """Decile bins of a numeric column's training values (its categories, if categorical), with their shares."""
    present = values.dropna()
    if categorical:
        bins = ColumnProfile(kind="categorical", categories=sorted(present.astype(str).unique().tolist()))
    else:
        edges = np.unique(np.quantile(present.to_numpy("float64"), QUANTILES)) if len(present) else np.array([])
        bins = ColumnProfile(edges=edges.tolist())
    return bins.model_copy(update={"shares": (bins.counts(values) / max(len(values), 1)).tolist()})


def reference_profile(X: pd.DataFrame, ds: DatasetSpec, probability: np.ndarray) -> ReferenceProfile:
    """The training rows' profile: each raw column of the spec, and the model's scores."""
    columns = {raw: profile_column(X[raw], col.group == "categorical") for raw, col in ds.columns.items()}
    return ReferenceProfile(rows=len(X), columns=columns, score=profile_column(pd.Series(probability), False))


def psi(expected: np.ndarray | list[float], actual: np.ndarray | list[float]) -> float:
    """Population stability index of two bin-share vectors: sum of (a - e) * ln(a / e), empty bins floored."""
    e = np.maximum(np.asarray(expected, dtype="float64"), FLOOR)
    a = np.maximum(np.asarray(actual, dtype="float64"), FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def load_profile(model_dir: Path, model_uri: str) -> ReferenceProfile:
    """The reference profile logged inside a downloaded model."""
    path = model_dir / "artifacts" / f"{PROFILE_ARTIFACT}.json"
    if not path.is_file():
        raise TrackingError(f"model {model_uri} has no reference profile (logged before creditflow profiled "
                            "training data): retrain it to monitor drift")
    try:
        return ReferenceProfile.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise TrackingError(f"model {model_uri}: reference profile unreadable ({exc.errors()[0]['msg']})") from None
