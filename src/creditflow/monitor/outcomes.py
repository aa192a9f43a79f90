"""Outcomes joined to the batch predictions they judge: per vintage (the batch id, YYYY-MM), by applicant id.

The outcomes of a month are a file named for it (`outcomes/2025-03.csv`: id, target and, optionally,
`known_month`), as `creditflow data generate` writes them; they join the predictions of the batch of the
same id, so an applicant scored in several batches is judged, in each vintage, on that batch's prediction.
Outcomes whose id the batch does not hold are counted, never dropped silently; outcomes not known by the
report's month (`known_month` later) are left out; months no batch scored are listed apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from creditflow.data.dataset import binary_target
from creditflow.data.io import id_header, read_table
from creditflow.data.months import KNOWN_MONTH, check_month, month_files
from creditflow.errors import DataError
from creditflow.serving.batch.partitions import published_batches, read_partition
from creditflow.serving.batch.table import SCORED_DIR
from creditflow.specs import DatasetSpec

PREDICTED = ["applicant_id", "probability", "model_name", "model_version", "run_id"]


@dataclass(frozen=True)
class Vintage:
    """One batch's predictions that have an outcome, and what could not be joined."""

    vintage: str
    model_name: str
    model_version: str
    run_id: str
    scored: int  # rows the batch scored
    y: np.ndarray  # outcomes (0/1) of the joined rows
    p: np.ndarray  # the batch's P(default) of the same rows
    unknown: int  # outcomes of the month whose applicant the batch does not hold
    pending: int  # outcomes of the month not yet known at the report's month


@dataclass(frozen=True)
class Scored:
    """A batch's scored rows (id, probability) and the model that scored them."""

    batch_id: str
    rows: pd.DataFrame
    lineage: dict[str, str]


def read_batches(predictions: str | Path) -> list[Scored]:
    """Every published batch under a batch job's output directory, oldest id first."""
    root = Path(predictions) / SCORED_DIR
    batches = published_batches(root)
    if not batches:
        raise DataError(f"{predictions}: no scored batches (expected {root}/batch_id=...; run creditflow score batch)")
    out = []
    for batch_id, path in batches.items():
        table = read_partition(path, PREDICTED).to_pandas()
        lineage = {k: str(table[k].iloc[0]) if len(table) else "" for k in PREDICTED[2:]}
        rows = pd.DataFrame({"id": table["applicant_id"].astype(str),
                             "probability": table["probability"].astype("float64")})
        out.append(Scored(batch_id, rows, lineage))
    return out


def read_outcomes(path: Path, spec: DatasetSpec, as_of: str) -> tuple[pd.DataFrame, int]:
    """A month's outcomes known by `as_of` as (id text, 0/1 outcome), and how many are not known yet."""
    frame = read_table(path)
    wanted = spec.id_column or "Id"
    id_column = id_header(list(frame.columns), wanted)
    if id_column is None:
        raise DataError(f"{path}: no id column '{wanted}'")
    target = spec.target.column
    if target not in frame.columns:
        raise DataError(f"{path}: no outcome column '{target}'")
    pending = 0
    if KNOWN_MONTH in frame.columns:
        known = (frame[KNOWN_MONTH].astype(str) <= as_of).to_numpy()
        frame, pending = frame[known], int((~known).sum())
    if frame.empty:
        return pd.DataFrame({"id": pd.Series(dtype=str), "y": pd.Series(dtype="int64")}), pending
    ids = frame[id_column]
    if ids.isna().any():
        raise DataError(f"{path}: id column '{id_column}' has {int(ids.isna().sum())} empty value(s)")
    if pd.api.types.is_float_dtype(ids):  # 17.0 -> "17", as the batch job writes ids
        ids = ids.astype("int64")
    y = binary_target(frame[target], spec, str(path))
    return pd.DataFrame({"id": ids.astype(str).to_numpy(), "y": y.to_numpy()}), pending


def join_vintages(batches: list[Scored], outcomes: str | Path, spec: DatasetSpec,
                  as_of: str) -> tuple[list[Vintage], dict[str, int]]:
    """Each batch's predictions joined with its month's known outcomes; and outcomes of months never scored.

    An outcome file whose ids match none of its batch's predictions is a one-line error (wrong file or
    wrong batch); some unmatched ids are counted in the vintage's `unknown`.
    """
    check_month(as_of, "--as-of")
    files = month_files(outcomes)
    if not files:
        raise DataError(f"{outcomes}: no outcome files named by month (YYYY-MM.csv)")
    vintages, by_id = [], {b.batch_id: b for b in batches}
    for batch in batches:
        path = files.get(batch.batch_id)
        known, pending = read_outcomes(path, spec, as_of) if path else (None, 0)
        if known is None or known.empty:
            vintages.append(_vintage(batch, np.array([], int), np.array([], float), 0, pending))
            continue
        joined = known.merge(batch.rows.drop_duplicates("id", keep="last"), on="id", how="left")
        matched = joined["probability"].notna().to_numpy()
        if not matched.any():
            raise DataError(f"{path}: none of its {len(known):,} outcome ids is among the {len(batch.rows):,} "
                            f"applicants of batch {batch.batch_id} (wrong outcomes for this batch?)")
        vintages.append(_vintage(batch, joined["y"].to_numpy()[matched], joined["probability"].to_numpy()[matched],
                                 int((~matched).sum()), pending))
    unscored = {m: n for m, p in files.items() if m not in by_id and (n := len(read_outcomes(p, spec, as_of)[0]))}
    return vintages, unscored


def _vintage(batch: Scored, y: np.ndarray, p: np.ndarray, unknown: int, pending: int) -> Vintage:
    return Vintage(batch.batch_id, batch.lineage["model_name"], batch.lineage["model_version"],
                   batch.lineage["run_id"], len(batch.rows), y.astype("int64"), p.astype("float64"), unknown, pending)
