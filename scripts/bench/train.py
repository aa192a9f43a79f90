"""Training time: where it goes on the default 150,000 generated rows, and a model per segment against the global
model alone.

Stages (the default): load, CV, fit and each explanation artifact, per family, on 150,000 generated rows.
Segments (issue 17, "Speed": 150,000 rows, 20 regions, 2 cores): each repeat trains, in a fresh SQLite tracking store,
the global model alone (one training run, as `creditflow train` does) and the segmented experiment
(experiments/segmented.yaml: the global model and every segment's, `segments.workers` worker processes of one thread
each, as `creditflow segments` trains them; registry decisions left out), one after the other, the order alternating
from repeat to repeat. It prints both wall times and their ratio, the global run's and the segment runs' own seconds
inside the segmented training, and the load average. A small untimed run warms this process up first.

Usage: .venv/bin/python scripts/bench/train.py [--families logistic xgboost] [--repeats 3]
       .venv/bin/python scripts/bench/train.py --segments 20 [--rows 150000] [--family NAME] [--repeats 3]
Prints the median (min, max) of --repeats runs of each figure: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
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


def bench_segments(rows: int, segments: int, family: str | None, segmented_first: bool) -> dict[str, float]:
    """Wall time of the global model alone (one run) and of the global + every segment's (`train_segments`), each in
    a fresh store, in the order asked; the segmented training's own run times."""
    exp, ds = load_experiment_spec(ROOT / "experiments" / "segmented.yaml")
    ds = ds.model_copy(update={"generated": ds.generated.model_copy(update={"rows": rows, "segments": segments})})
    if family:
        exp = exp.with_overrides(family=family, params={})
    data = load_dataset(ds)
    alone_exp = exp.with_overrides(name=f"{exp.name}-global-alone", register_as=None)
    out: dict[str, float] = {}
    for which in (["segmented", "alone"] if segmented_first else ["alone", "segmented"]):
        with tempfile.TemporaryDirectory() as tmp, environ("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db"):
            mlflow.set_tracking_uri(None)  # from the variable, for this process and the workers
            if which == "alone":
                _, out["global alone (s)"] = timed(train_and_log, alone_exp, ds, data)
            else:
                training, out["global + segments (s)"] = timed(train_segments, exp, ds, data)
                out.update(run_seconds(training))
    out["ratio"] = out["global + segments (s)"] / out["global alone (s)"]
    return {k: out[k] for k in ("global alone (s)", "global + segments (s)", "ratio", "global run inside (s)",
                                "segment runs summed (s)", "segments trained")}


def warm_up(family: str | None) -> None:
    """One small training run, not timed: this process's first imports (explanations, plots) would count against
    whichever measurement came first. The segment workers are fresh processes: theirs count, as in real use."""
    exp, ds = load_experiment_spec(ROOT / "experiments" / "segmented.yaml")
    ds = ds.model_copy(update={"generated": ds.generated.model_copy(update={"rows": 5_000})})
    exp = exp.with_overrides(name="warm-up", register_as=None, **({"family": family, "params": {}} if family else {}))
    with tempfile.TemporaryDirectory() as tmp, environ("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db"):
        mlflow.set_tracking_uri(None)
        train_and_log(exp, ds, load_dataset(ds))


def run_seconds(training) -> dict[str, float]:
    """The segmented training's run durations: the global model's (one thread, beside the segments) and the segment
    runs' summed (the serial work the worker processes shared)."""
    client = mlflow.MlflowClient()

    def seconds(run_id: str) -> float:
        info = client.get_run(run_id).info
        return (info.end_time - info.start_time) / 1000

    done = [r for r in training.results[1:] if r.outcome]
    return {"global run inside (s)": seconds(training.results[0].outcome.run_id),
            "segment runs summed (s)": sum(seconds(r.outcome.run_id) for r in done), "segments trained": len(done)}


def print_medians(title: str, runs: list[dict[str, float]]) -> None:
    print(f"\n{title}, median of {len(runs)} run(s)")
    for stage in runs[0]:
        values = [r[stage] for r in runs]
        print(f"  {stage:<28} {statistics.median(values):8.2f}   (min {min(values):.2f}, max {max(values):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--families", nargs="+", default=["logistic", "xgboost"], choices=sorted(SPECS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--segments", type=int, default=0, help="time a model per segment instead (0: the stages)")
    parser.add_argument("--rows", type=int, default=150_000, help="with --segments: generated rows")
    parser.add_argument("--family", default="", help="with --segments: another family than segmented.yaml's")
    args = parser.parse_args()
    if args.segments:
        warm_up(args.family or None)
        load = os.getloadavg()
        runs = [bench_segments(args.rows, args.segments, args.family or None, segmented_first=i % 2 == 1)
                for i in range(args.repeats)]
        print_medians(f"{args.rows:,} rows, {args.segments} segments, {os.cpu_count()} cores (seconds)", runs)
        print(f"  load average (1, 5, 15 min): {' '.join(f'{x:.1f}' for x in load)} at the start, "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")
        return
    for family in args.families:
        print_medians(f"{family}: 150,000 rows (seconds)", [bench_family(family) for _ in range(args.repeats)])


if __name__ == "__main__":
    main()
