"""Small generated credit frames and fitted pipelines shared by the SHAP and explanation tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.pipeline import Pipeline

from creditflow.model.pipeline import build_pipeline, tree_features
from creditflow.specs import DatasetSpec, ExperimentSpec, load_dataset_spec
from tests.conftest import DATASET_YAML

SPEC = load_dataset_spec(DATASET_YAML)
LATE_90 = "NumberOfTimes90DaysLate"
FAMILIES = {  # small models: tests check exactness, not quality
    "logistic": {},
    "xgboost": {"model__n_estimators": 30},
    "hist_gradient_boosting": {"model__max_iter": 30},
    "random_forest": {"model__n_estimators": 30},
}


def credit_frame(n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """Raw rows in the Give Me Some Credit schema with its quirks; default driven by utilization and 90+ days late."""
    rng = np.random.default_rng(seed)
    late_90 = rng.poisson(0.15, n).astype("float64")
    late_90[rng.random(n) < 0.005] = 98  # sentinel: unknown
    income = rng.lognormal(8.5, 0.6, n)
    income[rng.random(n) < 0.2] = np.nan
    X = pd.DataFrame({
        "RevolvingUtilizationOfUnsecuredLines": rng.beta(0.6, 1.2, n),
        "age": rng.integers(21, 90, n).astype("float64"),
        "NumberOfTime30-59DaysPastDueNotWorse": rng.poisson(0.3, n).astype("float64"),
        "DebtRatio": np.where(np.isnan(income), rng.lognormal(5, 1, n), rng.lognormal(-1, 0.8, n)),
        "MonthlyIncome": income,
        "NumberOfOpenCreditLinesAndLoans": rng.poisson(8, n).astype("float64"),
        LATE_90: late_90,
        "NumberRealEstateLoansOrLines": rng.poisson(1, n).astype("float64"),
        "NumberOfTime60-89DaysPastDueNotWorse": rng.poisson(0.1, n).astype("float64"),
        "NumberOfDependents": np.where(rng.random(n) < 0.03, np.nan, rng.poisson(0.8, n)),
    })
    logit = -3 + 2.5 * X["RevolvingUtilizationOfUnsecuredLines"] + 0.9 * np.minimum(late_90, 5) - 0.02 * (X["age"] - 50)
    y = pd.Series((rng.random(n) < expit(logit)).astype("int64"), name="SeriousDlqin2yrs")
    return X, y


def fit(family: str, spec: DatasetSpec, X: pd.DataFrame, y: pd.Series) -> Pipeline:
    exp = ExperimentSpec(name=f"test-{family}", dataset="give_me_some_credit.yaml", family=family,
                         params=FAMILIES[family])
    return build_pipeline(exp, spec).fit(X, y)


def fit_native_xgboost(spec: DatasetSpec, X: pd.DataFrame, y: pd.Series) -> Pipeline:
    """XGBoost with native categorical splits on the ordinal codes, as the family was fitted before categoricals
    reached it as plain numbers: models logged then still load, score and explain."""
    categorical = set(spec.model_columns("categorical"))
    native = {"model__enable_categorical": True,
              "model__feature_types": ["c" if c in categorical else "q" for c in tree_features(spec)]}
    exp = ExperimentSpec(name="test-xgboost-native", dataset="give_me_some_credit.yaml", family="xgboost",
                         params={**FAMILIES["xgboost"], **native})
    return build_pipeline(exp, spec).fit(X, y)


def split_frames() -> tuple[pd.DataFrame, pd.Series, pd.DataFrame, pd.Series]:
    """(X_train, y_train, X_test, y_test): 3,000 rows to fit on, 1,000 held out (index from 13,000)."""
    X, y = credit_frame(4_000, seed=1)
    return X[:3_000], y[:3_000], X[3_000:].set_index(X.index[3_000:] + 10_000), y[3_000:]


def spec_with_housing() -> DatasetSpec:
    """The credit spec plus a categorical column, to check that one-hot columns fold back into it."""
    raw = SPEC.model_dump()
    raw["columns"]["Housing"] = {"name": "housing", "group": "categorical", "categories": ["own", "rent", "other"],
                                 "display": "Housing"}
    return DatasetSpec.model_validate(raw)
