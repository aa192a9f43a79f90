"""Where training time goes on the default 150,000 generated rows: load, CV, fit, each explanation artifact.

Usage: .venv/bin/python scripts/bench/train.py [--families logistic xgboost] [--repeats 3]
Prints the median of --repeats runs per stage (the machine is shared: medians, not single runs).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from creditflow.data.dataset import load_dataset, split_data
from creditflow.specs import load_experiment_spec
from creditflow.train.explain import write_explanations
from creditflow.train.search import cross_validate_pipeline, fit_final

SPECS = {"logistic": "logistic_baseline.yaml", "xgboost": "xgboost_bayes.yaml",
         "hist_gradient_boosting": "hist_gradient_boosting.yaml"}
ROOT = Path(__file__).resolve().parents[2]


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def bench_family(family: str) -> dict[str, float]:
    exp, ds = load_experiment_spec(ROOT / "experiments" / SPECS[family])
    data, t_load = timed(load_dataset, ds)
    split = split_data(data, exp.test_size, exp.seed)
    from creditflow.model.pipeline import build_pipeline

    _, t_cv = timed(cross_validate_pipeline, build_pipeline(exp, ds), split.X_train, split.y_train, exp.cv_folds,
                    exp.seed)
    pipe, t_fit = timed(fit_final, exp, ds, {}, split.X_train, split.y_train)
    with tempfile.TemporaryDirectory() as tmp:
        figures = write_explanations(pipe, ds, exp.explain, split.X_test, split.y_test, Path(tmp))
    out = {"load": t_load, f"cv_{exp.cv_folds}_folds": t_cv, "fit": t_fit}
    out.update({k.removeprefix("explain_").removesuffix("_seconds"): v
                for k, v in figures.items() if k.endswith("_seconds")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["logistic", "xgboost"], choices=sorted(SPECS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for family in args.families:
        runs = [bench_family(family) for _ in range(args.repeats)]
        print(f"\n{family}: 150,000 rows, median of {args.repeats} runs (seconds)")
        for stage in runs[0]:
            values = [r[stage] for r in runs]
            print(f"  {stage:<28} {statistics.median(values):8.2f}   (min {min(values):.2f}, max {max(values):.2f})")


if __name__ == "__main__":
    main()
