"""Applicants month by month, with outcomes that become known later and an optional drift from an onset month.

`generate_months` writes one folder per kind of file: `applicants/YYYY-MM.csv` (the Kaggle columns without
the target, `Id` unique across months), `outcomes/YYYY-MM.csv` (`Id`, `SeriousDlqin2yrs`, `known_month`)
and `truth/YYYY-MM.csv` (`Id`, `true_probability`). `labelled_window` reads back the most recent application
months whose outcomes are known by a given month, in the Kaggle training layout. The population and the
true log-odds of each drift kind are in docs/generated_data.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from creditflow.data.calendar import DRIFT_KINDS, MONTH_PATTERN, DriftKind, add_months, check_month, month_range
from creditflow.data.io import read_table
from creditflow.data.synthetic import (
    ID_COLUMN,
    LATE_COLUMNS,
    RAW_COLUMNS,
    SENTINEL_VALUES,
    TARGET,
    age_term,
    draw_features,
    late_term,
    sigmoid,
    true_log_odds,
    utilisation_term,
)
from creditflow.errors import DataError

FEATURES: tuple[str, ...] = RAW_COLUMNS[1:]
KNOWN_MONTH = "known_month"
PROBABILITY = "true_probability"
FOLDERS = ("applicants", "outcomes", "truth")

# --- covariate drift: the population from the onset on (see docs/generated_data.md) ------------------
INCOME_FACTOR = 0.6  # reported incomes fall by 40 %
UTILISATION_LOGIT_SHIFT = 1.3  # utilisation in (0, 1) moves up on the logit scale
# --- concept drift: the true log-odds from the onset on, as weights on the terms of synthetic.true_log_odds ---
LATE_WEIGHT = 2.5  # late payments weigh 2.5 times as much
UTILISATION_WEIGHT = 0.2  # utilisation keeps a fifth of its weight (still increasing)
AGE_WEIGHT = -0.8  # the age slope reverses: older applicants become the riskier ones


@dataclass(frozen=True)
class Month:
    """One generated month: its applicants (Id + features), their outcomes and their true probabilities."""

    month: str
    applicants: pd.DataFrame
    outcomes: pd.DataFrame
    truth: pd.DataFrame


class LabelledWindow(NamedTuple):
    """Training rows (Id, target, features) of the application months whose outcomes are known."""

    frame: pd.DataFrame
    months: list[str]


def shift_population(features: pd.DataFrame, strength: float) -> pd.DataFrame:
    """Covariate drift: lower reported incomes, higher utilisation; `strength` 0 leaves the frame as it is."""
    if strength == 0:
        return features
    out = features.copy()
    income = out["MonthlyIncome"].to_numpy(dtype=float)
    out["MonthlyIncome"] = np.where(income > 0, np.rint(income * INCOME_FACTOR**strength), income)
    util = out["RevolvingUtilizationOfUnsecuredLines"].to_numpy(dtype=float)
    inside = (util > 0) & (util < 1)
    logit = np.log(np.where(inside, util, 0.5) / (1 - np.where(inside, util, 0.5)))
    shifted = np.round(sigmoid(logit + strength * UTILISATION_LOGIT_SHIFT), 9)
    out["RevolvingUtilizationOfUnsecuredLines"] = np.where(inside, shifted, util)
    return out


def drifted_log_odds(features: pd.DataFrame, strength: float) -> np.ndarray:
    """Concept drift: the true log-odds with late payments weighing more, utilisation less, age reversed.

    Sentinel rows (96/98 late counts) keep their rule; `strength` 0 gives `true_log_odds` itself.
    """
    eta = true_log_odds(features)
    if strength == 0:
        return eta
    late = [features[c].to_numpy(dtype=float) for c in LATE_COLUMNS]
    sentinel = late[0] >= SENTINEL_VALUES[0]
    delta = ((LATE_WEIGHT - 1) * late_term(late) + (UTILISATION_WEIGHT - 1) * utilisation_term(features)
             + (AGE_WEIGHT - 1) * age_term(features))
    return np.where(sentinel, eta, eta + strength * delta)


def drift_strength(month: str, onset: str | None) -> float:
    """How much of the drift a month carries: 0 before the onset, all of it from the onset on."""
    return 1.0 if onset is not None and month >= onset else 0.0


def generate_month(index: int, month: str, drift: DriftKind = "none", onset: str | None = None,
                   rows: int = 20_000, outcome_lag: int = 12, seed: int = 42) -> Month:
    """The `index`-th month's applicants: ids `index * rows + 1 ..`, drawn from their own stream of `seed`."""
    rng = np.random.default_rng([seed, index])
    strength = drift_strength(month, onset)
    features = draw_features(rng, rows)
    if drift in ("covariate", "both"):
        features = shift_population(features, strength)
    concept = strength if drift in ("concept", "both") else 0.0
    probability = sigmoid(drifted_log_odds(features, concept))
    ids = np.arange(index * rows + 1, (index + 1) * rows + 1, dtype=np.int64)
    applicants = pd.concat([pd.DataFrame({ID_COLUMN: ids}), features[list(FEATURES)]], axis=1)
    outcomes = pd.DataFrame({ID_COLUMN: ids, TARGET: (rng.random(rows) < probability).astype(np.int64),
                             KNOWN_MONTH: add_months(month, outcome_lag)})
    return Month(month, applicants, outcomes, pd.DataFrame({ID_COLUMN: ids, PROBABILITY: probability}))


def generate_months(output: str | Path, months: int, start: str, drift: DriftKind = "none", onset: str | None = None,
                    rows_per_month: int = 20_000, outcome_lag: int = 12, seed: int = 42) -> list[str]:
    """Write `months` months of applicants, outcomes and true probabilities under `output`; return the months."""
    check_month(start, "--start")
    if drift not in DRIFT_KINDS:
        raise DataError(f"drift must be one of {', '.join(DRIFT_KINDS)}, got '{drift}'")
    if drift != "none" and onset is None:
        raise DataError(f"drift '{drift}' needs an onset month (--onset YYYY-MM)")
    if onset is not None:
        check_month(onset, "--onset")
    if months < 1 or rows_per_month < 1 or outcome_lag < 0:
        raise DataError("months and rows per month must be positive and the outcome lag at least 0")
    folders = [Path(output) / name for name in FOLDERS]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    names = month_range(start, months)
    for index, name in enumerate(names):
        month = generate_month(index, name, drift, onset, rows_per_month, outcome_lag, seed)
        for folder, frame in zip(folders, (month.applicants, month.outcomes, month.truth), strict=True):
            write_month(frame, folder / f"{name}.csv")
    return names


def write_month(frame: pd.DataFrame, path: Path) -> None:
    """A month's file as the Kaggle file writes its values: integers as integers, missing as NA."""
    whole = {c: "Int64" for c in ("MonthlyIncome", "NumberOfDependents") if c in frame.columns}
    frame.astype(whole).to_csv(path, index=False, na_rep="NA", float_format="%.15g", lineterminator="\n")


def month_files(folder: str | Path) -> dict[str, Path]:
    """The YYYY-MM.csv files of a folder by month, oldest first (other files are not months)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such directory")
    return {p.stem: p for p in sorted(folder.glob("*.csv")) if MONTH_PATTERN.match(p.stem)}


def labelled_window(folder: str | Path, as_of: str, months: int) -> LabelledWindow:
    """The most recent `months` application months whose outcomes are all known by `as_of`, as training rows.

    `folder` holds `applicants/` and `outcomes/` as `generate_months` writes them; the frame has `Id`, the
    target and the Kaggle feature columns, oldest month first.
    """
    check_month(as_of, "as_of")
    folder = Path(folder)
    outcomes = {m: read_table(p) for m, p in month_files(folder / "outcomes").items() if m <= as_of}
    known = [m for m, frame in outcomes.items() if (frame[KNOWN_MONTH].astype(str) <= as_of).all()]
    chosen = known[-months:] if months > 0 else []
    if not chosen:
        raise DataError(f"{folder}: no application month has all its outcomes known by {as_of}")
    applicants = month_files(folder / "applicants")
    frames = []
    for month in chosen:
        if month not in applicants:
            raise DataError(f"{folder}: outcomes of {month} but no applicants/{month}.csv")
        rows = read_table(applicants[month]).merge(outcomes[month][[ID_COLUMN, TARGET]], on=ID_COLUMN, how="inner")
        frames.append(rows[[ID_COLUMN, TARGET, *FEATURES]])
    return LabelledWindow(pd.concat(frames, ignore_index=True), chosen)
