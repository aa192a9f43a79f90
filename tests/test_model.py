"""The served pyfunc: compiled scoring equals the pipeline, reason codes equal SHAP, rules and errors are clean."""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server

from creditflow.data import rule_violations, split_data
from creditflow.explain import raw_shap, reason_codes
from creditflow.fastpath import compile_scorer, reason_sets
from creditflow.model import (
    CONFIG_KEYS,
    OUTPUT_COLUMNS,
    Scoring,
    ServingError,
    model_config,
    reason_key,
    shap_reference,
)
from creditflow.pipeline import build_pipeline
from creditflow.tracking import train_and_log
from creditflow.validation import BadRequest, RuleCheck, applicant_matrix
from tests.conftest import small_experiment

ODD_INCOME = 31337.25  # a value that must never come back in an error message


def quirky_rows(X: pd.DataFrame) -> pd.DataFrame:
    """Held-out rows plus the data set's quirks: sentinels 96/98, missing income and dependents, junk utilization."""
    extra = X.head(6).copy()
    extra.iloc[0, extra.columns.get_loc("NumberOfTimes90DaysLate")] = 98
    extra.iloc[1, extra.columns.get_loc("NumberOfTime30-59DaysPastDueNotWorse")] = 96
    extra.iloc[2, extra.columns.get_loc("MonthlyIncome")] = np.nan
    extra.iloc[3, extra.columns.get_loc("NumberOfDependents")] = np.nan
    extra.iloc[4, extra.columns.get_loc("RevolvingUtilizationOfUnsecuredLines")] = 2_500.0
    extra.iloc[5, extra.columns.get_loc("DebtRatio")] = 3_000.0
    return pd.concat([X, extra], ignore_index=True)


@pytest.fixture(scope="module")
def fitted_families(small_spec, small_data, fitted_logistic, fitted_xgboost):
    """family -> (pipeline fitted on the training split, split); forests and HGB kept small."""
    out = {"logistic": fitted_logistic[1:], "xgboost": fitted_xgboost[1:]}
    for family, params in (("hist_gradient_boosting", {"model__max_iter": 40}),
                           ("random_forest", {"model__n_estimators": 40})):
        exp = small_experiment("logistic_baseline.yaml", family=family, params=params)
        split = split_data(small_data, exp.test_size, exp.seed)
        out[family] = (build_pipeline(exp, small_spec).fit(split.X_train, split.y_train), split)
    return out


@pytest.mark.parametrize("family", ["logistic", "xgboost", "hist_gradient_boosting", "random_forest"])
def test_compiled_path_equals_the_pipeline_and_its_shap(family, fitted_families, small_spec) -> None:
    pipe, split = fitted_families[family]
    X = quirky_rows(split.X_test[small_spec.raw_columns])
    reference = shap_reference(pipe, split.X_train, small_spec)
    scorer = compile_scorer(pipe, small_spec, None if reference is None else np.asarray(reference))
    scored = scorer.score(X.to_numpy(dtype="float64"))
    expected = pipe.predict_proba(X)[:, 1]
    assert np.max(np.abs(scored.probability - expected)) <= 1e-9
    direct = raw_shap(pipe, small_spec, X, background=split.X_train)
    assert np.max(np.abs(scored.contributions - direct.values.to_numpy())) <= 1e-9
    # reason codes: the same labels as explain.reason_codes on the direct SHAP values
    labels = [small_spec.columns[c].label for c in small_spec.raw_columns]
    sets, which = reason_sets(scored.contributions, 3)
    assert [[labels[j] for j in sets[i]] for i in which] == reason_codes(direct, small_spec, 3)


def test_compiled_preprocessing_equals_scikit_learn(fitted_logistic, small_spec) -> None:
    _, pipe, split = fitted_logistic
    R = quirky_rows(split.X_test[small_spec.raw_columns]).to_numpy(dtype="float64")
    fast = compile_scorer(pipe, small_spec, np.zeros(1))
    slow = compile_scorer(pipe, small_spec, np.zeros(1), fast=False)
    assert np.max(np.abs(fast.transform(R) - slow.transform(R))) <= 1e-12
    assert fast.transform(R).shape == slow.transform(R).shape


def test_rule_check_agrees_with_the_data_rules(small_spec, small_data) -> None:
    rng = np.random.default_rng(0)
    X = small_data.X[small_spec.raw_columns].head(400).copy()
    for col in X.columns:  # break every rule somewhere: negative, huge, fractional, infinite, missing, sentinel
        rows = rng.choice(len(X), 40, replace=False)
        X.iloc[rows[:8], X.columns.get_loc(col)] = -1.0
        X.iloc[rows[8:16], X.columns.get_loc(col)] = 1e6
        X.iloc[rows[16:24], X.columns.get_loc(col)] = 2.5
        X.iloc[rows[24:28], X.columns.get_loc(col)] = np.inf
        X.iloc[rows[28:32], X.columns.get_loc(col)] = -np.inf
        X.iloc[rows[32:36], X.columns.get_loc(col)] = np.nan
        X.iloc[rows[36:40], X.columns.get_loc(col)] = 98
    compiled = RuleCheck.from_spec(small_spec).reasons(X.to_numpy(dtype="float64"))
    expected = rule_violations(X, small_spec).to_numpy(dtype=object)
    kinds = {"is missing", "below", "above", "not a whole number", "is infinite"}
    assert all(any(kind in reason for reason in expected) for kind in kinds)  # every kind of rule is broken
    assert list(compiled) == list(expected)
    rules, R = RuleCheck.from_spec(small_spec), X.to_numpy(dtype="float64")  # the quick yes/no agrees row by row
    assert [rules.any_broken(R[i:i + 1]) for i in range(len(R))] == [reason != "" for reason in expected]


def test_applicant_matrix_accepts_null_and_absent_nullable_columns(small_spec, small_data) -> None:
    X = small_data.X[small_spec.raw_columns].head(3).copy()
    X["MonthlyIncome"] = np.nan
    with_nulls = applicant_matrix(X, small_spec)
    absent = applicant_matrix(X.drop(columns=["MonthlyIncome", "NumberOfDependents"]), small_spec)
    assert np.isnan(absent[:, small_spec.raw_columns.index("NumberOfDependents")]).all()
    assert np.array_equal(with_nulls[:, :4], absent[:, :4], equal_nan=True)
    with pytest.raises(BadRequest, match="missing column.*age"):
        applicant_matrix(X.drop(columns=["age"]), small_spec)
    with pytest.raises(BadRequest, match="must hold numbers or null: age"):
        applicant_matrix(X.assign(age=[True, False, True]), small_spec)


# ---------------------------------------------------------------- the logged model


@pytest.fixture(scope="module")
def logged(small_spec, small_data, tmp_path_factory):
    """A logistic model trained and logged with train_and_log into a module-scoped tracking store."""
    root = tmp_path_factory.mktemp("model-store")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    try:
        exp = small_experiment("logistic_baseline.yaml", **{"explain.enabled": False})
        outcome = train_and_log(exp, small_spec, small_data)
        model = mlflow.pyfunc.load_model(outcome.model_uri)
        local = Path(mlflow.artifacts.download_artifacts(outcome.model_uri, dst_path=str(root / "model")))
    finally:
        mlflow.set_tracking_uri(previous)
    return exp, model, split_data(small_data, exp.test_size, exp.seed), local


def test_logged_model_returns_probability_decision_and_reason_codes(logged, small_spec) -> None:
    exp, model, split, _ = logged
    X = split.X_test[small_spec.raw_columns].head(200)
    out = model.predict(X)
    pipe = model.unwrap_python_model().pipeline
    assert tuple(out.columns) == OUTPUT_COLUMNS
    assert np.max(np.abs(out["probability"].to_numpy() - pipe.predict_proba(X)[:, 1])) <= 1e-9
    assert (out["decision"] == np.where(out["probability"] >= exp.threshold, "decline", "approve")).all()
    assert set(out["decision"]) == {"approve", "decline"}
    direct = raw_shap(pipe, small_spec, X, background=split.X_train)
    assert list(out["reason_codes"]) == reason_codes(direct, small_spec, exp.reason_codes)
    assert all(len(codes) <= exp.reason_codes for codes in out["reason_codes"])
    assert {label for codes in out["reason_codes"] for label in codes} <= set(small_spec.display_names().values())


def test_batch_scoring_can_ask_the_model_to_freeze_the_collector_after_loading(logged) -> None:
    """Spark workers load the model once per task: what is alive after a load stays out of later collections."""
    _, online, split, local = logged
    gc.unfreeze()
    try:
        mlflow.pyfunc.load_model(str(local))  # as served online: the collector untouched
        assert gc.get_freeze_count() == 0
        model = mlflow.pyfunc.load_model(str(local), model_config={"freeze_gc_after_load": True})
        assert gc.get_freeze_count() > 10_000  # every object alive after the load
        X = split.X_test.head(50)
        pd.testing.assert_frame_equal(model.predict(X), online.predict(X))
    finally:
        gc.unfreeze()


def test_batch_scoring_can_ask_for_the_decision_as_the_index_of_its_label(logged) -> None:
    """Spark maps the index back to the model's own labels (config `decisions`): numbers cross into Spark cheaply."""
    _, online, split, local = logged
    model = mlflow.pyfunc.load_model(str(local), model_config={"decision_as": "index"})
    X = split.X_test.head(400)
    indexed, labelled = model.predict(X), online.predict(X)
    assert indexed["decision"].dtype == np.int32 and set(indexed["decision"]) == {0, 1}
    labels = np.asarray(model.unwrap_python_model().config["decisions"])
    assert labels[indexed["decision"]].tolist() == labelled["decision"].tolist()
    pd.testing.assert_frame_equal(indexed.drop(columns="decision"), labelled.drop(columns="decision"))


def test_batch_scoring_can_ask_for_the_reason_codes_as_one_integer_per_row(logged) -> None:
    """Digit i (base columns + 1) is the i-th reason's column position + 1: an integer crosses into Spark cheaply."""
    _, online, split, local = logged
    model = mlflow.pyfunc.load_model(str(local), model_config={"reason_codes_as_key": True})
    X = split.X_test.head(400)
    keyed, listed = model.predict(X), online.predict(X)
    labels = model.unwrap_python_model().scoring.labels
    base = len(labels) + 1

    def decoded(key: int) -> list[str]:
        digits = []
        while key:
            key, digit = divmod(key, base)
            digits.append(digit)
        return [labels[d - 1] for d in digits]

    assert keyed["reason_codes"].dtype == np.int64 and (keyed["reason_codes"] > 0).sum() > 10
    assert [decoded(int(k)) for k in keyed["reason_codes"]] == listed["reason_codes"].tolist()
    assert reason_key((2, 0), 4) == 3 + 1 * 5 and reason_key((), 4) == 0
    pd.testing.assert_frame_equal(keyed.drop(columns="reason_codes"), listed.drop(columns="reason_codes"))


def test_the_config_keys_are_what_model_config_writes(small_spec) -> None:
    assert set(model_config(small_experiment(), small_spec)) == CONFIG_KEYS


def test_a_model_newer_than_the_running_code_fails_to_load_in_one_clear_line(logged, tmp_path: Path) -> None:
    """One Python process imports one creditflow: a Spark worker that loaded an older model first has older code."""
    _, _, _, local = logged
    newer = shutil.copytree(local, tmp_path / "newer")
    meta = yaml.safe_load((newer / "MLmodel").read_text())
    meta["flavors"]["python_function"]["config"]["a_later_key"] = True  # as a later creditflow might log
    (newer / "MLmodel").write_text(yaml.safe_dump(meta))
    with pytest.raises(MlflowException, match=r"key\(s\) a_later_key unknown to the creditflow") as err:
        mlflow.pyfunc.load_model(str(newer))
    assert "\n" not in err.value.message


def test_a_single_applicant_gets_reasons_from_the_training_reference(logged, small_spec) -> None:
    """One row must not be explained against itself (that would give no reasons at all)."""
    _, model, split, _ = logged
    risky = split.X_test[small_spec.raw_columns].head(1).assign(**{"NumberOfTimes90DaysLate": 3.0})
    out = model.predict(risky)
    assert "Times 90+ days late" in out["reason_codes"][0]


def test_model_is_saved_without_pickle_and_carries_its_config(logged, small_spec) -> None:
    exp, model, _, local = logged
    files = {p.name for p in local.rglob("*") if p.is_file()}
    assert "pipeline.skops" in files and not any(f.endswith((".pkl", ".pickle")) for f in files)
    config = model.model_config
    assert config["threshold"] == exp.threshold and config["reason_codes"] == exp.reason_codes
    assert config["display_names"]["MonthlyIncome"] == "Monthly income"
    assert config["raw_columns"] == small_spec.raw_columns


def test_signature_lists_raw_columns_with_types_and_nullability(logged, small_spec) -> None:
    _, model, split, _ = logged
    inputs = model.metadata.get_input_schema()
    assert inputs.input_names() == small_spec.raw_columns
    assert [t.name for t in inputs.input_types()] == ["double"] * len(small_spec.raw_columns)
    assert set(inputs.optional_input_names()) == {"MonthlyIncome", "NumberOfDependents"}
    X = split.X_test[small_spec.raw_columns].head(2).copy()
    X["NumberOfDependents"] = np.nan  # an integer column that may be missing passes enforcement
    X["MonthlyIncome"] = None
    nulls = model.predict(X)
    absent = model.predict(X.drop(columns=["MonthlyIncome", "NumberOfDependents"]))
    assert np.allclose(nulls["probability"], absent["probability"], rtol=0, atol=1e-12)


def test_rule_violation_is_a_client_error_that_does_not_repeat_the_input(logged, small_spec) -> None:
    _, model, split, _ = logged
    X = split.X_test[small_spec.raw_columns].head(3).assign(MonthlyIncome=ODD_INCOME)
    X.iloc[1, X.columns.get_loc("age")] = -4
    with pytest.raises(MlflowException) as caught:
        model.predict(X)
    assert isinstance(caught.value, ServingError) and caught.value.get_http_status_code() == 400
    assert caught.value.message == "1 applicant(s) break the value rules; first: row 1: age below 0"
    # through MLflow's own scoring code (what `mlflow models serve` runs): status kept, input not echoed
    body = json.dumps({"dataframe_split": json.loads(X.to_json(orient="split", index=False))})
    with pytest.raises(MlflowException) as served:
        scoring_server.invocations(body, "application/json", model, model.metadata.get_input_schema())
    answer = served.value.serialize_as_json()
    assert served.value.get_http_status_code() == 400
    assert "age below 0" in answer and str(ODD_INCOME) not in answer


def test_model_bug_is_an_internal_error_not_the_clients(logged, small_spec) -> None:
    _, model, split, _ = logged
    python_model = model.unwrap_python_model()
    good = python_model.scoring
    broken_pipe = python_model.pipeline
    coef = broken_pipe[-1].coef_
    try:
        broken_pipe[-1].coef_ = coef[:, :-1]  # a corrupted model file: shapes no longer match
        python_model.scoring = Scoring.build(broken_pipe, small_spec, python_model.config)
        X = split.X_test[small_spec.raw_columns].head(2).assign(MonthlyIncome=ODD_INCOME)
        with pytest.raises(ServingError) as caught:
            model.predict(X)
        assert caught.value.get_http_status_code() == 500
        body = json.dumps({"dataframe_split": json.loads(X.to_json(orient="split", index=False))})
        with pytest.raises(MlflowException) as served:
            scoring_server.invocations(body, "application/json", model, model.metadata.get_input_schema())
        assert served.value.get_http_status_code() == 500
        assert str(ODD_INCOME) not in served.value.serialize_as_json()
    finally:
        broken_pipe[-1].coef_ = coef
        python_model.scoring = good
