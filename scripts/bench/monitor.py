"""Monitor benchmarks. `--part drift` (default): what `drift_report` costs on top of reading the batch and scoring
it. `--part performance`: what `performance_report` costs on scored vintages whose outcomes are known.

For each size (generated applicants from another seed than the training data, one Parquet file):
  baseline  read the Parquet file (as doubles, the signature's type) and the loaded pyfunc's predict
            on its rows: what any check that scores the batch pays
  drift     `creditflow.monitor.drift_report`: model metadata, download, read, value rules, scoring,
            binning every column and the score against the training profile
Both run `--repeats` times in this process, alternating; the median of each and their ratio are
printed, with the process's peak resident memory after each size.

    .venv/bin/python scripts/bench/monitor.py                          # 100k and 1M rows (~2 min)
    .venv/bin/python scripts/bench/monitor.py --sizes 5000000 --repeats 3

Performance: `--vintages` months of `--vintage-rows` generated applicants (`creditflow data generate`, outcome
lag 1), scored once by the model and written as the batch job publishes them (scored/batch_id=YYYY-MM/); then
`performance_report` (read every batch and outcome file, join, bootstrap the intervals of every vintage) and
`log_performance` (a run per vintage and the chart), each timed `--repeats` times; peak RSS after.

    .venv/bin/python scripts/bench/monitor.py --part performance                  # 12 x 100,000 rows
    .venv/bin/python scripts/bench/monitor.py --part performance --vintages 2 --vintage-rows 2000 --repeats 1
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


def write_vintages(tmp: Path, model_uri: str, vintages: int, rows: int) -> tuple[Path, Path]:
    """Generated months scored by the model into the batch job's layout; (predictions dir, outcomes dir)."""
    import mlflow
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from creditflow.data.months import generate_months
    from creditflow.registry.client import resolve_model

    months = tmp / "months"
    names = generate_months(months, vintages, "2025-01", rows_per_month=rows, outcome_lag=1)
    ref, model = resolve_model(model_uri), mlflow.pyfunc.load_model(model_uri)
    for name in names:
        applicants = pd.read_csv(months / "applicants" / f"{name}.csv")
        p = model.predict(applicants[list(ref.columns)].astype(float))["probability"].to_numpy()
        part = tmp / "predictions" / "scored" / f"batch_id={name}"
        part.mkdir(parents=True)
        pq.write_table(pa.table({"applicant_id": applicants["Id"].astype(str), "probability": p,
                                 **{k: [v] * len(p) for k, v in ref.lineage.items()}}), part / "part-0.parquet")
    return tmp / "predictions", months / "outcomes"


def bench_performance(tmp: Path, model_uri: str, args: argparse.Namespace) -> None:
    from creditflow.data.calendar import add_months
    from creditflow.monitor.performance import log_performance, performance_report
    from creditflow.monitor.policy import load_monitoring_policy

    predictions, outcomes = write_vintages(tmp, model_uri, args.vintages, args.vintage_rows)
    policy = load_monitoring_policy(ROOT / "experiments" / "monitoring.yaml")
    as_of = add_months("2025-01", args.vintages)
    reports, logs = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        report = performance_report(predictions, outcomes, policy, as_of)
        reports.append(time.perf_counter() - start)
        logs.append(timed(lambda r=report: log_performance(r)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = args.vintages * args.vintage_rows
    print(f"{args.vintages} vintages x {args.vintage_rows:,} rows ({rows:,} with outcomes, {policy.bootstrap_samples} "
          f"bootstrap samples): report {statistics.median(reports):6.2f} s, MLflow logging "
          f"{statistics.median(logs):5.2f} s, peak RSS {peak:,.0f} MB (medians of {args.repeats}; runs: report "
          f"{', '.join(f'{x:.2f}' for x in reports)}; logging {', '.join(f'{x:.2f}' for x in logs)})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("drift", "performance"), default="drift")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-rows", type=int, default=150_000)
    parser.add_argument("--vintages", type=int, default=12)
    parser.add_argument("--vintage-rows", type=int, default=100_000)
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
        if args.part == "performance":
            bench_performance(Path(tmp), model_uri, args)
            return 0
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
