"""The served pyfunc: outputs equal the pipeline, reason codes equal SHAP, batch options, rules and errors are clean."""

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

from creditflow.data.dataset import split_data
from creditflow.model.artifact import OUTPUT_COLUMNS
from creditflow.model.inputs import applicant_matrix
from creditflow.model.pyfunc import Scoring, ServingError
from creditflow.model.shap import raw_shap, reason_codes
from creditflow.specs import DatasetSpec
from tests.conftest import ChampionStore, tracking_at

ODD_INCOME = 31337.25  # a value that must never come back in an error message


# ---------------------------------------------------------------- the logged model


@pytest.fixture(scope="module")
def logged(champion_store: ChampionStore, small_data, tmp_path_factory):
    """The session's champion (logistic, logged by train_and_log): its spec, the loaded model, the split, and its
    files downloaded to a folder of this module's own (tests change copies of those, never the store)."""
    root = tmp_path_factory.mktemp("model-files")
    exp, outcome = champion_store.exp, champion_store.outcome
    with tracking_at(champion_store.uri):
        model = mlflow.pyfunc.load_model(outcome.model_uri)
        local = Path(mlflow.artifacts.download_artifacts(outcome.model_uri, dst_path=str(root / "model")))
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


def test_batch_scoring_can_ask_for_the_reason_codes_as_json_text(logged) -> None:
    """spark_udf hands text to Spark far more cheaply than lists: the same codes, as json.dumps writes them."""
    _, online, split, local = logged
    model = mlflow.pyfunc.load_model(str(local), model_config={"reason_codes_as": "json"})
    X = split.X_test.head(400)
    texts, listed = model.predict(X), online.predict(X)
    for column in ("reason_codes", "reason_statements"):
        assert texts[column].tolist() == [json.dumps(codes) for codes in listed[column]]
    assert sum(codes != "[]" for codes in texts["reason_codes"]) > 10
    reasons = ["reason_codes", "reason_statements"]
    pd.testing.assert_frame_equal(texts.drop(columns=reasons), listed.drop(columns=reasons))


def test_config_keys_of_earlier_versions_are_accepted_and_ignored(logged, tmp_path: Path) -> None:
    """Models logged (or batch copies written) before those paths were removed still load and answer as before."""
    _, online, split, local = logged
    older = shutil.copytree(local, tmp_path / "older")
    meta = yaml.safe_load((older / "MLmodel").read_text())
    meta["flavors"]["python_function"]["config"].update(
        {"decision_as": "index", "reason_codes_as_key": True, "freeze_gc_after_load": True})
    (older / "MLmodel").write_text(yaml.safe_dump(meta))
    X = split.X_test.head(100)
    gc.unfreeze()
    try:
        pd.testing.assert_frame_equal(mlflow.pyfunc.load_model(str(older)).predict(X), online.predict(X))
        assert gc.get_freeze_count() == 0  # the collector left as it was
    finally:
        gc.unfreeze()


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


@pytest.mark.parametrize("fitted", ["fitted_logistic", "fitted_xgboost"])
def test_reason_codes_for_declined_only_keeps_declined_rows_exact(fitted: str, small_spec: DatasetSpec,
                                                                  request: pytest.FixtureRequest) -> None:
    """The model-config option the batch speed relies on: same scores, declined rows' codes unchanged."""
    from creditflow.model.artifact import model_config
    from creditflow.model.pyfunc import Scoring
    from creditflow.train.log_model import shap_reference

    exp, pipe, split = request.getfixturevalue(fitted)
    reference = shap_reference(pipe, split.X_train, small_spec)
    every = Scoring.build(pipe, small_spec, model_config(exp, small_spec, reference))
    declined_only = Scoring.build(
        pipe, small_spec, model_config(exp.with_overrides(reason_codes_for="declined"), small_spec, reference))
    X = split.X_test.head(1000)
    full, fast = every(X), declined_only(X)
    np.testing.assert_array_equal(fast.probability.to_numpy(), full.probability.to_numpy())
    assert fast.decision.tolist() == full.decision.tolist()
    declined = (full.decision == "decline").to_numpy()
    assert 0 < declined.sum() < len(X)
    assert fast.reason_codes[declined].tolist() == full.reason_codes[declined].tolist()
    assert all(codes == [] for codes in fast.reason_codes[~declined])


# ---------------------------------------------------------------- adverse-action statements


@pytest.mark.parametrize("family", ["logistic", "xgboost"])
def test_statements_are_specific_adverse_and_at_most_four(family: str, housing_spec: DatasetSpec,
                                                          shap_data: tuple) -> None:
    """Each reason code has its statement, in the same order; a categorical reason names the applicant's category;
    only columns that push towards decline are reasons, at most `reason_codes` of them."""
    from creditflow.data.dataset import coerce_columns
    from creditflow.model.artifact import model_config
    from creditflow.train.log_model import shap_reference
    from tests.model.shap_cases import fit
    from tests.model.test_shap import with_housing

    columns = {**housing_spec.model_dump()["columns"]}
    columns["Housing"] = {**columns["Housing"], "reason": "Housing status"}
    columns["NumberOfTimes90DaysLate"] = {**columns["NumberOfTimes90DaysLate"],
                                          "reason": "Serious delinquency (90 days or more past due)"}
    spec = DatasetSpec.model_validate({**housing_spec.model_dump(), "columns": columns})
    X_train, y_train, X, y = shap_data
    X_train, y_train = with_housing(X_train, y_train, seed=2)
    X_train = coerce_columns(X_train, spec)  # as training reads a data set (and the served model its input)
    X = coerce_columns(with_housing(X, y, seed=3)[0].head(400), spec)
    pipe = fit(family, spec, X_train, y_train)
    exp = _experiment(family)
    scoring = Scoring.build(pipe, spec, model_config(exp, spec, shap_reference(pipe, X_train, spec)))
    out = scoring(X)
    statement_of = dict(zip(spec.reason_labels(), spec.reason_statements(), strict=True))
    housing_rows = 0
    for row, (codes, statements) in enumerate(zip(out.reason_codes, out.reason_statements, strict=True)):
        assert len(codes) == len(statements) <= 4
        for code, statement in zip(codes, statements, strict=True):
            if code == "Housing":
                housing = X["Housing"].iat[row]
                assert statement == f"Housing status: {'not given' if pd.isna(housing) else housing}"
                housing_rows += 1
            else:
                assert statement == statement_of[code]
    assert housing_rows > 10 and "Serious delinquency (90 days or more past due)" in \
        {s for statements in out.reason_statements for s in statements}
    adverse = raw_shap(pipe, spec, X, background=X_train).values
    for row, codes in enumerate(out.reason_codes[:50]):  # each named column raised this applicant's risk
        positions = [spec.reason_labels().index(code) for code in codes]
        assert (adverse.iloc[row, positions] > 0).all()
    three = X.head(3).assign(Housing=np.array([None, X["Housing"].dropna().iat[0], "houseboat"], dtype=object))
    R, j = applicant_matrix(three, spec, scoring.scorer.codes), spec.raw_columns.index("Housing")
    stated = [scoring._stated(R, three, row, j) for row in range(3)]  # missing, known, never seen
    assert stated == ["not given", three["Housing"].iat[1], "houseboat"]


def _experiment(family: str):
    from tests.conftest import small_experiment

    name = {"logistic": "logistic_baseline.yaml", "xgboost": "xgboost_bayes.yaml"}[family]
    return small_experiment(name)


def test_more_than_five_reasons_is_refused_in_one_line(tmp_path: Path) -> None:
    from creditflow.errors import SpecError
    from creditflow.specs import load_experiment_spec
    from tests.conftest import EXPERIMENTS

    spec = yaml.safe_load((EXPERIMENTS / "logistic_baseline.yaml").read_text())
    path = tmp_path / "many.yaml"
    path.write_text(yaml.safe_dump({**spec, "reason_codes": 6}))
    with pytest.raises(SpecError, match="reason_codes") as caught:
        load_experiment_spec(path)
    assert "\n" not in str(caught.value)


def test_a_calibrated_model_serves_the_calibrated_probability_with_the_same_reasons(fitted_xgboost,
                                                                                   small_spec: DatasetSpec) -> None:
    """The served probability (and the decision at the threshold) is the calibrated one; the reasons, from the
    model's own contributions, are unchanged, as calibration is an increasing map."""
    from creditflow.model.artifact import model_config
    from creditflow.model.calibration import Calibration
    from creditflow.model.pipeline import predict_default

    exp, pipe, split = fitted_xgboost
    X = split.X_test.head(1000)
    plain = Scoring.build(pipe, small_spec, model_config(exp, small_spec))(X)
    calibration = Calibration("sigmoid", slope=0.8, intercept=-0.9)
    served = Scoring.build(pipe, small_spec, model_config(exp, small_spec, calibration=calibration))(X)
    expected = calibration.apply(predict_default(pipe, X))
    np.testing.assert_allclose(served.probability.to_numpy(), expected, rtol=0, atol=1e-12)
    probability_only = Scoring.build(pipe, small_spec, model_config(exp, small_spec, calibration=calibration))
    np.testing.assert_array_equal(probability_only.probability(X), served.probability.to_numpy())  # gate (f)'s path
    np.testing.assert_allclose(predict_default(pipe, X, calibration), expected, rtol=0, atol=0)
    assert (served.probability < plain.probability).mean() > 0.9  # this map lowers nearly every probability
    assert served.decision.tolist() == np.where(expected >= exp.threshold, "decline", "approve").tolist()
    assert (served.decision != plain.decision).any()  # the decision follows the calibrated probability
    assert served.reason_codes.tolist() == plain.reason_codes.tolist()


# ---------------------------------------------------------------- categorical columns


@pytest.mark.parametrize("encode", ["onehot", "ordinal"])
def test_a_categorical_model_scores_on_the_compiled_path(encode: str, housing_spec: DatasetSpec, shap_data: tuple,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """No fall-back to scikit-learn's preprocessing; the pipeline's probabilities for every category, a missing one
    and one never trained on (where the spec lists no categories); where it lists them, an unseen text breaks a
    value rule; a linear model cannot score an ordinal code it never saw, and says so in one line."""
    from creditflow.data.dataset import coerce_columns
    from creditflow.errors import BadRequest
    from creditflow.model.artifact import model_config
    from creditflow.specs import GroupSpec
    from creditflow.train.log_model import shap_reference
    from tests.model.shap_cases import fit
    from tests.model.test_shap import with_housing

    raw = housing_spec.model_dump()
    raw["columns"]["Housing"]["categories"] = []
    raw["groups"] = {"categorical": GroupSpec(impute="most_frequent", scale=False, encode=encode).model_dump()}
    open_spec = DatasetSpec.model_validate(raw)
    X_train, y_train, X, y = shap_data
    X_train, y_train = with_housing(X_train, y_train, seed=2)
    X_train = coerce_columns(X_train, open_spec)
    pipe = fit("logistic", open_spec, X_train, y_train)
    config = model_config(_experiment("logistic"), open_spec, shap_reference(pipe, X_train, open_spec))
    with caplog.at_level("WARNING", logger="creditflow"):
        scoring = Scoring.build(pipe, open_spec, config)
    assert "slow path" not in caplog.text
    seen = X.head(5).assign(Housing=pd.Series(["own", None, "rent", np.nan, "other"], dtype=object, index=X.index[:5]))
    unseen = seen.assign(Housing="castle")
    out = scoring(seen)
    np.testing.assert_allclose(out.probability, pipe.predict_proba(coerce_columns(seen, open_spec))[:, 1], rtol=0,
                               atol=1e-9)
    if encode == "onehot":
        np.testing.assert_allclose(scoring(unseen).probability,
                                   pipe.predict_proba(coerce_columns(unseen, open_spec))[:, 1], rtol=0, atol=1e-9)
    else:
        with pytest.raises(BadRequest, match=r"^5 applicant\(s\) hold a value this model cannot score"):
            scoring(unseen)
    strict = Scoring.build(pipe, housing_spec, config)  # the same model under a spec that lists the categories
    with pytest.raises(BadRequest, match=r"5 applicant\(s\) break the value rules; first: row 0: Housing is not a kn"):
        strict(unseen)
