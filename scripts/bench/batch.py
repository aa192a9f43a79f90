"""Batch scoring benchmark: in-process pyfunc, stock spark_udf, our spark_udf, our batch job end to end.

For each input size (generated applicants, Parquet in 100,000-row row groups) and champion
(scripts/bench/champions.py: the logistic baseline; XGBoost, 300 trees of depth 6; HistGradientBoosting tuned as
`make demo` tunes it; categorical-FAMILY, that family on the categorical spec, whose input file also holds its three
text columns), all logged with `reason_codes_for: declined` (adverse-action reasons for declined applicants):
  inproc  the loaded pyfunc's predict on the whole frame, in a child process (the in-process
          reference); also read + predict + write Parquet
  noop    Spark reading and writing the same Parquet, no UDF at all
  floor   a pandas UDF over the same columns that hands one back (no model): what any UDF costs, Spark's own
          floor; our UDF's cost is printed as a ratio of it (seconds and CPU seconds)
  stock   `spark_udf` of the plain scikit-learn-flavour model (`pyfunc_predict_fn="predict_proba"`,
          P(default) = element 1), 10,000-row Arrow batches (logistic only)
  ours    `spark_udf` of our pyfunc (probability, decision, reason codes struct), our Arrow batch size,
          written as the job writes its Parquet (`scored_parquet_options`)
  job     `creditflow.serving.batch.job.run_batch`: read, value rules, quarantine, score, Parquet and SQLite table;
          after the phases above, `--repeats` times, each into a new output (a first load, not a rerun)
Spark phases run in one child process per size and input file (a fresh JVM, so memory peaks belong to that size;
the categorical champions' file has its own noop and floor rows);
Spark start-up is timed on its own. UDF and job phases run `--repeats` times: the first run is
reported as cold, the median of the others as warm. Peak resident memory is sampled every 0.2 s for the Python
driver, the JVM and the Python workers. At the end: rows/s, the ratios, and the issue's goals.

    .venv/bin/python scripts/bench/batch.py                                   # 1M and 5M rows (~40 min)
    .venv/bin/python scripts/bench/batch.py --sizes 200000 --families logistic --repeats 2   # a quick look
    .venv/bin/python scripts/bench/batch.py --segments 20 --sizes 1000000   # routed to 20 models vs one

`--segments N` (scripts/bench/segmented.py) runs only the batch job, on the input with a Region column: with
the global model alone, then routed to N segment models and the global one (one Spark job), `--repeats` times each.

    .venv/bin/python scripts/bench/batch.py --quick            # a few hundred rows per family: does it work
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import champions  # scripts/bench/champions.py, beside this file
import segmented  # scripts/bench/segmented.py, beside this file

ROOT = Path(__file__).resolve().parents[2]
RESULT = "RESULT "
STOCK_ARROW_ROWS = 10_000
GOALS = {"logistic": 250_000, "trees": 100_000}  # the job's rows/s at 5M (issue 20)


# ---------------------------------------------------------------- set-up (parent)


def prepare_models(work: Path, families: list[str], train_rows: int, quick: bool = False) -> dict[str, str]:
    """Train each champion once (explanations off) into a store under `work`; log the stock sklearn model."""
    import mlflow
    from mlflow.models import infer_signature

    trained = champions.train(families, train_rows, work, "declined", quick=quick)
    models = {name: trained[name].uri for name in families}
    if "logistic" in families:
        pipe = mlflow.pyfunc.load_model(models["logistic"]).unwrap_python_model().pipeline
        X = trained["logistic"].held_out
        with mlflow.start_run(run_name="stock-sklearn"):
            info = mlflow.sklearn.log_model(
                pipe, name="model", pyfunc_predict_fn="predict_proba",
                signature=infer_signature(X.head(200), pipe.predict_proba(X.head(200))),
                skops_trusted_types=["numpy.dtype", "creditflow.model.pipeline.CreditFeatures"],
                registered_model_name="credit-default-stock",
            )
        models["stock"] = f"models:/credit-default-stock/{info.registered_model_version}"
    return models


def write_input(path: Path, rows: int, chunk: int = 250_000, categorical: bool = False) -> None:
    """Generated applicants (no target), written chunk by chunk: the parent never holds them all.

    `categorical`: with the categorical spec's text columns too (scripts/bench/champions.py)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from creditflow.data.synthetic import ID_COLUMN, TARGET, generate_credit_data

    writer = None
    for start in range(0, rows, chunk):
        frame = generate_credit_data(min(chunk, rows - start), seed=1000 + start // chunk).frame
        if categorical:
            frame = champions.with_categories(frame, frame[TARGET], seed=2000 + start // chunk)
        frame = frame.drop(columns=[TARGET])
        frame[ID_COLUMN] = frame[ID_COLUMN] + start
        frame = frame.astype({c: "float64" for c in frame.columns if c != ID_COLUMN and c not in champions.CATEGORIES})
        table = pa.Table.from_pandas(frame, preserve_index=False)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=100_000)
    writer.close()


def child(phase: str, **kwargs: object) -> dict:
    """Run a phase of this script in a fresh Python process; its last RESULT line is the answer."""
    cmd = [sys.executable, __file__, "--phase", phase, "--args", json.dumps(kwargs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = Path.cwd() / f"{phase}-{kwargs.get('model', '').split('/')[-1] or 'spark'}-{time.time():.0f}.log"
    log.write_text(proc.stdout + proc.stderr)  # the job's own progress lines, for reading after
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"error: phase {phase} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(RESULT):])


# ---------------------------------------------------------------- phases (children)


def phase_inproc(data: str, model: str, out: str) -> dict:
    """The in-process reference: the loaded pyfunc on the whole frame."""
    import mlflow
    import pandas as pd

    pyfunc = mlflow.pyfunc.load_model(model)
    t0 = time.perf_counter()
    frame = pd.read_parquet(data)
    t1 = time.perf_counter()
    scored = pyfunc.predict(frame.drop(columns=["Id"]))
    t2 = time.perf_counter()
    scored.assign(Id=frame["Id"].to_numpy()).to_parquet(out, index=False)
    t3 = time.perf_counter()
    return {"rows": len(frame), "predict_s": t2 - t1, "end_to_end_s": t3 - t0,
            "coded_share": float((scored.reason_codes.str.len() > 0).mean()),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


class MemorySampler:
    """Peak RSS of this process (the driver), its JVM and the JVM's Python workers, per phase."""

    def __init__(self) -> None:
        self.peaks = {"driver": 0.0, "jvm": 0.0, "workers": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import os

        while not self._stop.wait(0.2):
            now = {"driver": 0.0, "jvm": 0.0, "workers": 0.0}
            for pid, depth, name in _tree(os.getpid()):
                kind = "driver" if depth == 0 else "jvm" if name == "java" else "workers" if "python" in name else ""
                if kind:
                    now[kind] += _rss_mb(pid)
            for k, v in now.items():
                self.peaks[k] = max(self.peaks[k], v)


def _tree(root: int) -> list[tuple[int, int, str]]:
    out, todo = [], [(root, 0)]
    while todo:
        pid, depth = todo.pop()
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            children = [c for task in Path(f"/proc/{pid}/task").iterdir()  # the JVM forks from other threads
                        for c in (task / "children").read_text().split()]
        except OSError:
            continue
        out.append((pid, depth, name))
        todo += [(int(c), depth + 1) for c in children]
    return out


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu_seconds() -> dict[str, float]:
    """CPU time (user + system) of this process, its JVM and the Python workers: robust on a busy machine.

    Each process counts its reaped children too: a Python worker that exits between two readings stays counted
    (through the PySpark daemon that reaps it)."""
    import os

    total = {"driver": 0.0, "jvm": 0.0, "workers": 0.0}
    for pid, depth, name in _tree(os.getpid()):
        kind = "driver" if depth == 0 else "jvm" if name == "java" else "workers"
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total[kind] += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
        except OSError:
            pass
    return total


def _timed(fn, repeats: int) -> dict:
    with MemorySampler() as memory:
        seconds, cpu = [], []
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            fn()
            seconds.append(time.perf_counter() - start)
            cpu_end = _cpu_seconds()
            cpu.append({k: cpu_end[k] - cpu_start[k] for k in cpu_end})
    warm = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    warm_cpu = {k: statistics.median(c[k] for c in (cpu[1:] or cpu)) for k in cpu[0]}
    return {"cold_s": seconds[0], "warm_s": warm, "warm_cpu_s": sum(warm_cpu.values()), "warm_cpu": warm_cpu,
            "memory_mb": memory.peaks}


def _passthrough_udf():
    """A pandas UDF handing its first input column back: Spark's and Arrow's share of any UDF scoring."""
    from collections.abc import Iterator

    import pandas as pd
    from pyspark.sql.functions import pandas_udf

    def passthrough(batches):
        for columns in batches:
            yield columns[0]

    # PySpark picks the UDF kind from the type hints; this module's `annotations` import would make them text
    passthrough.__annotations__ = {"batches": Iterator[tuple[pd.Series, ...]], "return": Iterator[pd.Series]}
    return pandas_udf("double")(passthrough)


def phase_spark(data: str, models: dict[str, str], families: list[str], work: str, arrow_rows: int,
                repeats: int) -> dict:
    import mlflow
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    from pyspark.sql import functions as F

    from creditflow.registry.client import resolve_model
    from creditflow.serving.batch.columns import score_rows
    from creditflow.serving.batch.job import ROW_GROUP_BYTES, run_batch, scored_parquet_options
    from creditflow.serving.batch.plan import plan_batch
    from creditflow.serving.batch.spark import load_batch_config, start_spark

    work_dir = Path(work)
    start = time.perf_counter()
    config = load_batch_config(ROOT / "serving" / "batch" / "job.yaml", master="local[2]", arrow_batch_rows=arrow_rows)
    spark = start_spark(config)  # the job's shipped settings, on two cores
    results: dict = {"spark_start_s": time.perf_counter() - start}
    df = spark.read.parquet(data)
    rows = df.count()
    cols = [c for c in df.columns if c != "Id"]  # the floor hands the first back: a number
    results["rows"] = rows

    def write(frame, name: str, options: dict[str, str] | None = None) -> None:
        # row groups as the job writes them (default 128 MB): a writer buffers one, so it bounds memory per task
        options = options or {"parquet.block.size": ROW_GROUP_BYTES}
        frame.write.mode("overwrite").options(**options).parquet(str(work_dir / name))

    results["noop"] = _timed(lambda: write(df, "noop"), repeats)
    floor = _passthrough_udf()
    results["floor"] = _timed(lambda: write(df.select("Id", floor(*cols).alias("probability")), "floor"), repeats)
    if "stock" in models:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(STOCK_ARROW_ROWS))
        stock = mlflow.pyfunc.spark_udf(spark, models["stock"], result_type="array<double>", env_manager="local")
        results["stock"] = _timed(
            lambda: write(df.select("Id", stock(F.struct(*cols))[1].alias("probability")), "stock"), repeats)
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(arrow_rows))
    for family in families:
        # our scoring step as the job runs it, without the job around it; the UDF made once, as for stock
        ours = score_rows(spark, df, resolve_model(models[family]), [F.col("Id").alias("applicant_id")])
        results[f"ours_{family}"] = _timed(lambda ours=ours: write(ours, "ours", scored_parquet_options()), repeats)
        for i in range(repeats):  # a --work directory used before holds them: the runs would replace batches
            shutil.rmtree(work_dir / f"job-{family}-{i}", ignore_errors=True)
        outputs = (work_dir / f"job-{family}-{i}" for i in range(repeats))  # new each run: a first load, not a rerun
        job = _timed(lambda model=models[family], outputs=outputs: run_batch(
            spark, plan_batch(model, data, next(outputs), batch_id="bench"), progress_seconds=30), repeats)
        scored = pads.dataset(work_dir / f"job-{family}-0" / "scored", partitioning="hive").to_table(
            columns=["reason_codes"])
        job["coded_share"] = pc.mean(pc.not_equal(scored["reason_codes"], "[]")).as_py()  # JSON text
        results[f"job_{family}"] = job
    spark.stop()
    return results


def phase_segments(data: str, model: str, deployment: str, work: str, repeats: int) -> dict:
    """The batch job with one model, then routed by the deployment: the same rows, each run into a new output."""
    from creditflow.serving.batch.job import run_batch
    from creditflow.serving.batch.plan import plan_batch
    from creditflow.serving.batch.spark import load_batch_config, start_spark
    from creditflow.serving.segments import load_deployment

    spark = start_spark(load_batch_config(ROOT / "serving" / "batch" / "job.yaml", master="local[2]"))
    routes = {"one": {"model_uri": model}, "routed": {"model_uri": "", "deployment": load_deployment(deployment)}}
    results = {}
    for name, how in routes.items():
        outputs = (Path(work) / f"{name}-{i}-{time.time_ns()}" for i in range(repeats))
        results[name] = _timed(lambda how=how, outputs=outputs: run_batch(
            spark, plan_batch(how["model_uri"], data, next(outputs), batch_id="bench",
                              deployment=how.get("deployment")), progress_seconds=30), repeats)
    spark.stop()
    return results


def segments_main(args: argparse.Namespace, work: Path, sizes: list[int]) -> int:
    models = prepare_models(work, ["logistic"], args.train_rows)
    deployment = segmented.prepare_segments(args.segments, args.train_rows, models["logistic"], work)
    print(f"\nbatch job: {args.segments} segment models + the global one (routed, one Spark job) vs the global "
          f"model alone; cold = first run, warm = median of the others")
    for size in sizes:
        data = work / f"applicants-{size}.parquet"
        if not data.exists():
            write_input(data, size)
        routed = segmented.add_regions_to_input(data, args.segments)
        r = child("segments", data=str(routed), model=models["logistic"], deployment=str(deployment),
                  work=str(work / f"segments-{size}"), repeats=args.repeats)
        for name in ("one", "routed"):
            print(f"{size:>10,} {name:<7} cold {r[name]['cold_s']:7.1f} s  warm {r[name]['warm_s']:7.1f} s  "
                  f"{size / r[name]['warm_s']:>10,.0f} rows/s")
        print(f"{size:>10,} routed / one = x{r['routed']['warm_s'] / r['one']['warm_s']:.2f} in time (goal <= 1.3)")
    return 0


# ---------------------------------------------------------------- report


def _split(cpu: dict[str, float]) -> str:
    return "/".join(f"{cpu[k]:.1f}" for k in ("driver", "jvm", "workers")) if cpu else ""


def _groups(runs_at_size: dict, families: list[str]) -> list[tuple[str, dict, list[str]]]:
    """(input, its Spark phases, its families): the flagship's file, then the categorical spec's."""
    numeric = [f for f in families if not f.startswith(champions.CATEGORICAL)]
    categorical = [f for f in families if f.startswith(champions.CATEGORICAL)]
    return [(label, runs_at_size[key], group) for label, key, group in (
        ("flagship input", "spark", numeric), ("categorical input", "spark_categorical", categorical))
        if group and key in runs_at_size]


def report(sizes: list[int], families: list[str], runs: dict) -> None:
    print("\nrows/s (warm = median after the first run; cold = first run); peak MB driver/JVM/workers")
    print(f"{'size':>10} {'what':<40} {'cold s':>8} {'warm s':>8} {'rows/s':>12}  {'peak MB':>16} {'CPU s':>7}"
          f"  {'CPU s driver/JVM/workers':>24}")
    for size in sizes:
        inproc = runs[size]["inproc"]
        for label, spark, group in _groups(runs[size], families):
            print(f"{size:>10,} {'spark start-up (' + label + ')':<40} {spark['spark_start_s']:>8.1f}")
            for family in group:
                r = inproc[family]
                print(f"{size:>10,} {'inproc ' + family:<40} {'':>8} {r['predict_s']:>8.2f} "
                      f"{size / r['predict_s']:>12,.0f}  {r['peak_mb']:>16,.0f}")
                print(f"{size:>10,} {'  +read/write':<40} {'':>8} {r['end_to_end_s']:>8.2f} "
                      f"{size / r['end_to_end_s']:>12,.0f}")
            for key in ["noop", "floor", "stock", *[f"{k}_{f}" for f in group for k in ("ours", "job")]]:
                if key in spark:
                    r, m = spark[key], spark[key]["memory_mb"]
                    mem = f"{m['driver']:.0f}/{m['jvm']:.0f}/{m['workers']:.0f}"
                    what = f"{key} ({label})" if key in ("noop", "floor") else key
                    print(f"{size:>10,} {what:<40} {r['cold_s']:>8.1f} {r['warm_s']:>8.1f} "
                          f"{size / r['warm_s']:>12,.0f}  {mem:>16} {r['warm_cpu_s']:>7.1f}  "
                          f"{_split(r.get('warm_cpu', {})):>24}")
            for family in group:
                job = spark[f"job_{family}"]
                print(f"{size:>10,} {family}: reason codes on {job['coded_share']:.1%} of rows (declined only)")
    print("\nratios and goals (2 cores)")
    for size in sizes:
        for _, spark, group in _groups(runs[size], families):
            for family in group:
                ours, job = spark[f"ours_{family}"], spark[f"job_{family}"]
                inproc = runs[size]["inproc"][family]
                floor = spark["floor"]
                print(f"{size:>10,} {family}: our spark_udf / pass-through UDF = "
                      f"{ours['warm_s'] / floor['warm_s']:.2f}x in seconds, "
                      f"{ours['warm_cpu_s'] / floor['warm_cpu_s']:.2f}x in CPU seconds (goal <= 1.2x)")
                if "stock" in spark and family == "logistic":
                    ratio = spark["stock"]["warm_s"] / ours["warm_s"]
                    cpu = spark["stock"]["warm_cpu_s"] / ours["warm_cpu_s"]
                    print(f"{size:>10,} {family}: our spark_udf / stock spark_udf = {ratio:.2f}x in rows/s, "
                          f"{cpu:.2f}x in CPU seconds")
                goal = GOALS["logistic" if family.removeprefix(champions.CATEGORICAL) == "logistic" else "trees"]
                print(f"{size:>10,} {family}: job {size / job['warm_s']:,.0f} rows/s (goal >= {goal:,} at 5M); "
                      f"job / in-process predict = {inproc['predict_s'] / job['warm_s']:.2f}; "
                      f"job / Spark no-UDF read+write = {spark['noop']['warm_s'] / job['warm_s']:.2f}")
    if len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        for (_, a_spark, group), (_, b_spark, _) in zip(_groups(runs[small], families), _groups(runs[large], families),
                                                        strict=True):
            for family in group:
                a, b = a_spark[f"job_{family}"]["memory_mb"], b_spark[f"job_{family}"]["memory_mb"]
                growth = {k: b[k] / a[k] for k in a if a[k]}
                shown = ", ".join(f"{k} {v:.2f}x" for k, v in growth.items())
                print(f"job {family} peak memory {large:,} vs {small:,} rows: {shown} (goal <= 1.2x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,5000000", help="comma-separated row counts")
    parser.add_argument("--families", default="logistic,xgboost,hist_gradient_boosting,categorical-xgboost",
                        help="comma-separated champions (scripts/bench/champions.py; categorical-FAMILY)")
    parser.add_argument("--train-rows", type=int, default=30_000, help="generated rows each model is trained on")
    parser.add_argument("--arrow-rows", type=int, default=100_000, help="our Arrow batch size (rows)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each UDF phase (first = cold)")
    parser.add_argument("--work", default="", help="working directory (default: a temporary one)")
    parser.add_argument("--segments", type=int, default=0, help="only the job: routed to N segment models vs one")
    parser.add_argument("--quick", action="store_true", help="a few hundred rows per family: does it work")
    parser.add_argument("--phase", default="", help=argparse.SUPPRESS)
    parser.add_argument("--args", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        fn = {"inproc": phase_inproc, "spark": phase_spark, "segments": phase_segments}[args.phase]
        print(RESULT + json.dumps(fn(**json.loads(args.args))), flush=True)
        return 0
    if args.quick:
        args.sizes, args.train_rows, args.repeats = "400,600", 3000, 2

    import mlflow

    sizes = [int(s) for s in args.sizes.split(",")]
    families = [f for f in args.families.split(",") if f]
    unknown = champions.unknown(families)
    if unknown:
        raise SystemExit(f"error: unknown champion(s): {', '.join(unknown)} (families: "
                         f"{', '.join(champions.FAMILIES)}, or categorical-FAMILY)")
    work = Path(args.work or tempfile.mkdtemp(prefix="creditflow-bench-batch-")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    import os

    os.environ["MLFLOW_TRACKING_URI"] = store  # the child phases read the same store
    os.chdir(work)  # artifacts next to the store
    if args.segments:
        return segments_main(args, work, sizes)
    print(f"work directory {work}; training {', '.join(families)} on {args.train_rows:,} rows", flush=True)
    models = prepare_models(work, families, args.train_rows, args.quick)
    runs: dict = {}
    for size in sizes:
        runs[size] = {"inproc": {}}
        groups = [(kind, [f for f in families if f.startswith(champions.CATEGORICAL) == (kind == "categorical")])
                  for kind in ("flagship", "categorical")]
        for kind, group in groups:
            if not group:
                continue
            data = work / (f"applicants-{size}.parquet" if kind == "flagship" else f"categorical-{size}-in.parquet")
            if not data.exists():
                print(f"generating {size:,} applicants ({kind})", flush=True)
                write_input(data, size, categorical=kind == "categorical")
            print(f"[{size:,}] in-process reference ({kind})", flush=True)
            runs[size]["inproc"].update({f: child("inproc", data=str(data), model=models[f],
                                                  out=str(work / f"inproc-{f}.parquet")) for f in group})
            print(f"[{size:,}] Spark phases, {kind} input (fresh JVM)", flush=True)
            phase_models = {f: models[f] for f in group} | ({"stock": models["stock"]} if "stock" in models and
                                                             kind == "flagship" else {})
            runs[size]["spark" if kind == "flagship" else "spark_categorical"] = child(
                "spark", data=str(data), models=phase_models, families=group, work=str(work / f"spark-{kind}-{size}"),
                arrow_rows=args.arrow_rows, repeats=args.repeats)
        (work / "results.json").write_text(json.dumps(runs, indent=1))
    report(sizes, families, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
