"""The frame MLflow hands the model, checked: the raw float matrix the compiled scorer takes, and the value rules.

Every problem is a `BadRequest` naming columns, rows (0-based positions) and rules, never a submitted
value. The model runs these checks on every call, so plain `mlflow models serve`, `creditflow serve`
and batch scoring refuse the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.extensions import ExtensionArray
from pandas.api.types import is_bool_dtype, is_numeric_dtype, is_object_dtype

from creditflow.data.dataset import coerce_columns
from creditflow.data.rules import RuleCheck
from creditflow.errors import BadRequest, DataError
from creditflow.model.categories import Codes
from creditflow.specs import DatasetSpec

MAX_NAME = 40  # column names are echoed (they are not applicant data), but cut short


def shown_names(names: Sequence[Any], limit: int = 5) -> str:
    """Column names for an error message: the first few, cut short."""
    shown = [str(n)[:MAX_NAME] for n in list(names)[:limit]]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(shown) + more


def applicant_matrix(frame: pd.DataFrame, spec: DatasetSpec, codes: Codes | None = None) -> np.ndarray:
    """The raw columns as a float matrix (signature order); absent nullable columns are all missing.

    Categorical columns hold codes into their vocabulary (`codes`, the model's; by default the spec's categories).
    """
    if not isinstance(frame, pd.DataFrame):
        raise BadRequest(f"expected a table of applicants, got {type(frame).__name__}")
    if len(frame) == 0:
        raise BadRequest("the request holds no applicants")
    names = frame.columns.tolist()
    if names == spec.raw_columns:  # the model's columns in its order: a parsed numeric request is its float block
        block = float_block(frame)
        if block is not None:
            return block.copy()
    if len(set(names)) != len(names):
        twice = sorted({c for c in names if names.count(c) > 1})
        raise BadRequest(f"column(s) given twice: {shown_names(twice)}")
    present = set(names)
    missing = [c for c, col in spec.columns.items() if c not in present and not col.nullable]
    if missing:
        raise BadRequest(f"missing column(s): {shown_names(missing)}")
    numbers = _numbers_only(frame, names, spec)
    if numbers is not None:
        return numbers
    dtypes = dict(zip(names, frame._mgr.get_dtypes(), strict=True))  # `frame.dtypes` builds a Series: ~25 us
    numeric = [c for c, col in spec.columns.items() if col.group != "categorical" and c in dtypes]
    wrong = [c for c in numeric if not _holds_numbers(dtypes[c])]
    if wrong:
        raise BadRequest(f"column(s) must hold numbers or null: {shown_names(wrong)}")
    categorical = [c for c, col in spec.columns.items() if col.group == "categorical"]
    if categorical:
        return _coded_matrix(frame, spec, categorical, codes or Codes(spec_vocabulary(spec)))
    try:
        return frame.reindex(columns=spec.raw_columns).to_numpy(dtype="float64", na_value=np.nan)
    except (TypeError, ValueError):
        bad = [c for c in numeric if pd.to_numeric(frame[c], errors="coerce").isna().sum() > frame[c].isna().sum()]
        raise BadRequest(f"column(s) must hold numbers or null: {shown_names(bad or numeric)}") from None


def _numbers_only(frame: pd.DataFrame, names: list[str], spec: DatasetSpec) -> np.ndarray | None:
    """The raw matrix straight from a frame of numbers only (no bool, text or nullable-integer column: one numeric
    block, as a request is parsed), or None for the column-by-column path; a copy, never a view of `frame`."""
    raw = spec.raw_columns
    if any(col.group == "categorical" for col in spec.columns.values()) or not set(names) <= set(raw):
        return None
    values = frame.to_numpy()
    if values.dtype.kind not in "fiu":
        return None
    if names == raw:
        return values.astype("float64")
    R = np.full((len(frame), len(raw)), np.nan, order="F")
    R[:, [raw.index(c) for c in names]] = values
    return R


def float_block(frame: pd.DataFrame) -> np.ndarray | None:
    """A frame's values as the rows x columns float64 array it holds, no copy, when it is one float block in column
    order (as `serving.requests` builds a numeric request); else None. `DataFrame.to_numpy` checks and dispatches:
    15x the cost."""
    blocks = frame._mgr.blocks
    if len(blocks) != 1 or blocks[0].dtype != np.float64 or not blocks[0].mgr_locs.is_slice_like:
        return None
    where = blocks[0].mgr_locs.as_slice
    return blocks[0].values.T if where.start == 0 and where.step == 1 else None


def spec_vocabulary(spec: DatasetSpec) -> dict[str, tuple[str, ...]]:
    """The spec's own categories per categorical column (a fitted model's vocabulary adds what it saw)."""
    return {raw: col.categories for raw, col in spec.columns.items() if col.group == "categorical"}


def _coded_matrix(frame: pd.DataFrame, spec: DatasetSpec, categorical: list[str], codes: Codes) -> np.ndarray:
    """Data sets with categorical columns: numbers as floats, categories as codes (NaN missing, -1 unknown)."""
    R = np.empty((len(frame), len(spec.raw_columns)), order="F")
    cells, categorical = _cells(frame), set(categorical)
    for j, c in enumerate(spec.raw_columns):
        values = cells.get(c)
        if c in categorical:
            R[:, j] = codes.of(c, values, len(frame))
            continue
        try:
            R[:, j] = np.nan if values is None else _floats(values)
        except (TypeError, ValueError):
            try:  # the data set's own message, naming the column
                coerce_columns(frame.reindex(columns=spec.raw_columns), spec, origin="request")
            except DataError as exc:
                raise BadRequest(str(exc)) from None
            raise
    return R


def _cells(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each column's values as pandas holds them, read without a Series (pandas 3 builds one per column read, which
    costs more than a request's data: docs/performance.md; pandas' blocks, pandas pinned): numbers as their arrays,
    nullable numbers as floats (NaN missing), anything else as an object array with None for missing. A 2-D block
    (a parsed request's numbers, its texts) is read whole, its missing values found in one pass."""
    names, out = frame.columns.tolist(), {}
    for block in frame._mgr.blocks:
        values = block.values
        if isinstance(values, np.ndarray) and values.ndim == 2:
            for column, at in zip(_plain(values), block.mgr_locs, strict=True):
                out[names[at]] = column
        else:
            for at in block.mgr_locs:
                out[names[at]] = _plain(frame._mgr.iget_values(at))
    return out


def cells_of(frame: pd.DataFrame, column: str) -> np.ndarray:
    """One column's values as `_cells` reads them."""
    return _plain(frame._mgr.iget_values(frame.columns.get_loc(column)))


def _plain(values: np.ndarray | ExtensionArray) -> np.ndarray:
    if isinstance(values, np.ndarray):
        if values.dtype != object:
            return values
        missing = pd.isna(values)
        return np.where(missing, None, values) if missing.any() else values  # NaN, pd.NA, NaT: None
    if values.dtype.kind in "iuf":
        return values.to_numpy(dtype="float64", na_value=np.nan)
    return values.to_numpy(dtype=object, na_value=None)


@lru_cache(maxsize=64)
def _holds_numbers(dtype: Any) -> bool:
    """Numbers, or objects (checked cell by cell when read as floats); never booleans."""
    return not is_bool_dtype(dtype) and (is_numeric_dtype(dtype) or is_object_dtype(dtype))


def _floats(values: np.ndarray) -> np.ndarray:
    return values if values.dtype == np.float64 else values.astype("float64")  # None is NaN


def check_rules(R: np.ndarray, rules: RuleCheck) -> None:
    """Raise BadRequest naming the first broken value rule and how many applicants break one."""
    if rules.any_broken(R):
        _raise_for(rules.reasons(R))


def _raise_for(reasons: np.ndarray) -> None:
    bad = np.flatnonzero(reasons != "")
    if len(bad):
        first = int(bad[0])
        raise BadRequest(f"{len(bad)} applicant(s) break the value rules; first: row {first}: {reasons[first]}")
