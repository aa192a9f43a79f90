"""The compiled trees: the libraries' margins and probabilities, baseline Shapley values (shap's, and every
coalition's), refusals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import shap
from sklearn.ensemble import HistGradientBoostingClassifier
from xgboost import XGBClassifier

from creditflow.model.categories import NotCompilable
from creditflow.model.forest import pack


def generated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows with an interaction, a small integer column and 10% missing values; a noisy binary label."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    X[:, 3] = rng.integers(0, 4, n)
    X[rng.random(X.shape) < 0.1] = np.nan
    y = np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1] * X[:, 2]) + 0.3 * np.nan_to_num(X[:, 3])
    return X, (y + rng.normal(size=n) > 0.5).astype(int)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, y = generated(1_500, 0)
    Z, _ = generated(400, 1)
    return X, y, Z, np.nanmean(X, axis=0)


@pytest.fixture(scope="module")
def models(data) -> dict:
    X, y, _, _ = data
    return {"hist_gradient_boosting": HistGradientBoostingClassifier(max_iter=25, random_state=0).fit(X, y),
            "xgboost": XGBClassifier(n_estimators=25, max_depth=5, random_state=0).fit(X, y),
            "xgboost_base_score": XGBClassifier(n_estimators=10, max_depth=3, base_score=0.2).fit(X, y)}


def test_hist_gradient_boosting_margin_and_probability_are_scikit_learns(models, data) -> None:
    model, Z = models["hist_gradient_boosting"], data[2]
    forest = pack(model)
    np.testing.assert_array_equal(forest.margin(Z), model._raw_predict(Z)[:, 0])  # same float64 sums, same order
    np.testing.assert_array_equal(forest.probability(Z), model.predict_proba(Z)[:, 1])
    assert forest.margin(Z).dtype == np.float64 and np.isnan(Z).any()


@pytest.mark.parametrize("name", ["xgboost", "xgboost_base_score"])
def test_xgboost_margin_and_probability_are_xgboosts_to_the_bit(name, models, data) -> None:
    model, Z = models[name], data[2]
    forest = pack(model)
    np.testing.assert_array_equal(forest.margin(Z), model.predict(Z, output_margin=True))  # float32 as XGBoost sums
    np.testing.assert_array_equal(forest.probability(Z), model.predict_proba(Z)[:, 1].astype("float64"))


def test_xgboost_after_early_stopping_uses_the_trees_up_to_the_best_iteration(data) -> None:
    X, y, Z, _ = data
    model = XGBClassifier(n_estimators=200, max_depth=3, learning_rate=0.5, early_stopping_rounds=3)
    model.fit(X[:1000], y[:1000], eval_set=[(X[1000:], y[1000:])], verbose=False)
    assert model.best_iteration + 1 < model.get_booster().num_boosted_rounds()
    forest = pack(model)
    assert forest.trees == model.best_iteration + 1
    np.testing.assert_array_equal(forest.probability(Z), model.predict_proba(Z)[:, 1].astype("float64"))


@pytest.mark.parametrize("name", ["hist_gradient_boosting", "xgboost", "xgboost_base_score"])
def test_baseline_shapley_values_are_shaps_and_add_up_to_the_margin_difference(name, models, data) -> None:
    """shap sums the leaves in float32, the walk in float64: the same values to float32 rounding."""
    model, Z, reference = models[name], data[2], data[3]
    forest = pack(model)
    ours = forest.baseline_shapley(Z, reference)
    explainer = shap.TreeExplainer(model, data=reference[None, :], feature_perturbation="interventional")
    theirs = explainer.shap_values(Z, check_additivity=False)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-6)
    difference = forest.margin(Z).astype("float64") - forest.margin(reference[None, :])[0]
    exact_sums = 1e-12 if name == "hist_gradient_boosting" else 1e-5  # XGBoost's margins are float32 sums
    np.testing.assert_allclose(ours.sum(axis=1), difference, rtol=0, atol=exact_sums)
    assert (np.abs(ours) > 1e-3).sum() > len(Z)  # values that can tell a wrong walk


@pytest.mark.parametrize("name", ["hist_gradient_boosting", "xgboost"])
def test_the_walk_gives_every_coalitions_shapley_values_and_the_libraries_margin(name, models, data) -> None:
    """The definition, no algorithm: v(S) = margin(x on S, reference elsewhere) over all 2^6 coalitions; the margin
    of the same walk is `margin`'s to the bit."""
    model, Z, reference = models[name], data[2][:40], data[3]
    forest = pack(model)
    margin, ours = forest.explain(Z, forest.route(reference))
    np.testing.assert_array_equal(margin, forest.margin(Z))
    n = Z.shape[1]
    masks = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)
    weight = np.asarray([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)] + [0.0])
    for x, phi in zip(Z, ours, strict=True):
        values = forest.margin(np.where(masks, x, reference)).astype("float64")
        sizes = masks.sum(axis=1)
        exact = [weight[sizes[on] - 1] @ values[on] - weight[sizes[~on]] @ values[~on] for on in masks.T]
        np.testing.assert_allclose(phi, exact, rtol=0, atol=1e-12 if name == "hist_gradient_boosting" else 1e-5)
    assert (np.abs(ours) > 1e-3).sum() > len(Z)


def test_a_training_value_on_a_hist_gradient_boosting_threshold_goes_where_the_model_sends_it(models, data) -> None:
    """HGB splits at training values and goes left when x <= its float64 threshold; shap rounds the threshold to
    float32 and may send such a value right. Ours follow the model, so they add up to the margin difference on every
    training row, where shap's miss a leaf on some; elsewhere they are shap's."""
    model, X, reference = models["hist_gradient_boosting"], data[0], data[3]
    forest = pack(model)
    ours = forest.baseline_shapley(X, reference)
    theirs = shap.TreeExplainer(model, data=reference[None, :],
                                feature_perturbation="interventional").shap_values(X, check_additivity=False)
    difference = forest.margin(X) - forest.margin(reference[None, :])[0]
    np.testing.assert_allclose(ours.sum(axis=1), difference, rtol=0, atol=1e-12)
    missed = np.abs(theirs.sum(axis=1) - difference) > 1e-4
    split = forest.threshold[forest.feature >= 0]
    on_threshold = np.isin(X, split[split.astype("float32") < split]).any(axis=1)  # where float32 sends them right
    assert missed.sum() >= 3 and on_threshold[missed].all()
    np.testing.assert_allclose(ours[~on_threshold], theirs[~on_threshold], rtol=0, atol=2e-6)


def test_models_the_kernels_do_not_replay_are_refused(data) -> None:
    X, y, _, _ = data
    ordinal = np.nan_to_num(X[:, 3], nan=0).astype(int)
    categorical = HistGradientBoostingClassifier(max_iter=3, categorical_features=[3]).fit(
        np.column_stack([X[:, :3], ordinal]), y)
    three = (y + (X[:, 0] > 1)).astype(int)
    native = XGBClassifier(n_estimators=3, enable_categorical=True, tree_method="hist").fit(
        pd.DataFrame({"a": X[:, 0], "c": pd.Categorical(ordinal)}), y)
    refused = {
        "categorical splits": categorical,
        "more than one class column": HistGradientBoostingClassifier(max_iter=3).fit(X, three),
        "native categorical": native,
        "dart": XGBClassifier(n_estimators=3, booster="dart").fit(X, y),
        "multi:softprob": XGBClassifier(n_estimators=3).fit(X, three),
    }
    for message, model in refused.items():
        with pytest.raises(NotCompilable, match=message):
            pack(model)

