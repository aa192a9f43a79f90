"""Pipelines: every family fits on raw columns and returns P(default); explanations map back to raw columns;
tree families are constrained to the spec's monotone directions."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from creditflow.errors import SpecError
from creditflow.model.pipeline import (
    FAMILIES,
    build_pipeline,
    feature_sources,
    make_features,
    model_directions,
    monotone_constraints,
    predict_default,
)
from creditflow.specs import DatasetSpec
from tests.conftest import small_experiment


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_predicts_default_probability(family, small_spec, small_data) -> None:
    exp = small_experiment("logistic_baseline.yaml", family=family, params={})
    pipe = build_pipeline(exp, small_spec).fit(small_data.X, small_data.y)
    p = predict_default(pipe, small_data.X)
    assert p.shape == (len(small_data.X),) and np.all((p > 0) & (p < 1))
    # P(default), not P(class 0): defaulters score higher on average
    assert p[small_data.y.to_numpy() == 1].mean() > 2 * p[small_data.y.to_numpy() == 0].mean()


def test_feature_sources_map_each_column_to_its_raw_input(fitted_logistic, small_spec) -> None:
    _, pipe, _ = fitted_logistic
    sources = feature_sources(pipe, small_spec)
    assert len(sources) == pipe.named_steps["preprocess"].transform(
        pipe.named_steps["features"].transform(small_spec_frame(small_spec))).shape[1]
    assert set(sources) == set(small_spec.raw_columns)
    # the missing-income indicator and the derived flag both count for MonthlyIncome
    assert sources.count("MonthlyIncome") >= 2


def small_spec_frame(spec):
    import pandas as pd

    return pd.DataFrame({c: [1.0, np.nan] if spec.columns[c].nullable else [1.0, 2.0] for c in spec.raw_columns})


def test_unknown_parameter_is_named(small_spec) -> None:
    exp = small_experiment("logistic_baseline.yaml", params={"model__CC": 1.0})
    with pytest.raises(SpecError, match="unknown pipeline parameter.*model__CC"):
        build_pipeline(exp, small_spec)


def test_unknown_family_is_named(small_spec) -> None:
    with pytest.raises(SpecError, match="unknown model family 'svm'"):
        build_pipeline(small_experiment(family="svm"), small_spec)


def test_features_keep_the_estimator_contract(small_spec, small_data) -> None:
    step = make_features(small_spec)
    assert clone(step).get_params() == step.get_params()
    out = step.fit(small_data.X).transform(small_data.X)
    assert list(out.columns) == list(step.get_feature_names_out())
    assert out["revolving_utilization"].max() <= 1.5  # capped after the indicator saw the raw value
    raw_util = small_data.X["RevolvingUtilizationOfUnsecuredLines"]
    assert out["implausible_utilization"].sum() == (raw_util > 10).sum() > 0


def test_monotone_in_late_payments(fitted_logistic) -> None:
    """Behaviour: more 90-days-late events never lower the default probability."""
    _, pipe, split = fitted_logistic
    X = split.X_test.head(200).copy()
    base = predict_default(pipe, X)
    late = X["NumberOfTimes90DaysLate"]
    X["NumberOfTimes90DaysLate"] = late.where(late > 90, late + 3)  # sentinel rows stay as they are
    after = predict_default(pipe, X)
    assert np.all(after >= base - 1e-12) and after.mean() > base.mean() + 0.05


def test_sentinels_become_missing_in_features(small_spec: DatasetSpec) -> None:
    from creditflow.model.pipeline import make_features

    X = pd.DataFrame({c: [1.0, 1.0] for c in small_spec.raw_columns})
    X.loc[1, ["NumberOfTimes90DaysLate", "NumberOfTime30-59DaysPastDueNotWorse"]] = 96
    X.loc[1, "DebtRatio"] = 3.0
    X.loc[1, "MonthlyIncome"] = np.nan
    out = make_features(small_spec).fit(X).transform(X)
    assert out["late_90"].isna().tolist() == [False, True]
    assert out["late_30_59"].isna().tolist() == [False, True]
    assert out["high_debt_ratio"].tolist() == [0.0, 1.0]
    assert out["missing_monthly_income"].tolist() == [0.0, 1.0]


DECLARED = {"late_30_59", "late_60_89", "late_90", "revolving_utilization",  # the flagship's `monotone: increasing`
            "implausible_utilization"}  # derived: revolving_utilization > 10


@pytest.mark.parametrize(("fitted", "param"), [("fitted_xgboost", "monotone_constraints"),
                                                ("fitted_hist_gradient_boosting", "monotonic_cst")])
def test_tree_families_get_the_constraints_in_their_input_feature_order(fitted, param, request) -> None:
    _, pipe, _ = request.getfixturevalue(fitted)
    inputs = [name.split("__", 1)[1] for name in pipe.named_steps["preprocess"].get_feature_names_out()]
    constraints = pipe.named_steps["model"].get_params()[param]
    assert len(constraints) == len(inputs) == pipe.named_steps["model"].n_features_in_
    assert {name: c for name, c in zip(inputs, constraints, strict=True) if c} == dict.fromkeys(DECLARED, 1)
    if fitted == "fitted_xgboost":  # the booster that predicts holds them (dmlc/xgboost #5060: they once went missing)
        config = json.loads(pipe.named_steps["model"].get_booster().save_config())
        booster = config["learner"]["gradient_booster"]["tree_train_param"]["monotone_constraints"]
        assert booster == "(" + ",".join(str(c) for c in constraints) + ")"


def test_derived_indicators_follow_their_column_and_missing_flags_are_free(small_spec: DatasetSpec) -> None:
    data = small_spec.model_dump()
    data["columns"]["age"]["monotone"] = "decreasing"
    data["derived"] |= {"young": {"column": "age", "op": "lt", "value": 25}, "old": {"column": "age", "op": "ge",
                                                                                     "value": 70},
                        "missing_utilization": {"column": "revolving_utilization", "op": "isnull"}}
    directions = model_directions(DatasetSpec.model_validate(data))
    assert directions == {"revolving_utilization": 1, "late_30_59": 1, "late_90": 1, "late_60_89": 1, "age": -1,
                          "implausible_utilization": 1, "young": 1, "old": -1}
    data = small_spec.model_dump()
    for column in data["columns"].values():
        column["monotone"] = None
    assert monotone_constraints(DatasetSpec.model_validate(data)) is None
    exp = small_experiment("logistic_baseline.yaml", family="xgboost", params={})
    assert build_pipeline(exp, DatasetSpec.model_validate(data)).named_steps["model"].monotone_constraints is None
