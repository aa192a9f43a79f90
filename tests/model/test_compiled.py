"""The compiled scorer: its probabilities, SHAP values and reason codes equal the pipeline's and explain's."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from creditflow.data.dataset import coerce_columns, split_data
from creditflow.model.categories import UNSEEN_TEXT
from creditflow.model.compiled import compile_scorer
from creditflow.model.inputs import applicant_matrix
from creditflow.model.pipeline import build_pipeline, tree_features
from creditflow.model.reasons import reason_sets
from creditflow.model.shap import raw_shap, reason_codes
from creditflow.specs import DatasetSpec, GroupSpec
from creditflow.train.log_model import shap_reference
from tests.conftest import small_experiment
from tests.model.shap_cases import SPEC

SPEC_COLUMNS = SPEC.raw_columns


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
def fitted_families(small_spec, small_data, fitted_logistic, fitted_xgboost, fitted_hist_gradient_boosting):
    """family -> (pipeline fitted on the training split, split); forests and HGB kept small (HGB: the session's)."""
    out = {"logistic": fitted_logistic[1:], "xgboost": fitted_xgboost[1:],
           "hist_gradient_boosting": fitted_hist_gradient_boosting[1:]}
    for family, params in (("random_forest", {"model__n_estimators": 40}),):
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
    for i in range(20):  # one applicant at a time (an online request): the same reasons
        one, at = reason_sets(scored.contributions[i:i + 1], 3)
        assert list(at) == [0] and one[0] == sets[which[i]]


@pytest.mark.parametrize("family", ["xgboost", "hist_gradient_boosting"])
def test_the_compiled_scorer_answers_one_row_as_it_answers_many(family, fitted_families, small_spec) -> None:
    """Small calls go through the packed trees, big ones through the libraries: the same numbers either way."""
    pipe, split = fitted_families[family]
    scorer = compile_scorer(pipe, small_spec, np.asarray(shap_reference(pipe, split.X_train, small_spec)))
    Z = scorer.transform(split.X_test[small_spec.raw_columns].head(300).to_numpy(dtype="float64"))
    many = (scorer.probability_of(Z), scorer.contributions_of(Z))
    ones = [(scorer.probability_of(Z[i:i + 1])[0], scorer.contributions_of(Z[i:i + 1])[0]) for i in range(len(Z))]
    np.testing.assert_array_equal([p for p, _ in ones], many[0])
    np.testing.assert_allclose([c for _, c in ones], many[1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("family", ["logistic", "xgboost", "hist_gradient_boosting", "random_forest"])
def test_a_rows_answer_is_bit_for_bit_the_same_whichever_rows_are_scored_with_it(family, fitted_families,
                                                                                   small_spec) -> None:
    pipe, split = fitted_families[family]
    R = quirky_rows(split.X_test[small_spec.raw_columns].head(120)).to_numpy(dtype="float64")
    reference = shap_reference(pipe, split.X_train, small_spec)
    scorer = compile_scorer(pipe, small_spec, None if reference is None else np.asarray(reference))
    alone = [scorer.score(R[i:i + 1]) for i in range(len(R))]
    for size in (8, 100):  # requests scored together (serving.coalesce) get the bytes they get alone
        together = [scorer.score(R[i:i + size]) for i in range(0, len(R), size)]
        np.testing.assert_array_equal(np.concatenate([s.probability for s in together]),
                                      np.concatenate([s.probability for s in alone]))
        np.testing.assert_array_equal(np.concatenate([s.contributions for s in together]),
                                      np.concatenate([s.contributions for s in alone]))


def test_compiled_preprocessing_equals_scikit_learn(fitted_logistic, small_spec) -> None:
    _, pipe, split = fitted_logistic
    R = quirky_rows(split.X_test[small_spec.raw_columns]).to_numpy(dtype="float64")
    fast = compile_scorer(pipe, small_spec, np.zeros(1))
    slow = compile_scorer(pipe, small_spec, np.zeros(1), fast=False)
    assert np.max(np.abs(fast.transform(R) - slow.transform(R))) <= 1e-12
    assert fast.transform(R).shape == slow.transform(R).shape


# ---------------------------------------------------------------- categorical columns


def housing_rows(X: pd.DataFrame, unseen: bool = True) -> pd.DataFrame:
    """Held-out rows with every category, missing ones (None and NaN) and, when `unseen`, a text never trained on."""
    texts = ["own", "rent", "other", None, np.nan] + (["castle"] if unseen else [])
    return X.assign(Housing=np.resize(np.asarray(texts, dtype=object), len(X)))


@pytest.fixture(scope="module")
def housing_pipes(housing_spec: DatasetSpec, shap_data: tuple) -> dict:
    """case -> (pipeline, spec, training rows): one-hot and ordinal logistic, XGBoost (ordinal codes, and native
    categorical splits as logged before), HGB."""
    from tests.model.shap_cases import fit, fit_native_xgboost
    from tests.model.test_shap import with_housing

    X_train, y_train, _, _ = shap_data
    X_train, y_train = with_housing(X_train, y_train, seed=2)
    X_train = coerce_columns(X_train, housing_spec)  # as training reads a data set: missing categories are None
    ordinal = housing_spec.model_copy(update={"groups": {"categorical": GroupSpec(
        impute="most_frequent", scale=False, encode="ordinal")}})
    cases = {"logistic": ("logistic", housing_spec), "logistic_ordinal": ("logistic", ordinal),
             "xgboost": ("xgboost", housing_spec), "hist_gradient_boosting": ("hist_gradient_boosting", housing_spec)}
    pipes = {case: (fit(family, spec, X_train, y_train), spec, X_train) for case, (family, spec) in cases.items()}
    return {**pipes, "xgboost_native": (fit_native_xgboost(housing_spec, X_train, y_train), housing_spec, X_train)}


CATEGORICAL_CASES = ["logistic", "logistic_ordinal", "xgboost", "xgboost_native", "hist_gradient_boosting"]


@pytest.mark.parametrize("case", CATEGORICAL_CASES)
def test_categorical_columns_compile_exactly(case: str, housing_pipes: dict, shap_data: tuple) -> None:
    pipe, spec, X_train = housing_pipes[case]
    # an ordinal code the logistic model never saw is NaN, which it cannot score (the served model refuses it)
    rows = housing_rows(quirky_rows(shap_data[2][SPEC_COLUMNS]), unseen=case != "logistic_ordinal")
    reference = shap_reference(pipe, X_train, spec)
    assert (reference is None) == (case == "xgboost_native")  # native splits: path-dependent TreeSHAP, as logged
    scorer = compile_scorer(pipe, spec, None if reference is None else np.asarray(reference))  # no NotCompilable
    R = applicant_matrix(rows, spec, scorer.codes)
    expected = pipe.predict_proba(coerce_columns(rows, spec))[:, 1]
    assert np.max(np.abs(scorer.probability(R) - expected)) <= 1e-9
    slow = compile_scorer(pipe, spec, None if reference is None else np.asarray(reference), fast=False)
    np.testing.assert_allclose(scorer.transform(R), slow.transform(R), rtol=0, atol=1e-12)  # NaN where trees see it
    direct = raw_shap(pipe, spec, coerce_columns(rows, spec), background=X_train)
    assert np.max(np.abs(scorer.score(R).contributions - direct.values.to_numpy())) <= 1e-9
    assert (direct.values["Housing"] != 0).any()


def test_codes_follow_the_fitted_vocabulary(housing_pipes: dict) -> None:
    pipe, spec, _ = housing_pipes["logistic"]
    codes = compile_scorer(pipe, spec, np.zeros(1)).codes
    assert codes.texts["Housing"] == ("other", "own", "rent")  # the encoder's categories, sorted as fitted
    values = pd.Series(["rent", None, np.nan, "castle", "own"], dtype=object)
    np.testing.assert_array_equal(codes.of("Housing", values, 5), [2, np.nan, np.nan, -1, 1])
    np.testing.assert_array_equal(codes.of("Housing", values.astype("string"), 5), [2, np.nan, np.nan, -1, 1])
    assert list(codes.decode("Housing", np.asarray([2.0, np.nan, -1.0]))) == ["rent", None, UNSEEN_TEXT]
    assert np.isnan(codes.of("Housing", None, 3)).all()  # an absent nullable column: all missing


# ---------------------------------------------------------------- tree reasons: baseline Shapley


def exact_baseline_shapley(f, x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Shapley values of v(S) = f(x on S, r elsewhere), every coalition enumerated (the definition, no algorithm)."""
    n = len(x)
    masks = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)
    values = f(np.where(masks, x, r))
    sizes = masks.sum(axis=1)
    weight = np.asarray([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)] + [0.0])
    phi = np.empty(n)
    for i in range(n):
        with_i, without_i = masks[:, i], ~masks[:, i]
        phi[i] = weight[sizes[with_i] - 1] @ values[with_i] - weight[sizes[without_i]] @ values[without_i]
    return phi


@pytest.mark.parametrize("family", ["xgboost", "hist_gradient_boosting"])
def test_tree_reasons_are_exact_baseline_shapley_values(family, fitted_families, small_spec) -> None:
    """The served tree contributions are the Shapley values of the log-odds between the reference applicant and the
    applicant, enumerated over every coalition of the model's columns; their first reason is TreeSHAP's for most
    declined applicants."""
    pipe, split = fitted_families[family]
    reference = np.asarray(shap_reference(pipe, split.X_train, small_spec))
    scorer = compile_scorer(pipe, small_spec, reference)
    X = split.X_test[small_spec.raw_columns]
    Z = scorer.transform(X.to_numpy(dtype="float64"))
    declined = np.flatnonzero(scorer.probability_of(Z) >= 0.2)
    model = pipe[-1]
    log_odds = (lambda M: model.predict(M, output_margin=True)) if family == "xgboost" else model.decision_function
    ours = scorer.contributions_of(Z[declined[:3]])
    for row, phi in zip(declined[:3], ours, strict=True):
        np.testing.assert_allclose(phi, exact_baseline_shapley(log_odds, Z[row], reference), rtol=0, atol=2e-5)
    served = scorer.raw_contributions(Z[declined])
    tree_shap = raw_shap(pipe, small_spec, X.iloc[declined]).values.to_numpy()  # path-dependent TreeSHAP
    agreement = np.mean(served.argmax(axis=1) == tree_shap.argmax(axis=1))
    assert len(declined) > 30 and agreement >= 0.8, agreement


def test_categorical_xgboost_reasons_are_baseline_shapley_in_the_categorical_column(housing_pipes: dict,
                                                                                   shap_data: tuple) -> None:
    """XGBoost sees the categories as ordinal codes (no native splits), so its served contributions are the Shapley
    values of the log-odds between the reference applicant (whose housing is the most frequent) and the applicant,
    every coalition enumerated, and a category's contribution belongs to its raw column: nothing where the applicant's
    housing is the reference's, a raised risk where it is the riskier one (renting, as generated)."""
    pipe, spec, X_train = housing_pipes["xgboost"]
    reference = np.asarray(shap_reference(pipe, X_train, spec))
    scorer = compile_scorer(pipe, spec, reference)
    rows = housing_rows(shap_data[2][SPEC_COLUMNS].head(6))  # own, rent, other, None, NaN, castle
    Z = scorer.transform(applicant_matrix(rows, spec, scorer.codes))
    model = pipe[-1]
    exact = np.asarray([exact_baseline_shapley(lambda M: model.predict(M, output_margin=True), z, reference)
                        for z in Z])
    np.testing.assert_allclose(scorer.contributions_of(Z), exact, rtol=0, atol=2e-5)
    housing = scorer.raw_contributions(Z)[:, spec.raw_columns.index("Housing")]
    code = tree_features(spec).index("housing")
    assert X_train["Housing"].mode()[0] == "own" and scorer.codes.texts["Housing"][int(reference[code])] == "own"
    assert housing[0] == 0 and housing[1] > 0
