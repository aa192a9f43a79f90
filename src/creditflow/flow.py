"""The `main` pipeline: load the data once, run one small experiment per family, report the best."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from creditflow.data import load_dataset
from creditflow.promotion import load_policy
from creditflow.registry import promote_best
from creditflow.specs import ExperimentSpec, load_experiment_spec
from creditflow.tracking import TrainingOutcome, check_tracking_server, train_and_log

PROMOTION_POLICY = "promotion.yaml"  # in the experiments folder
DEMO_SPECS = (
    "logistic_baseline.yaml",
    "logistic_bayes.yaml",
    "xgboost_bayes.yaml",
    "hist_gradient_boosting.yaml",
)


@dataclass(frozen=True)
class Budget:
    """Small budgets that keep the demo within minutes: trials and seconds per search, CV folds."""

    trials: int = 4
    cv_folds: int = 3
    search_seconds: float = 90.0  # a search starts no new trial after this (the first always runs)


def budgeted(exp: ExperimentSpec, budget: Budget) -> ExperimentSpec:
    changes: dict = {"cv_folds": budget.cv_folds}
    if exp.search.type == "bayesian":
        changes["search.trials"] = min(exp.search.trials, budget.trials)
        changes["search.timeout_seconds"] = budget.search_seconds
    return exp.with_overrides(**changes)


def run_main(experiments_dir: Path, data_path: str | None, budget: Budget) -> list[TrainingOutcome]:
    """Every demo experiment on the same data, the best promoted to @champion; returns outcomes best first."""
    specs = [load_experiment_spec(experiments_dir / name) for name in DEMO_SPECS]
    policy = load_policy(experiments_dir / PROMOTION_POLICY)
    check_tracking_server()
    data = load_dataset(specs[0][1], data_path)
    print(f"data: {len(data.X)} rows from {data.source} ({data.n_rule_violations} broke value rules)", flush=True)
    outcomes = []
    for exp, ds in specs:
        print(f"== {exp.name} ({exp.family}, {exp.search.type})", flush=True)
        outcomes.append(train_and_log(budgeted(exp, budget), ds, data))
    outcomes.sort(key=lambda o: o.cv["cv_roc_auc_mean"], reverse=True)
    print("\nexperiment               cv_roc_auc  test_roc_auc  test_ks  version")
    for o in outcomes:
        print(f"{o.experiment:<24} {o.cv['cv_roc_auc_mean']:.4f}      {o.test['test_roc_auc']:.4f}"
              f"        {o.test['test_ks']:.3f}    {o.registered_version or '-'}")
    name_of = {exp.name: exp.register_as for exp, _ in specs}
    registered = [o for o in outcomes if o.registered_version]
    if registered:  # best first to @champion through the gates; a refusal is printed, not raised
        name = name_of[registered[0].experiment]
        versions = [o.registered_version for o in registered if name_of[o.experiment] == name]
        print(f"\n== promotion of the best model ({registered[0].experiment}) to {name}@champion", flush=True)
        promote_best(name, versions, policy, data_path)
    return outcomes
