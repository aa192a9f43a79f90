"""Search and fit: every candidate is cross-validated, the best is chosen, the Bayes limit is reachable."""

import pytest
from sklearn.metrics import roc_auc_score

from creditflow.data.dataset import load_dataset, split_data
from creditflow.specs import load_dataset_spec
from creditflow.train.search import evaluate_on, fit_final, search
from tests.conftest import DATASET_YAML, small_experiment


def test_grid_search_tries_every_combination_and_keeps_the_best(small_spec, small_data) -> None:
    exp = small_experiment("logistic_grid.yaml", **{"search.grid": {"model__C": [1e-5, 1.0]}})
    seen = []
    result = search(exp, small_spec, small_data.X, small_data.y, on_trial=lambda t, n, b: seen.append((t, n, b)))
    assert [t.params["model__C"] for t, _, _ in seen] == [1e-5, 1.0]
    assert all(n == 2 for _, n, _ in seen)
    best_auc = max(t.cv["cv_roc_auc_mean"] for t, _, _ in seen)
    assert result.best_cv["cv_roc_auc_mean"] == best_auc
    assert result.best_params == {"model__C": 1.0}
    assert 0 < result.best_cv["cv_roc_auc_std"] < 0.1


def test_bayesian_search_runs_the_trial_budget_reproducibly(small_spec, small_data) -> None:
    exp = small_experiment("logistic_bayes.yaml", **{"search.trials": 3})
    first = search(exp, small_spec, small_data.X, small_data.y)
    again = search(exp, small_spec, small_data.X, small_data.y)
    assert len(first.trials) == 3
    assert [t.params for t in first.trials] == [t.params for t in again.trials]
    assert set(first.trials[0].params) == set(exp.search.space)


def test_no_search_is_one_trial_of_the_fixed_params(small_spec, small_data) -> None:
    result = search(small_experiment(), small_spec, small_data.X, small_data.y)
    assert len(result.trials) == 1 and result.best_params == {}


@pytest.mark.slow
def test_best_model_comes_within_0015_of_the_bayes_limit() -> None:
    """On the default 150,000 generated rows (seed 42), the held-out AUC of the true probabilities is known."""
    spec = load_dataset_spec(DATASET_YAML)
    data = load_dataset(spec)
    split = split_data(data, 0.2, 42)
    bayes = roc_auc_score(split.y_test, data.true_probability[split.X_test.index])
    aucs = {}
    for name in ("logistic_baseline.yaml", "hist_gradient_boosting.yaml"):
        exp = small_experiment(name, search={"type": "none"})
        pipe = fit_final(exp, spec, {}, split.X_train, split.y_train)
        aucs[exp.family] = evaluate_on(pipe, split.X_test, split.y_test, exp.threshold)["test_roc_auc"]
    assert 0.84 < bayes < 0.89
    assert bayes - max(aucs.values()) < 0.015, (bayes, aucs)
    assert all(auc < bayes + 0.005 for auc in aucs.values())  # nobody beats the truth by more than noise
