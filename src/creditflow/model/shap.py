"""SHAP in the RAW input columns a credit officer knows, shared by the served model and the explanations.

The estimator is explained on its preprocessed columns, and those contributions are summed back
into the raw input columns they come from (`raw_projection`), so the one-hot, missing-indicator and
derived columns of a raw field count as that field. With a reference applicant (`reference_row`: the
mean training applicant), every family gets baseline Shapley values against it, exact for the
model: each says how much this column's value moves the log-odds of default away from the
reference applicant's (docs/performance.md has why, and how often the reasons agree with TreeSHAP's):
- linear models: coef * (z - reference), in closed form;
- trees: the interventional Shapley values of shap's `TreeExplainer` with the reference as its one background
  row; binary boosted trees computed by `model.forest`'s walk (the served model's, margin and values in one pass),
  other trees by shap. Categorical columns reach every tree family ordinal-coded; shap
  cannot follow XGBoost's native categorical splits against a reference.
Without one (tree models logged before it, and XGBoost models logged with native categorical splits,
as they were before they were ordinal-coded): path-dependent TreeSHAP, the booster's own
`pred_contribs` for XGBoost, shap's `TreeExplainer` for other trees.
shap is imported only when a tree model other than a boosted one is explained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.pipeline import Pipeline
from xgboost import XGBClassifier

from creditflow.model.forest import packed, xgboost_iterations
from creditflow.model.pipeline import feature_sources, is_linear, positive_index, tree_features
from creditflow.specs import DatasetSpec

Output = Literal["log_odds", "probability"]


@dataclass(frozen=True)
class RawShap:
    """SHAP values summed into raw input columns: base_value + values.sum(axis=1) == model output."""

    base_value: float  # in `output` space
    values: pd.DataFrame  # rows x raw input columns (spec.raw_columns)
    data: pd.DataFrame  # the raw rows explained
    output: Output = "log_odds"  # random forests are explained in probability space


def raw_projection(pipe: Pipeline, spec: DatasetSpec) -> np.ndarray:
    """Preprocessed columns x raw columns: 1 where the preprocessed column comes from the raw one."""
    sources = np.asarray(feature_sources(pipe, spec))
    return (sources[:, None] == np.asarray(spec.raw_columns)[None, :]).astype("float64")


def linear_terms(model: Any) -> tuple[np.ndarray, float]:
    """Coefficients and intercept of the log-odds of default."""
    sign = 1.0 if positive_index(model) == 1 else -1.0
    return sign * np.asarray(model.coef_, dtype="float64").ravel(), sign * float(np.ravel(model.intercept_)[0])


def xgboost_contributions(model: XGBClassifier, Z: np.ndarray) -> np.ndarray:
    """The booster's TreeSHAP per row: one column per preprocessed column, then the bias (log-odds)."""
    import xgboost

    booster = model.get_booster()
    types = booster.feature_types
    categorical = bool(types and "c" in types)
    matrix = xgboost.DMatrix(np.ascontiguousarray(Z), feature_types=types, enable_categorical=categorical,
                             nthread=model.n_jobs)  # None: all cores
    return booster.predict(matrix, pred_contribs=True, iteration_range=xgboost_iterations(model)).astype("float64")


def tree_explainer(model: Any, reference: np.ndarray | None = None) -> Any:
    """Path-dependent TreeSHAP, or baseline Shapley against one reference row (a preprocessed applicant)."""
    import shap

    if reference is None:
        return shap.TreeExplainer(model, feature_perturbation="tree_path_dependent")
    return shap.TreeExplainer(model, data=np.asarray(reference, dtype="float64")[None, :],
                              feature_perturbation="interventional")


def has_categorical_splits(model: Any) -> bool:
    """XGBoost with native categorical features (as logged before categoricals were ordinal-coded for it): shap
    explains those only path-dependently."""
    if not isinstance(model, XGBClassifier):
        return False
    types = model.get_booster().feature_types
    return bool(types and "c" in types)


def reference_row(pipe: Pipeline, X: pd.DataFrame, spec: DatasetSpec) -> np.ndarray | None:
    """The reference applicant of baseline Shapley, preprocessed: the mean training row (linear models), or for
    trees the mean of each column seen (missing values left out; a categorical column: its most frequent code).
    None where only path-dependent TreeSHAP applies."""
    model = pipe[-1]
    if has_categorical_splits(model):
        return None
    Z = _transform(pipe, X[spec.raw_columns])
    if is_linear(model):
        return Z.mean(axis=0)
    seen = ~np.isnan(Z)
    row = np.where(seen.any(axis=0), np.nansum(Z, axis=0) / np.maximum(seen.sum(axis=0), 1), 0.0)
    categorical = set(spec.model_columns("categorical"))
    for j, name in enumerate(tree_features(spec)):
        if name in categorical and seen[:, j].any():
            values, counts = np.unique(Z[seen[:, j], j], return_counts=True)
            row[j] = values[np.argmax(counts)]
    return row


def tree_contributions(explainer: Any, model: Any, Z: np.ndarray) -> np.ndarray:
    """Path-dependent TreeSHAP of the default class (forests give one slice per class)."""
    phi = np.asarray(explainer.shap_values(np.ascontiguousarray(Z), check_additivity=False), dtype="float64")
    return phi[:, :, positive_index(model)] if phi.ndim == 3 else phi


def model_margin(pipe: Pipeline, X: pd.DataFrame) -> np.ndarray:
    """The model output that `raw_shap` decomposes: log-odds of default (probability for forests)."""
    return _margin(pipe[-1], _transform(pipe, X))


def _margin(model: Any, Z: np.ndarray) -> np.ndarray:
    if isinstance(model, XGBClassifier):
        return model.predict(Z, output_margin=True).astype("float64")
    if hasattr(model, "decision_function"):
        return np.asarray(model.decision_function(Z), dtype="float64")
    return model.predict_proba(Z)[:, positive_index(model)].astype("float64")


def raw_shap(pipe: Pipeline, spec: DatasetSpec, X: pd.DataFrame, background: pd.DataFrame | None = None) -> RawShap:
    """SHAP values of the fitted pipeline on raw rows X, summed into the raw input columns.

    Linear models: exact interventional SHAP, coef * (x - mean(background)). Background defaults to X
    itself, a batch-relative reference: to explain one applicant, pass reference rows (e.g. training rows).
    Tree models: with a background, baseline Shapley against its reference applicant (`reference_row`), as the
    served model explains; without one (or with XGBoost's categorical splits), path-dependent TreeSHAP
    (reference: the training data through the trees' covers). XGBoost computes in float32: additivity holds
    to its float32 rounding.
    """
    data = X[spec.raw_columns]
    Z = _transform(pipe, data)
    phi, base, output = _preprocessed_shap(pipe, Z, background, spec)
    _check_additivity(phi, base, _margin(pipe[-1], Z))
    to_raw = raw_projection(pipe, spec)
    if len(to_raw) != phi.shape[1]:
        raise ValueError(f"{phi.shape[1]} preprocessed columns but {len(to_raw)} feature sources")
    values = pd.DataFrame(phi @ to_raw, index=data.index, columns=spec.raw_columns)
    return RawShap(float(base), values, data, output)


def _check_additivity(phi: np.ndarray, base: float, margin: np.ndarray, tolerance: float = 1e-4) -> None:
    """Refuse explanations that do not add up (shap silently mis-parses some models)."""
    error = float(np.max(np.abs(base + phi.sum(axis=1) - margin), initial=0.0))
    if error > tolerance:
        raise ValueError(
            f"SHAP values miss the model output by up to {error:.3g}: shap cannot explain this model exactly "
            "(e.g. HistGradientBoosting with categorical splits)"
        )


def _preprocessed_shap(
    pipe: Pipeline, Z: np.ndarray, background: pd.DataFrame | None, spec: DatasetSpec
) -> tuple[np.ndarray, float, Output]:
    model = pipe[-1]
    if is_linear(model):
        reference = Z if background is None else _transform(pipe, background[spec.raw_columns])
        mean = reference.mean(axis=0)
        coef, intercept = linear_terms(model)
        return (Z - mean) * coef, float(intercept + mean @ coef), "log_odds"
    row = None if background is None else reference_row(pipe, background, spec)
    if isinstance(model, XGBClassifier) and row is None:
        contribs = xgboost_contributions(model, Z)
        return contribs[:, :-1], float(contribs[0, -1]) if len(contribs) else 0.0, "log_odds"
    forest = None if row is None else packed(model)
    if forest is not None:  # what the served model computes (model.forest)
        return forest.explain(Z, forest.route(row))[1], float(forest.margin(row[None, :])[0]), "log_odds"
    explainer = tree_explainer(model, row)
    expected = np.ravel(np.asarray(explainer.expected_value, dtype="float64"))
    if len(expected) > 1:  # one per class (forests): keep the default class
        expected = expected[positive_index(model):]
    output: Output = "log_odds" if hasattr(model, "decision_function") else "probability"
    return tree_contributions(explainer, model, Z), float(expected[0]), output


def _transform(pipe: Pipeline, X: pd.DataFrame) -> np.ndarray:
    Z = pipe[:-1].transform(X)
    Z = Z.toarray() if sparse.issparse(Z) else Z
    return np.asarray(Z, dtype="float64")


def reason_codes(shap: RawShap, spec: DatasetSpec, k: int) -> list[list[str]]:
    """Per row, labels of the up-to-k raw features that raise risk most (positive SHAP), largest first."""
    values = shap.values.to_numpy(dtype="float64")
    labels = np.asarray([spec.columns[c].label for c in shap.values.columns], dtype=object)
    top = np.argsort(-values, axis=1, kind="stable")[:, :k]
    raising = np.take_along_axis(values, top, axis=1) > 0
    return [list(row[keep]) for row, keep in zip(labels[top], raising, strict=True)]
