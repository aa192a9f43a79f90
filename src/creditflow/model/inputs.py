"""The frame MLflow hands the model, checked: the raw float matrix the compiled scorer takes, and the value rules.

Every problem is a `BadRequest` naming columns, rows (0-based positions) and rules, never a submitted
value. The model runs these checks on every call, so plain `mlflow models serve`, `creditflow serve`
and batch scoring refuse the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype, is_object_dtype

from creditflow.data.dataset import coerce_columns
from creditflow.data.rules import RuleCheck, rule_violations
from creditflow.errors import BadRequest, DataError
from creditflow.specs import DatasetSpec

MAX_NAME = 40  # column names are echoed (they are not applicant data), but cut short


def shown_names(names: Sequence[Any], limit: int = 5) -> str:
    """Column names for an error message: the first few, cut short."""
    shown = [str(n)[:MAX_NAME] for n in list(names)[:limit]]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(shown) + more


def applicant_matrix(frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """The raw columns as a float matrix (signature order); absent nullable columns are all missing."""
    if not isinstance(frame, pd.DataFrame):
        raise BadRequest(f"expected a table of applicants, got {type(frame).__name__}")
    if len(frame) == 0:
        raise BadRequest("the request holds no applicants")
    if frame.columns.duplicated().any():
        twice = sorted(set(frame.columns[frame.columns.duplicated()]))
        raise BadRequest(f"column(s) given twice: {shown_names(twice)}")
    missing = [c for c, col in spec.columns.items() if c not in frame.columns and not col.nullable]
    if missing:
        raise BadRequest(f"missing column(s): {shown_names(missing)}")
    dtypes = dict(zip(frame.columns, frame.dtypes, strict=True))
    numeric = [c for c, col in spec.columns.items() if col.group != "categorical" and c in dtypes]
    wrong = [c for c in numeric if is_bool_dtype(dtypes[c]) or not (is_numeric_dtype(dtypes[c])
                                                                     or is_object_dtype(dtypes[c]))]
    if wrong:
        raise BadRequest(f"column(s) must hold numbers or null: {shown_names(wrong)}")
    if any(c.group == "categorical" for c in spec.columns.values()):
        return _mixed_matrix(frame, spec)
    try:
        return frame.reindex(columns=spec.raw_columns).to_numpy(dtype="float64", na_value=np.nan)
    except (TypeError, ValueError):
        bad = [c for c in numeric if pd.to_numeric(frame[c], errors="coerce").isna().sum() > frame[c].isna().sum()]
        raise BadRequest(f"column(s) must hold numbers or null: {shown_names(bad or numeric)}") from None


def _mixed_matrix(frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """Data sets with categorical columns: an object matrix, numbers as floats, categories as text or None."""
    full = frame.reindex(columns=spec.raw_columns)
    try:
        return coerce_columns(full, spec, origin="request").to_numpy(dtype=object)
    except DataError as exc:
        raise BadRequest(str(exc)) from None


def check_rules(frame_or_matrix: pd.DataFrame | np.ndarray, spec: DatasetSpec, rules: RuleCheck | None) -> None:
    """Raise BadRequest naming the first broken value rule and how many applicants break one.

    On the float matrix when the spec is numeric (`rules`), else on a frame of it.
    """
    if rules is not None:
        R = np.asarray(frame_or_matrix, dtype="float64")
        if rules.any_broken(R):
            _raise_for(rules.reasons(R))
        return
    frame = pd.DataFrame(frame_or_matrix, columns=spec.raw_columns).infer_objects()
    _raise_for(rule_violations(frame, spec).to_numpy(dtype=object))


def _raise_for(reasons: np.ndarray) -> None:
    bad = np.flatnonzero(reasons != "")
    if len(bad):
        first = int(bad[0])
        raise BadRequest(f"{len(bad)} applicant(s) break the value rules; first: row {first}: {reasons[first]}")
