"""Categorical columns as numbers, so the compiled scorer takes one float matrix for every data set.

A categorical column enters the raw matrix as codes: the position of the applicant's text in the
column's vocabulary (the fitted encoder's categories, then the dataset spec's categories it never
saw), NaN when missing, -1 when the text is in neither. `category_tables` replays the fitted
categorical preprocessing (imputation, one-hot or ordinal encoding) on those codes through tables
of its own answers: a text the encoder never saw is treated as the fitted encoder treats it
(one-hot `ignore`: all zeros; ordinal: its `unknown_value`), a missing one as the fitted pipeline
treats the served frame's None (data.dataset.coerce_columns: the training data had it too, so the
encoder usually knows it as a category of its own). `decode` turns codes back into texts for
scikit-learn's own preprocessing (the slow path).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import repeat

import numpy as np
import pandas as pd
from pandas.api.types import infer_dtype
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

from creditflow.specs import DatasetSpec

UNKNOWN = -1.0  # the code of a text in no vocabulary
UNSEEN_TEXT = "\x00not in the vocabulary"  # what `decode` gives for UNKNOWN: no encoder has seen it


class NotCompilable(ValueError):
    """The pipeline holds a step the fast path does not replay."""


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _texts(categories: np.ndarray) -> list[str]:
    """An encoder's categories as texts, the missing one (sorted last by scikit-learn) left out."""
    return [str(c) for c in categories if not _is_missing(c)]


def _encoder(transformer: object) -> OneHotEncoder | OrdinalEncoder | None:
    last = transformer.steps[-1][1] if isinstance(transformer, Pipeline) else transformer
    return last if isinstance(last, OneHotEncoder | OrdinalEncoder) else None


def vocabulary(pipe: Pipeline, spec: DatasetSpec) -> dict[str, tuple[str, ...]]:
    """Raw categorical column -> its texts in code order: the fitted encoder's categories, then the spec's others."""
    fitted: dict[str, list[str]] = {}
    pre = pipe.named_steps.get("preprocess")
    for _, transformer, cols in pre.transformers_ if isinstance(pre, ColumnTransformer) else ():
        encoder = _encoder(transformer)
        for i, col in enumerate(cols if encoder is not None else ()):
            fitted[spec.raw_name_of(col)] = _texts(encoder.categories_[i])
    out = {}
    for raw, col in spec.columns.items():
        if col.group == "categorical":
            known = fitted.get(raw, [])
            out[raw] = tuple(known + [c for c in col.categories if c not in known])
    return out


class Codes:
    """Encodes a DataFrame's categorical columns as codes into their vocabulary (built once per model)."""

    def __init__(self, texts: Mapping[str, Sequence[str]]):
        self.texts = {raw: tuple(t) for raw, t in texts.items()}
        self._codes = {raw: {None: np.nan, **{text: float(i) for i, text in enumerate(t)}}
                       for raw, t in self.texts.items()}

    def of(self, column: str, values: pd.Series | np.ndarray | None, rows: int) -> np.ndarray:
        """Codes of one column's values (None: the column is absent, all missing; an object array: None missing).
        Values are read as text, as the training data was (`data.dataset.coerce_columns`): 1 is "1"."""
        if values is None:
            return np.full(rows, np.nan)
        cells = values if isinstance(values, np.ndarray) else values.to_numpy(dtype=object, na_value=None)
        if infer_dtype(cells, skipna=True) not in ("string", "empty"):  # every kind of missing is None by now
            cells = pd.Series(cells, dtype=object).astype("string").to_numpy(dtype=object, na_value=None)
        # a dict look-up per cell: a fraction of a microsecond, and no pandas call (a one-row request costs little)
        return np.fromiter(map(self._codes[column].get, cells, repeat(UNKNOWN, len(cells))), "float64", len(cells))

    def decode(self, column: str, codes: np.ndarray) -> np.ndarray:
        """Codes back to texts (None where missing; UNSEEN_TEXT where the text was in no vocabulary)."""
        pool = np.asarray([*self.texts[column], UNSEEN_TEXT, None], dtype=object)
        index = np.where(np.isnan(codes), len(pool) - 1, np.where(codes < 0, len(pool) - 2, np.nan_to_num(codes)))
        return pool[index.astype(np.intp)]


def texts_series(texts: np.ndarray) -> pd.Series:
    """Texts as the training frame held them (`coerce_columns`): object dtype, None for missing. pandas 3 would
    infer its string dtype (NaN for missing), which the fitted imputer treats differently."""
    return pd.Series(texts, dtype=object)


# ---------------------------------------------------------------- the fitted categorical steps on codes


def _width(encoder: OneHotEncoder | OrdinalEncoder, j: int) -> int:
    return len(encoder.categories_[j]) if isinstance(encoder, OneHotEncoder) else 1


def category_tables(transformer: object, columns: list[str], vocabs: list[tuple[str, ...]]) -> list[np.ndarray]:
    """A fitted categorical transformer (an encoder, or imputer then encoder) as one table per column: row k is the
    transformer's own output for code k, then for a text it never saw, then for a missing one (None, as the served
    frame holds it). Exact by construction; `model.program` looks the codes up."""
    steps = [s for _, s in transformer.steps] if isinstance(transformer, Pipeline) else [transformer]
    encoder = _encoder(transformer)
    if encoder is None or not all(isinstance(s, SimpleImputer | OneHotEncoder | OrdinalEncoder) for s in steps):
        raise NotCompilable(f"no fast path for {type(steps[-1]).__name__} on categorical columns")
    if isinstance(encoder, OneHotEncoder) and encoder.drop_idx_ is not None:
        raise NotCompilable("one-hot encoder that drops a category")
    if getattr(encoder, "infrequent_categories_", None) is not None:
        raise NotCompilable("encoder with infrequent categories")
    probes = [[*v, UNSEEN_TEXT, None] for v in vocabs]  # code k: row k; unknown: len(v); missing: len(v) + 1
    rows = max(len(p) for p in probes)
    frame = pd.DataFrame({c: texts_series(np.asarray(p + p[-1:] * (rows - len(p)), dtype=object))
                          for c, p in zip(columns, probes, strict=True)})
    try:
        out = transformer.transform(frame)
    except ValueError as exc:  # e.g. handle_unknown="error": the fitted transformer refuses an unseen text
        raise NotCompilable(f"the categorical transformer refuses a probe ({exc})") from None
    out = np.asarray(out.toarray() if hasattr(out, "toarray") else out, dtype="float64")
    offsets = np.cumsum([0] + [_width(encoder, j) for j in range(len(columns))])
    if out.shape[1] != offsets[-1]:
        raise NotCompilable("the categorical transformer's output is not one block per column")
    return [out[:len(p), offsets[j]:offsets[j + 1]] for j, p in enumerate(probes)]
