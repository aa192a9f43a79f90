"""The model card of a training run: what a model-risk review (SR 11-7) reads, generated, never hand-written.

`build_card` computes the figures from the specs, the fitted pipeline and the held-out split: the metrics the run
logs, with bootstrap intervals; performance and approval rate per subgroup of the spec's `report_by` columns;
calibration; the monotone check of the declared columns (gate (f)'s core). `train.card_text` writes them out as
sections, `train.card_render` as Markdown and HTML. No MLflow here: `train.run` logs the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from creditflow.data.dataset import Split, is_generated_source
from creditflow.model.calibration import Calibration
from creditflow.model.monotone import ColumnCheck, monotone_violations
from creditflow.model.pipeline import predict_default
from creditflow.specs import ColumnSpec, DatasetSpec, ExperimentSpec, ReportBySpec
from creditflow.train.metrics import Interval, bootstrap_intervals, evaluate, reliability

RESAMPLES, SEED, LEVEL = 200, 0, 0.95  # the card's percentile bootstrap over held-out rows
MONOTONE_ROWS = 200  # held-out applicants the card's monotone check varies (sampled with SEED)
NOT_GIVEN = "not given"  # the subgroup of applicants without a value


@dataclass(frozen=True)
class DataFacts:
    """What the run trained and tested on: where the data came from, its digest, its size and default rate."""

    source: str
    digest: str
    train_rows: int
    held_out_rows: int
    default_rate: float  # over training and held-out rows
    held_out_default_rate: float
    dropped_rows: int  # rows breaking a value rule, left out before the split

    @property
    def generated(self) -> bool:
        return is_generated_source(self.source)


def data_facts(split: Split, source: str, digest: str, dropped_rows: int) -> DataFacts:
    """The facts of a split: its two parts together are the data set's valid rows."""
    y = pd.concat([split.y_train, split.y_test])
    return DataFacts(source, digest, len(split.y_train), len(split.y_test), float(y.mean()), float(split.y_test.mean()),
                     dropped_rows)


@dataclass(frozen=True)
class Subgroup:
    """One subgroup of a report_by column on the held-out split; `roc_auc` is None when it holds one class."""

    column: str  # the column's label
    group: str
    rows: int
    defaults: int
    mean_p: float  # mean P(default) as served
    approval_rate: float  # P(default) below the threshold
    intervals: dict[str, Interval]
    roc_auc: float | None

    @property
    def default_rate(self) -> float:
        return self.defaults / self.rows


def band_names(bands: tuple[float, ...], integer: bool) -> list[str]:
    """Names of the bands below, between and above the edges: <30, 30-44, 45-59, 60+ for a whole-number column."""
    inner = [f"{low:g}-{high - 1:g}" if integer else f"{low:g} to <{high:g}"
             for low, high in zip(bands, bands[1:], strict=False)]
    return [f"<{bands[0]:g}", *inner, f"{bands[-1]:g}+"]


def subgroup_labels(values: pd.Series, column: ColumnSpec, report: ReportBySpec) -> pd.Series:
    """Each applicant's subgroup: its band or its category, `not given` when the value is missing."""
    if report.bands:
        names = np.array(band_names(report.bands, column.integer), dtype=object)
        where = np.searchsorted(report.bands, values.to_numpy(dtype="float64", na_value=np.nan), side="right")
        labels = pd.Series(names[where], index=values.index)
    else:
        labels = values.astype(object)
    return labels.where(values.notna(), NOT_GIVEN).astype(str)


def group_order(labels: pd.Series, column: ColumnSpec, report: ReportBySpec) -> list[str]:
    """The subgroups present, bands in order (categories in the spec's order, then the rest), `not given` last."""
    present = set(labels)
    named = band_names(report.bands, column.integer) if report.bands else [*column.categories, *sorted(present)]
    return list(dict.fromkeys(g for g in [*named, NOT_GIVEN] if g in present))


def subgroup(label: str, group: str, y: np.ndarray, p: np.ndarray, threshold: float) -> Subgroup:
    """One subgroup's figures, with bootstrap intervals over its own rows."""
    auc = evaluate(y, p, threshold)["roc_auc"] if 0 < y.sum() < len(y) else None
    return Subgroup(label, group, len(y), int(y.sum()), float(p.mean()), float(np.mean(p < threshold)),
                    bootstrap_intervals(y, p, threshold, RESAMPLES, SEED, LEVEL), auc)


def subgroups(ds: DatasetSpec, X: pd.DataFrame, y: np.ndarray, p: np.ndarray, threshold: float) -> list[Subgroup]:
    """Every subgroup of every report_by column of the spec, on the held-out rows `X`."""
    out = []
    for raw, report in ds.report_by.items():
        column = ds.columns[raw]
        labels = subgroup_labels(X[raw], column, report)
        for group in group_order(labels, column, report):
            mask = (labels == group).to_numpy()
            out.append(subgroup(column.label, group, y[mask], p[mask], threshold))
    return out


@dataclass(frozen=True)
class ModelCard:
    """The figures of one run's model, with the specs that say what it is for."""

    run_id: str
    experiment: ExperimentSpec
    dataset: DatasetSpec
    data: DataFacts
    metrics: dict[str, float]  # `evaluate` on the held-out split: what the run logs as test_*
    intervals: dict[str, Interval]
    subgroups: list[Subgroup]
    uncalibrated_error: float | None  # held-out calibration error before the calibration map (None: no map)
    reliability: list[tuple[int, float, float]]  # deciles of P(default): rows, mean predicted, observed rate
    monotone: list[ColumnCheck]
    monotone_rows: int
    explanations: tuple[str, ...]  # artifact paths of the explanation pictures
    registry: tuple[str, ...]  # the registered versions of the run's model, when the card is regenerated


def build_card(exp: ExperimentSpec, ds: DatasetSpec, pipe: Pipeline, split: Split, data: DataFacts,
               calibration: Calibration | None = None, run_id: str = "", explanations: tuple[str, ...] = (),
               registry: tuple[str, ...] = ()) -> ModelCard:
    """The card's figures from the served probability on the held-out split: the numbers the run logs, and more."""
    X, y = split.X_test[ds.raw_columns], split.y_test.to_numpy()
    p = predict_default(pipe, X, calibration)
    before = evaluate(y, predict_default(pipe, X), exp.threshold)["calibration_error"] if calibration else None
    rows = X.sample(n=min(MONOTONE_ROWS, len(X)), random_state=SEED)
    checks = monotone_violations(partial(predict_default, pipe, calibration=calibration), rows, ds)
    return ModelCard(run_id, exp, ds, data, evaluate(y, p, exp.threshold),
                     bootstrap_intervals(y, p, exp.threshold, RESAMPLES, SEED, LEVEL),
                     subgroups(ds, X, y, p, exp.threshold), before, reliability(y, p), checks, len(rows),
                     tuple(explanations), tuple(registry))
