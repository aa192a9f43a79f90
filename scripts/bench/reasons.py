"""Reason codes for tree models and categorical columns, in process, side by side (docs/performance.md).

Models are fitted in this process on `--rows` generated applicants of the flagship spec (80% to fit):
logistic (experiments/logistic_baseline.yaml), XGBoost with 300 trees of depth 6, HistGradientBoosting
with its defaults. The categorical spec is the flagship plus two text columns, `Purpose` (4 categories)
and `Housing` (3, sometimes missing), generated with an effect on default.

  latency   1-row calls of the served model's scoring (`model.pyfunc.Scoring`: input checks, the compiled
            scorer, reason codes and statements for the row; MLflow's schema check is left out) on held-out
            applicants: each family on the numeric spec and on the categorical spec, and the categorical spec
            on scikit-learn's preprocessing (`compile_scorer(fast=False)`, where it fell before). XGBoost also
            as it was fitted before categorical columns reached it as ordinal codes (native categorical
            splits, explained by path-dependent TreeSHAP). Variants interleaved call by call; medians per
            call, in ms; and each categorical model's held-out ROC AUC.
  reasons   per declined applicant (P(default) >= 0.2) of the held-out split (XGBoost and
            HistGradientBoosting on the numeric spec, XGBoost on the categorical one): the served contributions
            (baseline Shapley against the reference applicant) against path-dependent TreeSHAP (XGBoost's
            `pred_contribs`, shap's TreeExplainer), microseconds per row (medians of `--repeats` calls on all
            declined rows), and how often their reasons agree: same first reason, share of TreeSHAP's top 4
            among the served top 4.

    .venv/bin/python scripts/bench/reasons.py latency --rows 20000 --calls 300
    .venv/bin/python scripts/bench/reasons.py reasons --rows 20000 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = {
    "logistic": ("logistic_baseline.yaml", {}),
    "xgboost": ("xgboost_bayes.yaml", {"model__n_estimators": 300, "model__max_depth": 6}),
    "hist_gradient_boosting": ("hist_gradient_boosting.yaml", {}),
}
NATIVE = "xgboost, native categorical splits (before)"
CATEGORIES = {"Purpose": ["car", "education", "furniture", "business"], "Housing": ["own", "rent", "other"]}


def specs():
    from creditflow.specs import DatasetSpec, load_dataset_spec

    numeric = load_dataset_spec(ROOT / "experiments" / "datasets" / "give_me_some_credit.yaml")
    raw = numeric.model_dump()
    raw["columns"]["Purpose"] = {"name": "purpose", "group": "categorical", "nullable": False,
                                 "categories": CATEGORIES["Purpose"]}
    raw["columns"]["Housing"] = {"name": "housing", "group": "categorical", "categories": CATEGORIES["Housing"]}
    return numeric, DatasetSpec.model_validate(raw)


def data(spec, categorical, rows: int):
    """(train X, train y, held-out X, held-out y) of the numeric spec's generated data, with the categorical columns
    added."""
    from creditflow.data.dataset import coerce_columns, load_dataset, split_data

    spec = spec.model_copy(update={"generated": spec.generated.model_copy(update={"rows": rows})})
    credit = load_dataset(spec)
    rng = np.random.default_rng(3)
    y = credit.y.to_numpy()
    purpose = np.where(y & (rng.random(rows) < 0.3), "business", rng.choice(CATEGORIES["Purpose"], rows))
    housing = np.where(y & (rng.random(rows) < 0.3), "rent", rng.choice(CATEGORIES["Housing"], rows)).astype(object)
    housing[rng.random(rows) < 0.05] = None
    X = coerce_columns(credit.X.assign(Purpose=purpose, Housing=housing), categorical)
    split = split_data(dataclasses.replace(credit, X=X), 0.2, 0)
    return split.X_train, split.y_train, split.X_test, split.y_test


def native_splits(spec) -> dict:
    """XGBoost's parameters for native categorical splits on the ordinal codes, as the family was fitted before."""
    from creditflow.model.pipeline import tree_features

    categorical = set(spec.model_columns("categorical"))
    return {"model__enable_categorical": True,
            "model__feature_types": ["c" if c in categorical else "q" for c in tree_features(spec)]}


def fit(family: str, spec, X, y, extra: dict | None = None):
    from creditflow.model.artifact import model_config
    from creditflow.model.pipeline import build_pipeline
    from creditflow.model.pyfunc import Scoring
    from creditflow.specs import load_experiment_spec
    from creditflow.train.log_model import shap_reference

    name, params = FAMILIES[family]
    exp, _ = load_experiment_spec(ROOT / "experiments" / name)
    exp = exp.with_overrides(params={**exp.params, **params, **(extra or {})}, reason_codes_for="all")
    pipe = build_pipeline(exp, spec).fit(X[spec.raw_columns], y)
    reference = shap_reference(pipe, X, spec)
    return pipe, Scoring.build(pipe, spec, model_config(exp, spec, reference)), reference


def latency(rows: int, calls: int) -> None:
    from sklearn.metrics import roc_auc_score

    from creditflow.model.compiled import compile_scorer

    numeric, categorical = specs()
    X_train, y_train, X_test, y_test = data(numeric, categorical, rows)
    print("| family | numeric, compiled | categorical, compiled | categorical / numeric | "
          "categorical, scikit-learn (before) | categorical held-out ROC AUC |\n|---|---|---|---|---|---|")
    for family in FAMILIES:
        _, num, _ = fit(family, numeric, X_train[numeric.raw_columns], y_train)
        models = {family: fit(family, categorical, X_train, y_train)}
        if family == "xgboost":
            models[NATIVE] = fit(family, categorical, X_train, y_train, native_splits(categorical))
        variants = {"numeric": (num, numeric)}
        for label, (pipe, cat, reference) in models.items():
            slow = dataclasses.replace(cat, scorer=compile_scorer(
                pipe, categorical, None if reference is None else np.asarray(reference), fast=False))
            variants |= {(label, "compiled"): (cat, categorical), (label, "sklearn"): (slow, categorical)}
        times: dict = {v: [] for v in variants}
        for i in range(calls):
            row = X_test.iloc[[i % len(X_test)]]
            for name, (scoring, spec) in variants.items():
                frame = row[spec.raw_columns]
                start = time.perf_counter()
                scoring(frame)
                times[name].append(time.perf_counter() - start)
        ms = {v: statistics.median(t) * 1e3 for v, t in times.items()}
        for label, (pipe, _, _) in models.items():
            auc = roc_auc_score(y_test, pipe.predict_proba(X_test[categorical.raw_columns])[:, 1])
            cat, slow = ms[(label, "compiled")], ms[(label, "sklearn")]
            print(f"| {label} | {ms['numeric']:.2f} | {cat:.2f} | {cat / ms['numeric']:.2f} | {slow:.2f} | "
                  f"{auc:.4f} |")


def reasons(rows: int, repeats: int) -> None:
    from creditflow.model.compiled import compile_scorer
    from creditflow.model.inputs import applicant_matrix
    from creditflow.model.reasons import reason_sets

    numeric, categorical = specs()
    X_train, y_train, X_test, _ = data(numeric, categorical, rows)
    print("| family | reference | declined rows | TreeSHAP us/row | baseline us/row | speed-up | same first reason | "
          "top-4 overlap |\n|---|---|---|---|---|---|---|---|")
    for family, spec in (("xgboost", numeric), ("hist_gradient_boosting", numeric), ("xgboost", categorical)):
        pipe, served, _ = fit(family, spec, X_train[spec.raw_columns], y_train)
        label = family if spec is numeric else f"{family} (categorical spec)"
        path_dependent = compile_scorer(pipe, spec, None)
        Z = served.scorer.transform(applicant_matrix(X_test, spec, served.scorer.codes))
        Z = Z[served.scorer.probability_of(Z) >= 0.2]
        Z_train = served.scorer.transform(applicant_matrix(X_train, spec, served.scorer.codes))
        best = Z_train[np.argmin(served.scorer.probability_of(Z_train))]  # a scorecard's "best attainable"
        baselines = {"mean applicant (served)": served.scorer, "lowest-risk applicant": compile_scorer(
            pipe, spec, best)}
        theirs = path_dependent.raw_contributions(Z)
        for reference, baseline in baselines.items():
            timed: dict[str, list[float]] = {"tree_shap": [], "baseline": []}
            for r in range(repeats):
                order = [("tree_shap", path_dependent), ("baseline", baseline)]
                for name, scorer in order if r % 2 == 0 else order[::-1]:
                    start = time.perf_counter()
                    scorer.raw_contributions(Z)
                    timed[name].append((time.perf_counter() - start) / len(Z) * 1e6)
            ours = baseline.raw_contributions(Z)
            first = np.mean(ours.argmax(axis=1) == theirs.argmax(axis=1))
            top = [[set(sets[i]) for i in which] for sets, which in (reason_sets(ours, 4), reason_sets(theirs, 4))]
            overlap = np.mean([len(a & b) / max(len(b), 1) for a, b in zip(*top, strict=True)])
            us = {k: statistics.median(v) for k, v in timed.items()}
            print(f"| {label} | {reference} | {len(Z)} | {us['tree_shap']:.0f} | {us['baseline']:.0f} | "
                  f"{us['tree_shap'] / us['baseline']:.1f}x | {first:.1%} | {overlap:.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["latency", "reasons"])
    parser.add_argument("--rows", type=int, default=20_000, help="generated applicants (80%% fit, 20%% scored)")
    parser.add_argument("--calls", type=int, default=300, help="latency: 1-row calls per variant")
    parser.add_argument("--repeats", type=int, default=3, help="reasons: timed calls per variant")
    args = parser.parse_args()
    latency(args.rows, args.calls) if args.what == "latency" else reasons(args.rows, args.repeats)


if __name__ == "__main__":
    main()
