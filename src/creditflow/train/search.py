"""Choose hyper-parameters by cross-validation (fixed, grid or Optuna TPE), then fit and evaluate.

Pure functions of data and specs: no MLflow here. Each trial is reported through `on_trial`,
which the training run (`train.run`) turns into a nested run and a progress line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from sklearn.model_selection import ParameterGrid, StratifiedKFold, cross_val_predict, cross_validate
from sklearn.pipeline import Pipeline

from creditflow.model.calibration import Calibration, fit_calibration
from creditflow.model.pipeline import build_pipeline, predict_default
from creditflow.specs import CategoricalParam, DatasetSpec, ExperimentSpec, FloatParam, SearchParam
from creditflow.train.metrics import CV_SCORERS, evaluate


@dataclass(frozen=True)
class Trial:
    number: int
    params: dict[str, Any]
    cv: dict[str, float]
    seconds: float


@dataclass
class SearchResult:
    best_params: dict[str, Any]
    best_cv: dict[str, float]
    trials: list[Trial] = field(default_factory=list)


TrialCallback = Callable[[Trial, int, Trial], None]  # (trial, total, best so far)


def cross_validate_pipeline(pipe: Pipeline, X: pd.DataFrame, y: pd.Series, folds: int, seed: int) -> dict[str, float]:
    """Mean and std of each CV metric, as positive numbers (log loss and Brier: lower is better)."""
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_validate(pipe, X, y, cv=cv, scoring=dict(CV_SCORERS), n_jobs=1, error_score="raise")
    out = {}
    for name in CV_SCORERS:
        values = np.abs(scores[f"test_{name}"])
        out[f"cv_{name}_mean"] = float(values.mean())
        out[f"cv_{name}_std"] = float(values.std())
    out["cv_fit_seconds"] = float(np.sum(scores["fit_time"]))
    return out


def objective_key(exp: ExperimentSpec) -> tuple[str, bool]:
    """The CV metric the search optimises, and whether higher is better."""
    name = {"roc_auc": "roc_auc", "average_precision": "pr_auc", "neg_log_loss": "log_loss",
            "neg_brier_score": "brier"}[exp.metric]
    return f"cv_{name}_mean", exp.metric in ("roc_auc", "average_precision")


def _is_better(exp: ExperimentSpec, a: Trial, b: Trial | None) -> bool:
    key, higher = objective_key(exp)
    return b is None or (a.cv[key] > b.cv[key] if higher else a.cv[key] < b.cv[key])


def _run_trial(exp: ExperimentSpec, ds: DatasetSpec, X: pd.DataFrame, y: pd.Series, number: int,
               params: dict[str, Any]) -> Trial:
    start = time.perf_counter()
    cv = cross_validate_pipeline(build_pipeline(exp, ds, params), X, y, exp.cv_folds, exp.seed)
    return Trial(number, params, cv, time.perf_counter() - start)


def _suggest(trial: optuna.Trial, name: str, param: SearchParam) -> Any:
    if isinstance(param, CategoricalParam):
        return trial.suggest_categorical(name, list(param.choices))
    if isinstance(param, FloatParam):
        return trial.suggest_float(name, param.low, param.high, log=param.log)
    return trial.suggest_int(name, param.low, param.high, log=param.log)


@contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Optuna's per-trial INFO lines off for the block (its verbosity is process-wide: restored after)."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def search(exp: ExperimentSpec, ds: DatasetSpec, X: pd.DataFrame, y: pd.Series,
           on_trial: TrialCallback | None = None) -> SearchResult:
    """Cross-validate the candidates the search spec describes; return the best and every trial."""
    trials: list[Trial] = []
    best: Trial | None = None

    def record(trial: Trial, total: int) -> Trial:
        nonlocal best
        trials.append(trial)
        if _is_better(exp, trial, best):
            best = trial
        if on_trial:
            on_trial(trial, total, best)
        return trial

    kind = exp.search.type
    if kind == "none":
        record(_run_trial(exp, ds, X, y, 0, {}), 1)
    elif kind == "grid":
        grid = list(ParameterGrid({k: list(v) for k, v in exp.search.grid.items()}))
        for number, params in enumerate(grid):
            record(_run_trial(exp, ds, X, y, number, params), len(grid))
    else:
        key, higher = objective_key(exp)

        def objective(trial: optuna.Trial) -> float:
            params = {name: _suggest(trial, name, p) for name, p in exp.search.space.items()}
            return record(_run_trial(exp, ds, X, y, trial.number, params), exp.search.trials).cv[key]

        with _optuna_quiet():  # each trial is reported through on_trial instead
            study = optuna.create_study(direction="maximize" if higher else "minimize",
                                        sampler=optuna.samplers.TPESampler(seed=exp.search.seed))
            study.optimize(objective, n_trials=exp.search.trials, timeout=exp.search.timeout_seconds)
    assert best is not None
    return SearchResult(best.params, best.cv, trials)


def fit_final(exp: ExperimentSpec, ds: DatasetSpec, params: dict[str, Any], X: pd.DataFrame,
              y: pd.Series) -> Pipeline:
    """Refit the chosen configuration on the whole training split."""
    return build_pipeline(exp, ds, params).fit(X, y)


def fit_out_of_fold_calibration(exp: ExperimentSpec, ds: DatasetSpec, params: dict[str, Any], X: pd.DataFrame,
                                y: pd.Series) -> Calibration | None:
    """The experiment's calibration map, fitted on out-of-fold predictions of the training split (the held-out
    split is never seen), or None when the spec asks for none."""
    if exp.calibration == "none":
        return None
    cv = StratifiedKFold(n_splits=exp.cv_folds, shuffle=True, random_state=exp.seed)
    oof = cross_val_predict(build_pipeline(exp, ds, params), X, y, cv=cv, method="predict_proba", n_jobs=1)
    return fit_calibration(exp.calibration, oof[:, 1], y.to_numpy())


def evaluate_on(pipe: Pipeline, X: pd.DataFrame, y: pd.Series, threshold: float,
                calibration: Calibration | None = None) -> dict[str, float]:
    p = predict_default(pipe, X, calibration)
    return {f"test_{k}": v for k, v in evaluate(y.to_numpy(), p, threshold).items()}
