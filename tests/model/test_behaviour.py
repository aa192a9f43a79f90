"""Behavioural tests of the flagship spec's models (Made-With-ML's tests/model tier): what a credit model must do
whatever its AUC. Directional expectations, invariance, minimum functionality.

Each family is scored the way it is served (probability, decision at the threshold, reason codes): the session's
champion (the logistic baseline, logged and loaded as the pyfunc) and the small HistGradientBoosting and XGBoost
pipelines of the session fixtures (compiled scoring with their SHAP reference, as the pyfunc builds it; their
P(default) curves straight from the pipeline, which the compiled scorer equals: tests/model/test_compiled.py).

Tree families are constrained to be monotone in the spec's `monotone` columns (model.pipeline.monotone_constraints),
so the directional expectations hold for every family. Where an expectation still fails the case is a strict xfail
whose reason gives the figures (an XPASS fails the run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import mlflow
import numpy as np
import pandas as pd
import pytest

from creditflow.data.dataset import split_data
from creditflow.model.artifact import model_config
from creditflow.model.pipeline import predict_default
from creditflow.model.pyfunc import Scoring
from creditflow.specs import DatasetSpec
from creditflow.train.log_model import shap_reference
from tests.conftest import ChampionStore, tracking_at

LATE_COUNTS = ["NumberOfTime30-59DaysPastDueNotWorse", "NumberOfTime60-89DaysPastDueNotWorse",
               "NumberOfTimes90DaysLate"]
UTILIZATION = "RevolvingUtilizationOfUnsecuredLines"
SAMPLE_ROWS = 300  # held-out applicants each curve is drawn for
TOLERANCE = 1e-12  # "never lowers": no drop beyond floating-point noise

FAMILIES = ("logistic", "xgboost", "hist_gradient_boosting")
LATE_90_APPROVED = ("the tree families approve the applicant below with 10 times 90+ days late, though it is their "
                    "first reason code (xgboost P = 0.049, hist_gradient_boosting P = 0.097, threshold 0.2): their "
                    "P(default) stops rising at 3, and only 20 of the 4,800 training rows are 3 or more")


@dataclass(frozen=True)
class Served:
    score: Callable[[pd.DataFrame], pd.DataFrame]  # raw applicant columns -> probability, decision, reason_codes
    p_default: Callable[[pd.DataFrame], np.ndarray]  # the same probabilities without reason codes (the curves)
    threshold: float
    held_out: pd.DataFrame  # SAMPLE_ROWS applicants this model never trained on, raw columns


@pytest.fixture(scope="module")
def served(champion_store: ChampionStore, fitted_xgboost, fitted_hist_gradient_boosting, small_spec: DatasetSpec,
           small_data) -> dict[str, Served]:
    exp = champion_store.exp
    with tracking_at(champion_store.uri):
        champion = mlflow.pyfunc.load_model(champion_store.outcome.model_uri)
    split = split_data(small_data, exp.test_size, exp.seed)
    out = {"logistic": Served(champion.predict, lambda frame: champion.predict(frame)["probability"].to_numpy(),
                              exp.threshold, split.X_test[small_spec.raw_columns].head(SAMPLE_ROWS))}
    for tree, pipe, tree_split in (fitted_xgboost, fitted_hist_gradient_boosting):
        config = model_config(tree, small_spec, shap_reference(pipe, tree_split.X_train, small_spec))
        out[tree.family] = Served(Scoring.build(pipe, small_spec, config), partial(predict_default, pipe),
                                  tree.threshold, tree_split.X_test[small_spec.raw_columns].head(SAMPLE_ROWS))
    return out


def valid_counts(spec: DatasetSpec, raw: str) -> np.ndarray:
    """Every valid value of a count column: its min to its max, or, as the spec sets no max for the late-payment
    counts, to just below their sentinels (96 and 98 mean "unknown" and are scored as missing, not as counts)."""
    column = spec.columns[raw]
    top = column.max if column.max is not None else min(column.sentinels) - 1
    return np.arange(column.min, top + 1)


def plausible_utilization(spec: DatasetSpec) -> np.ndarray:
    """0 up to the value the spec flags as implausible (`implausible_utilization`: above it the file holds junk),
    finely where the model still sees a difference (up to its cap), coarser above."""
    column = spec.columns[UTILIZATION]
    junk = next(d.value for d in spec.derived.values() if d.column == column.name and d.op == "gt")
    return np.unique(np.concatenate([np.linspace(column.min, column.cap, 151), np.linspace(column.cap, junk, 35)]))


def curves(model: Served, raw: str, values: np.ndarray) -> np.ndarray:
    """P(default) of every held-out applicant (rows) with `raw` set to each of `values` (columns)."""
    X = model.held_out
    frame = pd.concat([X.assign(**{raw: float(v)}) for v in values], ignore_index=True)
    return model.p_default(frame).reshape(len(values), len(X)).T


def assert_never_lower(p: np.ndarray, raw: str, values: np.ndarray) -> None:
    steps = np.diff(p, axis=1)
    worst = np.unravel_index(steps.argmin(), steps.shape)
    falling = int((steps < -TOLERANCE).any(axis=1).sum())
    below_earlier = (np.maximum.accumulate(p, axis=1) - p).max()  # how far P(default) ends below an earlier value
    assert falling == 0, (f"{raw}: P(default) falls for {falling} of {len(p)} applicants; worst step "
                          f"{steps[worst]:.4f} ({values[worst[1]]:g} -> {values[worst[1] + 1]:g}), down to "
                          f"{below_earlier:.4f} below an earlier value")
    assert p[:, -1].mean() > p[:, 0].mean(), f"{raw} does not move P(default) at all"


# ---------------------------------------------------------------- directional expectations


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("raw", LATE_COUNTS)
def test_more_late_payments_never_lower_p_default(raw: str, family: str, served: dict[str, Served],
                                                  small_spec: DatasetSpec) -> None:
    values = valid_counts(small_spec, raw)
    assert values[0] == 0 and values[-1] == 95 and not set(small_spec.columns[raw].sentinels) & set(values)
    assert_never_lower(curves(served[family], raw, values), raw, values)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("raw", [UTILIZATION])
def test_higher_utilization_never_lowers_p_default(raw: str, family: str, served: dict[str, Served],
                                                   small_spec: DatasetSpec) -> None:
    values = plausible_utilization(small_spec)
    assert values[0] == 0 and values[-1] == 10
    assert_never_lower(curves(served[family], raw, values), raw, values)


# ---------------------------------------------------------------- invariance


@pytest.mark.parametrize("family", FAMILIES)
def test_the_id_column_present_or_absent_gives_the_same_answers(family: str, served: dict[str, Served],
                                                                small_spec: DatasetSpec) -> None:
    model = served[family]
    X = model.held_out
    with_id = X.assign(**{small_spec.id_column: np.arange(len(X))})[[small_spec.id_column, *X.columns]]
    pd.testing.assert_frame_equal(model.score(with_id), model.score(X))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_column_order_does_not_matter(family: str, served: dict[str, Served]) -> None:
    model = served[family]
    X = model.held_out
    expected = model.score(X)
    reversed_order = X[X.columns[::-1]]
    shuffled = X[list(np.random.default_rng(0).permutation(X.columns))]
    assert list(shuffled.columns) != list(X.columns)
    for frame in (reversed_order, shuffled):
        pd.testing.assert_frame_equal(model.score(frame), expected)


# ---------------------------------------------------------------- minimum functionality

CLEAN = {  # an applicant with nothing against them: no late payments, low utilisation, a reported income
    "RevolvingUtilizationOfUnsecuredLines": 0.05, "age": 50.0, "NumberOfTime30-59DaysPastDueNotWorse": 0.0,
    "DebtRatio": 0.2, "MonthlyIncome": 7_000.0, "NumberOfOpenCreditLinesAndLoans": 8.0,
    "NumberOfTimes90DaysLate": 0.0, "NumberRealEstateLoansOrLines": 1.0,
    "NumberOfTime60-89DaysPastDueNotWorse": 0.0, "NumberOfDependents": 1.0,
}


@pytest.mark.parametrize("family", [pytest.param(family, marks=[] if family == "logistic" else [
    pytest.mark.xfail(strict=True, reason=LATE_90_APPROVED)]) for family in FAMILIES])
def test_many_90_day_late_payments_are_declined_with_that_reason(family: str, served: dict[str, Served]) -> None:
    answer = served[family].score(pd.DataFrame([{**CLEAN, "NumberOfTimes90DaysLate": 10.0}])).iloc[0]
    assert "Times 90+ days late" in answer["reason_codes"], answer.to_dict()
    assert answer["decision"] == "decline", answer.to_dict()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_clean_applicant_is_approved(family: str, served: dict[str, Served]) -> None:
    answer = served[family].score(pd.DataFrame([CLEAN])).iloc[0]
    assert answer["decision"] == "approve" and answer["probability"] < served[family].threshold / 2, answer.to_dict()
