"""SHAP values in raw input columns: additivity, column mapping, reason codes (the artifacts: train/test_explain)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from creditflow.model.pipeline import predict_default
from creditflow.model.shap import RawShap, model_margin, raw_shap, reason_codes
from creditflow.specs import DatasetSpec
from tests.model.shap_cases import FAMILIES, LATE_90, SPEC, fit


def with_housing(X: pd.DataFrame, y: pd.Series, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    housing = rng.choice(np.array(["own", "rent", "other", None], dtype=object), len(X), p=[0.5, 0.3, 0.15, 0.05])
    y = y | ((housing == "rent") & (rng.random(len(X)) < 0.3))
    return X.assign(Housing=housing), y.astype("int64")


# ---------------------------------------------------------------- raw_shap


@pytest.mark.parametrize("family", list(FAMILIES))
def test_shap_adds_up_to_the_model_output(family: str, shap_pipes: dict, shap_data: tuple) -> None:
    _, _, X, _ = shap_data
    pipe = shap_pipes[family]
    explained = raw_shap(pipe, SPEC, X)
    margin = model_margin(pipe, X)
    np.testing.assert_allclose(explained.base_value + explained.values.sum(axis=1), margin, rtol=0, atol=1e-6)
    # the decomposed output is the model's own P(default), in log-odds (forests: probability)
    p = predict_default(pipe, X)
    if family == "random_forest":
        assert explained.output == "probability"
        np.testing.assert_allclose(margin, p, rtol=0, atol=1e-12)
    else:
        assert explained.output == "log_odds"
        np.testing.assert_allclose(expit(margin), p, rtol=0, atol=1e-6)
    assert np.abs(explained.values.to_numpy()).sum() > 1  # not a trivially zero explanation


def test_linear_shap_is_interventional_against_the_background(shap_pipes: dict, shap_data: tuple) -> None:
    X_train, _, X, _ = shap_data
    pipe = shap_pipes["logistic"]
    own = raw_shap(pipe, SPEC, X)
    against_train = raw_shap(pipe, SPEC, X, background=X_train)
    np.testing.assert_allclose(against_train.base_value + against_train.values.sum(axis=1), model_margin(pipe, X),
                               rtol=0, atol=1e-6)
    assert against_train.base_value != pytest.approx(own.base_value, abs=1e-6)
    # without a background the reference is X itself: every raw column averages to zero
    np.testing.assert_allclose(own.values.mean(axis=0), 0, atol=1e-9)
    assert own.base_value == pytest.approx(model_margin(pipe, X).mean(), abs=1e-9)
    # one applicant (serving) needs the background: alone, it is its own reference and nothing stands out
    one = X.iloc[[0]]
    assert not raw_shap(pipe, SPEC, one).values.to_numpy().any()
    served = raw_shap(pipe, SPEC, one, background=X_train)
    pd.testing.assert_frame_equal(served.values, against_train.values.iloc[[0]])


def test_values_are_indexed_by_raw_columns_and_rows(shap_pipes: dict, shap_data: tuple) -> None:
    _, _, X, _ = shap_data
    explained = raw_shap(shap_pipes["xgboost"], SPEC, X[:50])
    assert list(explained.values.columns) == SPEC.raw_columns
    assert explained.values.index.equals(X.index[:50])
    pd.testing.assert_frame_equal(explained.data, X[:50][SPEC.raw_columns])


def test_indicator_columns_fold_into_their_raw_column(shap_pipes: dict, shap_data: tuple) -> None:
    _, _, X, _ = shap_data
    pipe = shap_pipes["logistic"]
    Z = pipe[:-1].transform(X)
    names = list(pipe[:-1].get_feature_names_out())
    phi = (Z - Z.mean(axis=0)) * pipe[-1].coef_.ravel()  # exact linear SHAP per preprocessed column
    explained = raw_shap(pipe, SPEC, X)
    income = [names.index(n) for n in ("skewed__monthly_income", "indicator__missing_monthly_income")]
    np.testing.assert_allclose(explained.values["MonthlyIncome"], phi[:, income].sum(axis=1), atol=1e-12)
    debt = [names.index(n) for n in ("skewed__debt_ratio", "indicator__high_debt_ratio")]
    np.testing.assert_allclose(explained.values["DebtRatio"], phi[:, debt].sum(axis=1), atol=1e-12)
    late = [names.index(n) for n in ("numeric__late_90", "numeric__missingindicator_late_90")]
    np.testing.assert_allclose(explained.values[LATE_90], phi[:, late].sum(axis=1), atol=1e-12)


def test_one_hot_columns_fold_into_their_categorical_column(housing_spec: DatasetSpec, shap_data: tuple) -> None:
    X_train, y_train, X, y = shap_data
    X_train, y_train = with_housing(X_train, y_train, seed=2)
    X, _ = with_housing(X, y, seed=3)
    pipe = fit("logistic", housing_spec, X_train, y_train)
    explained = raw_shap(pipe, housing_spec, X)
    assert list(explained.values.columns) == housing_spec.raw_columns
    np.testing.assert_allclose(explained.base_value + explained.values.sum(axis=1), model_margin(pipe, X), atol=1e-6)
    by_housing = explained.values["Housing"].groupby(X["Housing"]).mean()
    assert by_housing["rent"] > 0 > by_housing["own"]  # renting was made riskier


def test_hist_gradient_boosting_with_categoricals_is_explained_exactly(housing_spec: DatasetSpec,
                                                                      shap_data: tuple) -> None:
    """HGB keeps categoricals ordinal-coded (shap 0.51 misreads its native categorical splits), so SHAP adds up."""
    X_train, y_train, X, y = shap_data
    X_train, y_train = with_housing(X_train, y_train, seed=2)
    pipe = fit("hist_gradient_boosting", housing_spec, X_train, y_train)
    rows = with_housing(X, y, seed=3)[0]
    explained = raw_shap(pipe, housing_spec, rows)
    total = explained.base_value + explained.values.sum(axis=1).to_numpy()
    np.testing.assert_allclose(total, model_margin(pipe, rows), atol=1e-6)
    assert (explained.values["Housing"] != 0).any()


@pytest.mark.parametrize("family", ["logistic", "xgboost", "hist_gradient_boosting"])
def test_more_90_days_late_raises_its_contribution(family: str, shap_pipes: dict, shap_data: tuple) -> None:
    _, _, X, _ = shap_data
    typical = X[(X[LATE_90] == 0) & X["MonthlyIncome"].notna()].head(20)
    late = typical.assign(**{LATE_90: 4.0}).set_index(typical.index + 100_000)
    explained = raw_shap(shap_pipes[family], SPEC, pd.concat([typical, late]))
    clean, risky = explained.values[LATE_90].to_numpy().reshape(2, -1)
    assert (risky > clean).all()
    assert (risky > 0).all() and (clean < 0).all()
    codes = reason_codes(explained, SPEC, k=3)[len(typical):]
    assert all("Times 90+ days late" in row for row in codes)


# ---------------------------------------------------------------- reason codes


def test_reason_codes_are_positive_contributions_largest_first() -> None:
    cols = SPEC.raw_columns[:4]
    values = pd.DataFrame([[0.5, -0.2, 0.9, 0.1], [-1.0, -0.1, -0.3, 0.0], [0.2, 0.2, -0.1, 0.7]], columns=cols)
    explained = RawShap(base_value=-2.0, values=values, data=values)
    labels = [SPEC.columns[c].label for c in cols]
    assert reason_codes(explained, SPEC, k=2) == [[labels[2], labels[0]], [], [labels[3], labels[0]]]
    assert reason_codes(explained, SPEC, k=10) == [
        [labels[2], labels[0], labels[3]], [], [labels[3], labels[0], labels[1]],
    ]


def test_reason_codes_on_a_model_follow_its_shap_values(shap_pipes: dict, shap_data: tuple) -> None:
    _, _, X, _ = shap_data
    explained = raw_shap(shap_pipes["xgboost"], SPEC, X[:300])
    label_to_raw = {SPEC.columns[c].label: c for c in SPEC.raw_columns}
    codes = reason_codes(explained, SPEC, k=3)
    assert len(codes) == 300 and any(len(row) == 3 for row in codes)
    for row_codes, (_, row) in zip(codes, explained.values.iterrows(), strict=True):
        contributions = [row[label_to_raw[label]] for label in row_codes]
        assert len(row_codes) <= 3 and all(c > 0 for c in contributions)
        assert contributions == sorted(contributions, reverse=True)
        assert len(row_codes) == 3 or len(row_codes) == int((row > 0).sum())


