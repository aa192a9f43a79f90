"""The model: raw applicant columns → derived features → preprocessing → estimator, one sklearn Pipeline.

A model family is a small factory (`FAMILIES`): its estimator, and whether it wants the linear
preprocessing (impute, scale, power, one-hot) or the tree preprocessing (raw values, native NaN,
ordinal-coded categoricals). Adding a family is a factory here plus an experiment spec.
Tree families get the spec's monotone directions as constraints (`monotone_constraints`); the linear
family stays unconstrained. The promotion gate (f) checks every family on the registered artifact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, PowerTransformer, StandardScaler
from xgboost import XGBClassifier

from creditflow.errors import SpecError
from creditflow.model.calibration import Calibration, calibrated
from creditflow.specs import DatasetSpec, ExperimentSpec, GroupKind

GROUPS: tuple[GroupKind, ...] = ("numeric", "skewed", "categorical", "indicator")
OPS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "gt": np.greater, "ge": np.greater_equal, "lt": np.less, "le": np.less_equal,
}


class CreditFeatures(TransformerMixin, BaseEstimator):
    """Raw columns → model columns: rename, sentinels to missing, derived 0/1 indicators, caps.

    Parameters are plain dicts so the fitted pipeline saves with skops without pickle.
    """

    def __init__(self, renames: dict | None = None, sentinels: dict | None = None, derived: dict | None = None,
                 caps: dict | None = None):
        self.renames = renames
        self.sentinels = sentinels
        self.derived = derived
        self.caps = caps

    def fit(self, X: pd.DataFrame, y: Any = None) -> CreditFeatures:
        self.n_features_in_ = X.shape[1]
        self.feature_names_in_ = np.asarray(list(X.columns), dtype=object)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        out = X[list(self.renames)].rename(columns=self.renames)
        for col, values in (self.sentinels or {}).items():
            out[col] = out[col].where(~out[col].isin(values))
        for name, (col, op, value) in (self.derived or {}).items():
            source = out[col].to_numpy(dtype="float64", na_value=np.nan)
            flag = np.isnan(source) if op == "isnull" else OPS[op](source, value)
            out[name] = flag.astype("float64")
        for col, ceiling in (self.caps or {}).items():  # after the indicators, which see raw values
            out[col] = out[col].clip(upper=ceiling)
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray([*self.renames.values(), *(self.derived or {})], dtype=object)


def make_features(spec: DatasetSpec) -> CreditFeatures:
    sentinels = {}
    if spec.sentinel_action == "missing":
        sentinels = {c.name: list(c.sentinels) for c in spec.columns.values() if c.sentinels}
    derived = {k: [d.column, d.op, d.value] for k, d in spec.derived.items()}
    caps = {c.name: c.cap for c in spec.columns.values() if c.cap is not None}
    return CreditFeatures({raw: c.name for raw, c in spec.columns.items()}, sentinels, derived, caps)


def _linear_group(spec: DatasetSpec, kind: GroupKind) -> Pipeline | str:
    g = spec.group_spec(kind)
    if kind == "categorical":
        return make_pipeline(
            SimpleImputer(strategy="most_frequent"),
            OneHotEncoder(handle_unknown="ignore") if g.encode == "onehot" else _ordinal(),
        )
    steps: list[tuple[str, Any]] = []
    if g.impute != "none":
        steps.append(("impute", SimpleImputer(strategy=g.impute, add_indicator=g.add_indicator)))
    if g.power:
        steps.append(("power", PowerTransformer(method="yeo-johnson", standardize=g.scale)))
    elif g.scale:
        steps.append(("scale", StandardScaler()))
    return Pipeline(steps) if steps else "passthrough"


def _ordinal() -> OrdinalEncoder:
    return OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan)


def make_preprocessor(spec: DatasetSpec, kind: Literal["linear", "tree"]) -> ColumnTransformer:
    """Group-wise preprocessing; trees see raw values (NaN native) and ordinal-coded categoricals."""
    parts = []
    for group in GROUPS:
        cols = spec.model_columns(group)
        if not cols:
            continue
        if kind == "linear":
            parts.append((group, _linear_group(spec, group), cols))
        else:
            parts.append((group, _ordinal() if group == "categorical" else "passthrough", cols))
    return ColumnTransformer(parts, remainder="drop")


def tree_features(spec: DatasetSpec) -> list[str]:
    """The tree preprocessing's output columns, in order: each group's model columns, groups in GROUPS order."""
    return [c for g in GROUPS for c in spec.model_columns(g)]


SIGN = {"increasing": 1, "decreasing": -1}
FOLLOWS = {"gt": 1, "ge": 1, "lt": -1, "le": -1, "isnull": 0}  # a derived flag's direction relative to its column


def model_directions(spec: DatasetSpec) -> dict[str, int]:
    """Model column -> +1/-1 where P(default) must rise/fall with it: the spec's `monotone` columns, and their
    derived indicators (`x > v` of an increasing column rises with it, `x < v` falls, `isnull` is unconstrained)."""
    signs = {c.name: SIGN[c.monotone] for c in spec.columns.values() if c.monotone}
    derived = {k: signs.get(d.column, 0) * FOLLOWS[d.op] for k, d in spec.derived.items()}
    return {name: sign for name, sign in {**signs, **derived}.items() if sign}


def monotone_constraints(spec: DatasetSpec) -> tuple[int, ...] | None:
    """The tree families' constraint vector, in their input feature order; None when the spec declares nothing."""
    directions = model_directions(spec)
    return tuple(directions.get(c, 0) for c in tree_features(spec)) if directions else None


def _logistic(spec: DatasetSpec, seed: int) -> LogisticRegression:
    return LogisticRegression(max_iter=2_000, random_state=seed)


def _xgboost(spec: DatasetSpec, seed: int) -> XGBClassifier:
    # categoricals stay ordinal-coded numbers (no native categorical splits), as for HGB: shap's baseline explainer
    # refuses native splits, and the served reasons are baseline Shapley against the reference applicant
    return XGBClassifier(
        n_estimators=300, max_depth=4, learning_rate=0.05, tree_method="hist", n_jobs=2, random_state=seed,
        eval_metric="logloss", monotone_constraints=monotone_constraints(spec),
    )


def _hist_gradient_boosting(spec: DatasetSpec, seed: int) -> HistGradientBoostingClassifier:
    # categoricals stay ordinal-coded numbers: shap 0.51 misreads HGB's native categorical splits
    return HistGradientBoostingClassifier(random_state=seed, categorical_features=None,
                                          monotonic_cst=monotone_constraints(spec))


def _random_forest(spec: DatasetSpec, seed: int) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=200, min_samples_leaf=20, n_jobs=2, random_state=seed,
                                  monotonic_cst=monotone_constraints(spec))


@dataclass(frozen=True)
class Family:
    make: Callable[[DatasetSpec, int], BaseEstimator]
    preprocessing: Literal["linear", "tree"]


FAMILIES: dict[str, Family] = {
    "logistic": Family(_logistic, "linear"),
    "xgboost": Family(_xgboost, "tree"),
    "hist_gradient_boosting": Family(_hist_gradient_boosting, "tree"),
    "random_forest": Family(_random_forest, "tree"),
}


def family_of(name: str) -> Family:
    if name not in FAMILIES:
        raise SpecError(f"unknown model family '{name}' (known: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[name]


def build_pipeline(exp: ExperimentSpec, spec: DatasetSpec, params: dict[str, Any] | None = None) -> Pipeline:
    """The unfitted pipeline for an experiment, with its fixed params and then `params` applied."""
    family = family_of(exp.family)
    pipe = Pipeline([
        ("features", make_features(spec)),
        ("preprocess", make_preprocessor(spec, family.preprocessing)),
        ("model", family.make(spec, exp.seed)),
    ])
    return set_params_checked(pipe, {**exp.params, **(params or {})})


def set_params_checked(pipe: Pipeline, params: dict[str, Any]) -> Pipeline:
    """`set_params` with an error naming any parameter the pipeline does not have."""
    known = pipe.get_params(deep=True)
    unknown = [k for k in params if k not in known]
    if unknown:
        raise SpecError(f"unknown pipeline parameter(s): {', '.join(unknown)} (e.g. model__C, model__max_depth)")
    return pipe.set_params(**params)


def feature_sources(pipe: Pipeline, spec: DatasetSpec) -> list[str]:
    """For each preprocessed column, the raw input column it comes from (for raw-space explanations)."""
    pre: ColumnTransformer = pipe.named_steps["preprocess"]
    sources: list[str] = []
    for group, transformer, cols in pre.transformers_:
        if group == "remainder" or transformer == "drop":
            continue
        names = cols if transformer == "passthrough" else transformer.get_feature_names_out(cols)
        for out_name in names:
            owner = max((c for c in cols if str(out_name) == c or c in str(out_name)), key=len)
            sources.append(spec.raw_name_of(owner))
    return sources


def positive_index(model: Any) -> int:
    """The column of predict_proba that holds P(default): class 1's, never assumed to be the last."""
    return list(model.classes_).index(1)


def predict_default(pipe: Pipeline, X: pd.DataFrame, calibration: Calibration | None = None) -> np.ndarray:
    """P(default) as served: the column of predict_proba for class 1 (never class labels), calibrated when the
    model is."""
    return calibrated(pipe.predict_proba(X)[:, positive_index(pipe)], calibration)


def is_linear(model: Any) -> bool:
    """Whether the estimator is linear in its preprocessed inputs (SHAP in closed form)."""
    return hasattr(model, "coef_") and hasattr(model, "intercept_")
