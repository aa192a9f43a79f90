"""Training time of a model per segment against the global model alone (issue 17, "Speed": 150,000 rows, 20 regions).

Usage: .venv/bin/python scripts/bench/segments.py [--rows 150000] [--segments 20] [--repeats 1] [--family NAME]
Each repeat trains, in a fresh SQLite tracking store under a temporary folder, (1) the global model alone as one
training run (`train.run.train_and_log`) and (2) the segmented experiment (`train.segments.train_segments`: the
global model and every segment's, in parallel worker processes as `creditflow segments` does, registry decisions
left out). Prints medians: both wall times, their ratio, and the segment runs' summed seconds (the serial work).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import mlflow

from creditflow.data.dataset import load_dataset
from creditflow.scoped import environ
from creditflow.specs import load_experiment_spec
from creditflow.train.run import train_and_log
from creditflow.train.segments import train_segments

ROOT = Path(__file__).resolve().parents[2]


def bench_once(rows: int, segments: int, family: str | None) -> dict[str, float]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=150_000)
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1, help="each repeat trains everything twice: minutes each")
    parser.add_argument("--family", default="", help="another family than experiments/segmented.yaml's (its defaults)")
    args = parser.parse_args()
    runs = [bench_once(args.rows, args.segments, args.family or None) for _ in range(args.repeats)]
    print(f"\n{args.rows:,} rows, {args.segments} segments, median of {args.repeats} run(s)")
    for key in runs[0]:
        values = [r[key] for r in runs]
        print(f"  {key:<26} {statistics.median(values):9.2f}   (min {min(values):.2f}, max {max(values):.2f})")


if __name__ == "__main__":
    main()
