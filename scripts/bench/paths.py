"""Special paths side by side: each scoring path with and without, alternating in one run (docs/performance.md).

Models: the HistGradientBoosting family (experiments/hist_gradient_boosting.yaml, no search: the
estimator's defaults, inside the search space) and the logistic baseline, each trained once on
`--train-rows` generated applicants, explanations off, `reason_codes_for: declined` (as
scripts/bench/batch.py logs them).

  online  in-process `predict` of the loaded pyfunc (MLflow's schema check included) on 1-row and
          100-row frames of generated applicants, and on one 100,000-row frame (an Arrow batch of the
          batch job), with reason codes for every row (the experiments' `reason_codes_for: all`):
          the compiled scorer against scikit-learn's preprocessing (`compile_scorer(fast=False)`).
          Variants alternate call block by call block; medians per call.
  batch   `run_batch` end to end (read, rules, score, Parquet, SQLite) on `--rows` generated
          applicants, in one Spark session on 2 cores. Variants, in rotation, each run into a new
          output: the batch model-config overrides (BATCH_CONFIG) as shipped; the same without one
          override; and with scikit-learn's preprocessing in the workers (a sitecustomize on the
          workers' PYTHONPATH reads a flag file at each model load).
          Wall seconds, CPU seconds (driver/JVM/workers) and peak RSS per run; medians of
          `--repeats` runs after one warm-up round.

    .venv/bin/python scripts/bench/paths.py online                        # ~3 min
    .venv/bin/python scripts/bench/paths.py batch --rows 500000 --repeats 5    # ~10 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))

FAMILIES = {
    "hist_gradient_boosting": ("hist_gradient_boosting.yaml", {"search.type": "none"}),
    "logistic": ("logistic_baseline.yaml", {}),
}
FLAG_ENV = "CREDITFLOW_BENCH_SCORER_FLAG"
SITECUSTOMIZE = '''
import importlib.util, os, sys

_flag = os.environ.get("FLAG_ENV")


class _Hook:
    """After creditflow.model.pyfunc is imported, its compile_scorer asks the flag file for the path."""

    def find_spec(self, name, path, target=None):
        if name != "creditflow.model.pyfunc":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            original = module.compile_scorer

            def compile_scorer(pipe, ds, ref=None, fast=True):
                with open(_flag) as f:
                    sklearn = f.read().strip() == "sklearn"
                scorer = original(pipe, ds, ref, fast=fast and not sklearn)
                with open(_flag + ".loads", "a") as f:  # the parent checks each variant's loads used its scorer
                    f.write(("sklearn" if sklearn else "compiled") + "\\n")
                return scorer

            module.compile_scorer = compile_scorer

        spec.loader.exec_module = exec_module
        return spec

    def invalidate_caches(self):
        pass


if _flag:
    sys.meta_path.insert(0, _Hook())
'''.replace("FLAG_ENV", FLAG_ENV)


def prepare_models(families: list[str], train_rows: int) -> dict[str, str]:
    from creditflow.data.dataset import load_dataset
    from creditflow.specs import load_experiment_spec
    from creditflow.train.run import train_and_log

    models = {}
    for family in families:
        name, overrides = FAMILIES[family]
        exp, ds = load_experiment_spec(ROOT / "experiments" / name)
        exp = exp.with_overrides(**{"explain.enabled": False, "cv_folds": 2, "reason_codes_for": "declined",
                                    **overrides})
        ds = ds.model_copy(update={"generated": ds.generated.model_copy(update={"rows": train_rows})})
        outcome = train_and_log(exp, ds, load_dataset(ds))
        models[family] = f"models:/{exp.register_as}/{outcome.registered_version}"
    return models


def applicants(rows: int, seed: int):
    from creditflow.data.synthetic import ID_COLUMN, TARGET, generate_credit_data

    frame = generate_credit_data(rows, seed=seed).frame.drop(columns=[TARGET, ID_COLUMN])
    return frame.astype("float64")  # the signature's doubles, as a JSON request arrives


# ---------------------------------------------------------------- online


def online(models: dict[str, str], rounds: int) -> dict:
    import dataclasses

    import mlflow
    import numpy as np

    from creditflow.model.compiled import compile_scorer
    from creditflow.model.pyfunc import Scoring

    frame = applicants(100_000, seed=7)
    shapes = {"1 row": (1, 200), "100 rows": (100, 40), "100,000 rows": (100_000, 1)}  # rows, calls per block
    out: dict = {}
    for family, uri in models.items():
        pyfunc = mlflow.pyfunc.load_model(uri)
        model = pyfunc.unwrap_python_model()
        config = {**model.config, "reason_codes_for": "all"}
        compiled = Scoring.build(model.pipeline, model.dataset, config)
        ref = config.get("shap_reference")
        sklearn = dataclasses.replace(compiled, scorer=compile_scorer(
            model.pipeline, model.dataset, None if ref is None else np.asarray(ref), fast=False))
        variants = {"compiled": compiled, "sklearn": sklearn}
        model.scoring = compiled
        a = pyfunc.predict(frame.head(500))
        model.scoring = sklearn
        b = pyfunc.predict(frame.head(500))
        assert (abs(a.probability - b.probability) < 1e-9).all() and (a.decision == b.decision).all()
        results = {shape: {v: [] for v in variants} for shape in shapes}
        for r in range(rounds):
            for shape, (rows, calls) in shapes.items():
                for name, scoring in (variants.items() if r % 2 == 0 else reversed(variants.items())):
                    model.scoring = scoring
                    for i in range(calls):
                        start = (i * rows) % (len(frame) - rows + 1)
                        part = frame.iloc[start:start + rows]
                        t0 = time.perf_counter()
                        pyfunc.predict(part)
                        results[shape][name].append(time.perf_counter() - t0)
        out[family] = {shape: {name: statistics.median(times) * 1000 for name, times in per.items()}
                       for shape, per in results.items()}
        for shape, per in out[family].items():
            print(f"{family:<24} {shape:<13} compiled {per['compiled']:9.3f} ms  sklearn {per['sklearn']:9.3f} ms  "
                  f"sklearn/compiled {per['sklearn'] / per['compiled']:.2f}", flush=True)
    return out


# ---------------------------------------------------------------- batch


VARIANTS = {  # name: (BATCH_CONFIG keys left out, scorer); the paths removed since were measured the same way
    "shipped": ((), "compiled"),
    "reason codes as lists": (("reason_codes_as",), "compiled"),
    "sklearn scorer": ((), "sklearn"),
}


def _split(values: dict[str, float], digits: int) -> str:
    return "/".join(f"{values[k]:.{digits}f}" for k in ("driver", "jvm", "workers"))


def batch(models: dict[str, str], rows: int, repeats: int, work: Path, variants: list[str]) -> dict:
    import shutil

    from batch import MemorySampler, _cpu_seconds, write_input

    from creditflow.serving.batch import columns
    from creditflow.serving.batch.job import run_batch
    from creditflow.serving.batch.plan import plan_batch
    from creditflow.serving.batch.spark import load_batch_config, start_spark

    data = work / f"applicants-{rows}.parquet"
    if not data.exists():
        write_input(data, rows)
    flag = work / "scorer"
    flag.write_text("compiled")
    site = work / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    os.environ[FLAG_ENV] = str(flag)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))
    shipped = dict(columns.BATCH_CONFIG)
    spark = start_spark(load_batch_config(ROOT / "serving" / "batch" / "job.yaml", master="local[2]"))
    results: dict = {f: {v: [] for v in variants} for f in models}
    n = 0
    for r in range(repeats + 1):  # round 0 warms up (JVM, file cache, workers)
        for family, uri in models.items():
            order = variants if r % 2 == 0 else variants[::-1]
            for variant in order:
                left_out, scorer = VARIANTS[variant]
                columns.BATCH_CONFIG.clear()
                columns.BATCH_CONFIG.update({k: v for k, v in shipped.items() if k not in left_out})
                flag.write_text(scorer)
                out = work / f"out-{n}"
                n += 1
                before = _cpu_seconds()
                with MemorySampler() as memory:
                    t0 = time.perf_counter()
                    result = run_batch(spark, plan_batch(uri, data, out, batch_id="bench"), progress_seconds=600)
                    seconds = time.perf_counter() - t0
                after = _cpu_seconds()
                assert result.rows_scored + result.rows_quarantined == rows
                loads = Path(f"{flag}.loads")
                used = set(loads.read_text().split()) if loads.exists() else set()
                loads.unlink(missing_ok=True)
                assert used == {scorer}, (variant, used)
                cpu = {k: after[k] - before[k] for k in after}
                shutil.rmtree(out, ignore_errors=True)
                print(f"round {r} {family:<24} {variant:<24} {seconds:6.2f} s  CPU "
                      f"{_split(cpu, 2)}  peak MB {_split(memory.peaks, 0)}", flush=True)
                if r:
                    results[family][variant].append({"seconds": seconds, "cpu": cpu, "peak_mb": memory.peaks})
    columns.BATCH_CONFIG.clear()
    columns.BATCH_CONFIG.update(shipped)
    spark.stop()
    summary: dict = {}
    med = statistics.median
    for family, per in results.items():
        summary[family] = {}
        for variant, runs in per.items():
            summary[family][variant] = {
                "seconds": med(x["seconds"] for x in runs),
                "cpu": {k: med(x["cpu"][k] for x in runs) for k in ("driver", "jvm", "workers")},
                "cpu_total": med(sum(x["cpu"].values()) for x in runs),
                "peak_mb": {k: med(x["peak_mb"][k] for x in runs) for k in ("driver", "jvm", "workers")},
                "runs": [x["seconds"] for x in runs],
            }
    print(f"\nmedians of {repeats} runs, {rows:,} rows, 2 cores: wall s, CPU s (driver/JVM/workers), peak MB")
    for family, per in summary.items():
        base = per[variants[0]]
        for variant, s in per.items():
            print(f"{family:<24} {variant:<24} {s['seconds']:6.2f} s ({s['seconds'] / base['seconds']:.3f}) "
                  f"CPU {s['cpu_total']:6.2f} ({s['cpu_total'] / base['cpu_total']:.3f}) "
                  f"{_split(s['cpu'], 2)}  peak MB {_split(s['peak_mb'], 0)}")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["online", "batch"])
    parser.add_argument("--families", default="hist_gradient_boosting,logistic")
    parser.add_argument("--train-rows", type=int, default=30_000)
    parser.add_argument("--rows", type=int, default=1_000_000, help="batch: generated applicants")
    parser.add_argument("--repeats", type=int, default=4, help="batch: measured rounds; online: rounds")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="batch: comma-separated, first = reference")
    parser.add_argument("--work", default="", help="working directory (default: a temporary one)")
    parser.add_argument("--out", default="", help="write the medians as JSON here")
    args = parser.parse_args()

    import mlflow

    work = Path(args.work or tempfile.mkdtemp(prefix="creditflow-bench-paths-")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    store = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    os.environ["MLFLOW_TRACKING_URI"] = store
    families = [f for f in args.families.split(",") if f]
    print(f"work directory {work}; cpus {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}", flush=True)
    models = prepare_models(families, args.train_rows)
    if args.mode == "online":
        result = online(models, max(args.repeats, 2))
    else:
        result = batch(models, args.rows, args.repeats, work, [v for v in args.variants.split(",") if v])
    print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
