"""Where training time goes on the default 150,000 generated rows: load, CV, fit, each explanation artifact; and a
model per segment against the global model alone (issue 17, "Speed": 150,000 rows, 20 regions).

Usage: .venv/bin/python scripts/bench/train.py [--families logistic xgboost] [--repeats 3]
       .venv/bin/python scripts/bench/train.py --segments 20 [--rows 150000] [--family NAME] [--repeats 1]
Prints the median of --repeats runs per stage (the machine is shared: medians, not single runs). With --segments,
each repeat trains, in a fresh SQLite tracking store, the global model alone as one training run and then the
segmented experiment (experiments/segmented.yaml: the global model and every segment's, in parallel worker
processes); it prints both wall times, their ratio and the segment runs' summed seconds (the serial work).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import mlflow

from creditflow.data.dataset import load_dataset, split_data
from creditflow.scoped import environ
from creditflow.specs import load_experiment_spec
from creditflow.train.explain import write_explanations
from creditflow.train.run import train_and_log
from creditflow.train.search import cross_validate_pipeline, fit_final
from creditflow.train.segments import train_segments

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


def bench_segments(rows: int, segments: int, family: str | None) -> dict[str, float]:
    """Wall time of the global model alone (one run) and of the global + every segment's (`train_segments`, in parallel
    worker processes as `creditflow segments` trains them; registry decisions left out), each in a fresh store."""
    exp, ds = load_experiment_spec(ROOT / "experiments" / "segmented.yaml")
    ds = ds.model_copy(update={"generated": ds.generated.model_copy(update={"rows": rows, "segments": segments})})
    if family:
        exp = exp.with_overrides(family=family, params={})
    data = load_dataset(ds)
    with tempfile.TemporaryDirectory() as tmp, environ("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db"):
        mlflow.set_tracking_uri(None)  # from the variable, for this process and the workers
        start = time.perf_counter()
        train_and_log(exp.with_overrides(name=f"{exp.name}-global-alone", register_as=None), ds, data)
        alone = time.perf_counter() - start
        start = time.perf_counter()
        training = train_segments(exp, ds, data)
        together = time.perf_counter() - start
        client = mlflow.MlflowClient()
        serial = sum((client.get_run(r.outcome.run_id).info.end_time - client.get_run(r.outcome.run_id).info.start_time)
                     / 1000 for r in training.results[1:] if r.outcome)
        trained = sum(r.outcome is not None for r in training.results[1:])
    return {"global alone (s)": alone, "global + segments (s)": together, "ratio": together / alone,
            "segment runs summed (s)": serial, "segments trained": trained}


def print_medians(title: str, runs: list[dict[str, float]]) -> None:
    print(f"\n{title}, median of {len(runs)} run(s)")
    for stage in runs[0]:
        values = [r[stage] for r in runs]
        print(f"  {stage:<28} {statistics.median(values):8.2f}   (min {min(values):.2f}, max {max(values):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["logistic", "xgboost"], choices=sorted(SPECS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--segments", type=int, default=0, help="time a model per segment instead (0: the stages)")
    parser.add_argument("--rows", type=int, default=150_000, help="with --segments: generated rows")
    parser.add_argument("--family", default="", help="with --segments: another family than segmented.yaml's")
    args = parser.parse_args()
    if args.segments:
        runs = [bench_segments(args.rows, args.segments, args.family or None) for _ in range(args.repeats)]
        print_medians(f"{args.rows:,} rows, {args.segments} segments (seconds)", runs)
        return
    for family in args.families:
        print_medians(f"{family}: 150,000 rows (seconds)", [bench_family(family) for _ in range(args.repeats)])


if __name__ == "__main__":
    main()
