"""Gate (f), monotone behaviour: a model trained without its constraints on data that tempts it is caught, with
the column, the applicant row, the two values and the size of the move; constrained models pass; on the registered
artifact the gate refuses a promotion, which `--force --reason` overrides as for the other gates.

The tempting data is the generated flagship set: unconstrained trees there let P(default) fall as utilisation or a
late-payment count rises for many held-out applicants (tests/model/test_behaviour.py measured it before constraints).
"""

from __future__ import annotations

from functools import partial

import mlflow
import numpy as np
import pandas as pd
import pytest

from creditflow.data.dataset import split_data
from creditflow.model.monotone import grid_values, monotone_violations
from creditflow.model.pipeline import build_pipeline, predict_default
from creditflow.registry.audit import TAG
from creditflow.registry.gates import monotone_gate
from creditflow.registry.policy import PromotionPolicy, PromotionRequest, load_policy
from creditflow.registry.promote import promote
from creditflow.specs import DatasetSpec
from creditflow.train.run import train_and_log
from tests.conftest import EXPERIMENTS, small_experiment

UTILIZATION = "RevolvingUtilizationOfUnsecuredLines"
LATE_90 = "NumberOfTimes90DaysLate"
ROWS = 200
POLICY = PromotionPolicy(monotone_rows=ROWS)


def unconstrained_experiment(**params: object):
    """HistGradientBoosting kept small, its monotone constraints switched off (as a silently dropped one would be)."""
    return small_experiment("logistic_baseline.yaml", family="hist_gradient_boosting",
                            params={"model__max_iter": 40, "model__monotonic_cst": None, **params})


@pytest.fixture(scope="module")
def unconstrained(small_spec: DatasetSpec, small_data):
    """(P(default) of the unconstrained model, ROWS held-out applicants it never trained on)."""
    exp = unconstrained_experiment()
    split = split_data(small_data, exp.test_size, exp.seed)
    pipe = build_pipeline(exp, small_spec).fit(split.X_train, split.y_train)
    return partial(predict_default, pipe), split.X_test.head(ROWS)


def declaring_nothing(spec: DatasetSpec) -> DatasetSpec:
    data = spec.model_dump()
    for column in data["columns"].values():
        column["monotone"] = None
    return DatasetSpec.model_validate(data)


# ---------------------------------------------------------------- the grid


def test_the_grid_spans_the_observed_values_without_sentinels(small_spec: DatasetSpec, small_data) -> None:
    late = small_spec.columns[LATE_90]
    counts = pd.Series([0, 0, 0, 3, 98, 96, np.nan])
    assert grid_values(counts, late, 20).tolist() == [0, 1, 2, 3]  # a narrow whole-number range: every value
    assert len(grid_values(pd.Series([98.0, np.nan]), late, 20)) == 0
    utilization = small_data.X[UTILIZATION]
    assert utilization.max() > 1_000  # junk values: a heavy tail
    grid = grid_values(utilization, small_spec.columns[UTILIZATION], 20)
    assert len(grid) <= 40 and grid[0] == utilization.min() and grid[-1] == utilization.max()
    assert np.all(np.diff(grid) > 0)
    assert (grid < 1.5).sum() >= 15 and (grid > 10).sum() >= 15  # where the applicants are, and the whole range


# ---------------------------------------------------------------- the check


def test_a_model_trained_without_constraints_on_tempting_data_is_caught(unconstrained, small_spec) -> None:
    p_default, X = unconstrained
    checks = {c.column: c for c in monotone_violations(p_default, X, small_spec, grid=20)}
    assert set(checks) == set(small_spec.monotone_columns())
    util = checks[UTILIZATION]
    assert util.applicants == ROWS and util.violations > ROWS // 2  # most applicants: the temptation is real
    worst = util.worst
    assert worst.row in X.index and worst.before < worst.after and worst.size < -1e-3
    assert (worst.before, worst.after) in zip(util.grid, util.grid[1:], strict=False)  # neighbours on the grid
    row = X.loc[[worst.row]]  # the move, measured again on that applicant alone
    again = p_default(row.assign(**{UTILIZATION: worst.after})) - p_default(row.assign(**{UTILIZATION: worst.before}))
    assert again[0] == pytest.approx(worst.size, abs=1e-12)


@pytest.mark.parametrize("fitted", ["fitted_logistic", "fitted_xgboost", "fitted_hist_gradient_boosting"])
def test_constrained_trees_and_the_logistic_model_pass(fitted: str, request, small_spec) -> None:
    _, pipe, split = request.getfixturevalue(fitted)
    checks = monotone_violations(partial(predict_default, pipe), split.X_test.head(ROWS), small_spec, grid=20)
    assert len(checks) == 4 and all(len(c.grid) >= 2 for c in checks)
    assert [(c.column, c.violations, c.worst) for c in checks] == [(c.column, 0, None) for c in checks]


def test_the_logistic_model_is_checked_too_where_junk_utilisation_lowers_its_p_default(fitted_logistic,
                                                                                      small_spec, small_data) -> None:
    """Unconstrained, it learns that junk utilisation (> 10, flagged `implausible_utilization`) defaults less than
    one at the cap (1.5): one applicant with a junk value puts the flag inside the grid, and the gate sees it."""
    _, pipe, split = fitted_logistic
    junk = small_data.X[small_data.X[UTILIZATION] > 10].head(1)
    X = pd.concat([split.X_test.head(ROWS - 1), junk])
    [util] = [c for c in monotone_violations(partial(predict_default, pipe), X, small_spec) if c.column == UTILIZATION]
    assert util.violations == ROWS and util.grid[-1] == junk[UTILIZATION].iloc[0]
    assert 1.5 <= util.worst.before <= 10 < util.worst.after and util.worst.size < -1e-3
    assert [c.violations for c in monotone_violations(partial(predict_default, pipe), X.head(ROWS - 1),
                                                      small_spec)] == [0, 0, 0, 0]  # without it: monotone


# ---------------------------------------------------------------- the gate


def test_the_gate_fails_naming_column_row_values_and_size(unconstrained, small_spec) -> None:
    p_default, X = unconstrained
    gate = monotone_gate(p_default, X, small_spec, POLICY)
    checks = monotone_violations(p_default, X.sample(n=ROWS, random_state=POLICY.eval_seed), small_spec)
    assert (gate.key, gate.title, gate.passed) == ("f", "monotone", False)
    failed = [c for c in checks if c.violations]
    assert gate.detail.count("worst: row") == len(failed) and UTILIZATION in [c.column for c in failed]
    for c in failed:
        w = c.worst
        assert (f"{c.column} (increasing): P(default) moves against it for {c.violations} of {ROWS} applicants; "
                f"worst: row {w.row}, {w.before:g} -> {w.after:g} moves it by {w.size:+.4g}") in gate.detail
    assert gate.figures == {**{f"violations.{c.column}": c.violations for c in checks},
                            "worst_move": max(-c.worst.size for c in failed)}
    lenient = POLICY.model_copy(update={"monotone_tolerance": gate.figures["worst_move"]})
    assert monotone_gate(p_default, X, small_spec, lenient).passed is True  # moves up to the tolerance are allowed
    assert "never moves against the declared direction" in monotone_gate(p_default, X, small_spec, lenient).detail


def test_a_spec_that_declares_nothing_makes_the_gate_not_applicable(unconstrained, small_spec) -> None:
    p_default, X = unconstrained
    for spec in (declaring_nothing(small_spec), None):
        gate = monotone_gate(p_default, X, spec, POLICY)
        assert gate.passed is None and gate.detail == "the dataset spec declares no monotone column"


@pytest.mark.slow
def test_a_promotion_of_an_unconstrained_version_is_refused_and_force_overrides_it(own_champion_store, small_spec,
                                                                                    small_data, capsys) -> None:
    """Through `promote`, on the registered artifact (the model gate (d) loaded): refused with the figures audited,
    promoted with --force --reason; a constrained version passes the gate."""
    budget = {"explain.enabled": False, "cv_folds": 2}
    free = train_and_log(unconstrained_experiment().with_overrides(**budget), small_spec, small_data)
    policy = load_policy(EXPERIMENTS / "promotion.yaml")
    decision = promote(PromotionRequest(version=free.registered_version), policy)
    gate = next(g for g in decision.gates if g.key == "f")
    assert (decision.outcome, decision.exit_code, gate.passed) == ("refused", 3, False)
    assert "gate (f) monotone" in decision.reason and "worst: row " in decision.reason
    assert [g.key for g in decision.gates] == ["a", "b", "c", "d", "e", "f"]
    assert "gate (f) monotone               FAIL  " in decision.report()
    audit = mlflow.get_run(decision.audit_run).data
    assert audit.metrics[f"f.violations.{UTILIZATION}"] == gate.figures[f"violations.{UTILIZATION}"] > 0
    assert audit.tags[f"{TAG}gate.f"] == "fail"

    forced = promote(PromotionRequest(version=free.registered_version, force=True, reason="test: gate (f) override"),
                     policy)
    assert forced.outcome == "forced" and "gate (f) monotone" in forced.reason

    constrained = train_and_log(small_experiment("logistic_baseline.yaml", family="hist_gradient_boosting",
                                                 params={"model__max_iter": 40}).with_overrides(**budget),
                                small_spec, small_data)
    dry = promote(PromotionRequest(version=constrained.registered_version, dry_run=True), policy)
    gate = next(g for g in dry.gates if g.key == "f")
    assert gate.passed is True and gate.figures["worst_move"] == 0, gate.detail
