"""Another credit data set, with categorical columns and a text target, works by writing a spec: no code change."""

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from creditflow.data.dataset import load_dataset
from creditflow.specs import load_experiment_spec
from creditflow.train.run import train_and_log

DATASET = """
name: loans_with_categories
source: {source}
target: {{column: outcome, positive: bad}}
id_column: loan_id
columns:
  duration_months: {{name: duration, group: numeric, min: 1, integer: true, nullable: false}}
  amount: {{name: amount, group: skewed, min: 0, nullable: false, display: "Loan amount"}}
  purpose: {{name: purpose, group: categorical, nullable: false, categories: [car, education, furniture, business]}}
  housing: {{name: housing, group: categorical, nullable: true}}
  age: {{name: age, group: numeric, min: 18, max: 100, nullable: true}}
derived:
  missing_age: {{column: age, op: isnull}}
"""

EXPERIMENT = """
name: loans-{family}
dataset: loans.yaml
family: {family}
params: {params}
search: {{type: none}}
cv_folds: 2
explain: {{pdp_rows: 200, permutation_rows: 300, permutation_repeats: 2, shap_rows: 100, waterfalls: 1}}
register_as: loans-model
"""


def make_loans(n: int = 1_500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    purpose = rng.choice(["car", "education", "furniture", "business"], n)
    housing = rng.choice(["own", "rent", "free", None], n, p=[0.5, 0.3, 0.15, 0.05])
    duration = rng.integers(6, 72, n)
    amount = rng.lognormal(8, 1, n)
    age = np.where(rng.uniform(size=n) < 0.05, np.nan, rng.integers(19, 75, n))
    logit = -2 + 0.03 * duration + 0.8 * (purpose == "business") + 0.6 * (housing == "rent") - 0.02 * np.nan_to_num(
        age - 40)
    bad = rng.uniform(size=n) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame({"loan_id": np.arange(n), "duration_months": duration, "amount": amount, "purpose": purpose,
                         "housing": housing, "age": age, "outcome": np.where(bad, "bad", "good")})


@pytest.fixture(scope="module")
def loans_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loans")
    make_loans().to_csv(root / "loans.csv", index=False)
    (root / "loans.yaml").write_text(DATASET.format(source=root / "loans.csv"))
    return root


@pytest.mark.parametrize(("family", "params"), [
    ("logistic", "{}"),
    ("xgboost", "{model__n_estimators: 40}"),
    ("hist_gradient_boosting", "{model__max_iter: 40}"),
])
def test_a_new_data_set_trains_explains_and_serves(loans_dir: Path, family: str, params: str) -> None:
    path = loans_dir / f"{family}.yaml"
    path.write_text(EXPERIMENT.format(family=family, params=params))
    exp, ds = load_experiment_spec(path)
    data = load_dataset(ds)
    assert set(data.y.unique()) == {0, 1} and data.X["purpose"].dtype == object
    outcome = train_and_log(exp, ds, data)
    assert outcome.test["test_roc_auc"] > 0.6
    model = mlflow.pyfunc.load_model(outcome.model_uri)
    rows = data.X.head(3).copy()
    rows.loc[rows.index[0], "housing"] = "castle"  # a category never seen in training still scores
    out = model.predict(rows)
    assert out["probability"].between(0, 1).all() and len(out) == 3
    names = {p.path for p in mlflow.MlflowClient().list_artifacts(outcome.run_id, "explanations")}
    assert "explanations/shap_values.csv" in names
