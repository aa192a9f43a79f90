"""Drift monitor benchmark: what `drift_report` costs on top of reading the batch and scoring it.

For each size (generated applicants from another seed than the training data, one Parquet file):
  baseline  read the Parquet file (as doubles, the signature's type) and the loaded pyfunc's predict
            on its rows: what any check that scores the batch pays
  drift     `creditflow.monitor.drift_report`: model metadata, download, read, value rules, scoring,
            binning every column and the score against the training profile
Both run `--repeats` times in this process, alternating; the median of each and their ratio are
printed, with the process's peak resident memory after each size.

    .venv/bin/python scripts/bench/monitor.py                          # 100k and 1M rows (~2 min)
    .venv/bin/python scripts/bench/monitor.py --sizes 5000000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def prepare_model(rows: int) -> str:
    """Train the course logistic baseline on `rows` generated rows; its registered version's URI."""
    from creditflow.data.dataset import load_dataset
    from creditflow.specs import load_experiment_spec
    from creditflow.train.run import train_and_log

    exp, ds = load_experiment_spec(ROOT / "experiments" / "logistic_baseline.yaml")
    exp = exp.with_overrides(**{"explain.enabled": False, "cv_folds": 2})
    ds = ds.model_copy(update={"generated": ds.generated.model_copy(update={"rows": rows})})
    outcome = train_and_log(exp, ds, load_dataset(ds))
    return f"models:/{exp.register_as}/{outcome.registered_version}"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-rows", type=int, default=150_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="creditflow-bench-monitor-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        os.chdir(tmp)
        import mlflow
        import pandas as pd

        from creditflow.data.synthetic import generate_credit_data
        from creditflow.monitor.drift import drift_report

        model_uri = prepare_model(args.train_rows)
        model = mlflow.pyfunc.load_model(model_uri)
        columns = model.metadata.get_input_schema().input_names()
        for size in [int(s) for s in args.sizes.split(",")]:
            path = Path(tmp) / f"applicants-{size}.parquet"
            generate_credit_data(size, seed=99).frame.to_parquet(path, index=False)
            base, drift = [], []
            for _ in range(args.repeats):
                base.append(timed(lambda p=path: model.predict(pd.read_parquet(p, columns=columns).astype(float))))
                drift.append(timed(lambda p=path: drift_report(model_uri, p)))
            b, d = statistics.median(base), statistics.median(drift)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{size:>9,} rows  baseline {b:6.2f} s ({size / b:>10,.0f} rows/s)  drift {d:6.2f} s "
                  f"({size / d:>10,.0f} rows/s)  drift/baseline {d / b:4.2f}x  peak RSS {peak:,.0f} MB  "
                  f"(medians of {args.repeats}; runs: baseline {', '.join(f'{x:.2f}' for x in base)}; "
                  f"drift {', '.join(f'{x:.2f}' for x in drift)})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
