"""The segmented deployment's benchmarks (issue 17, "Speed"): shared by scripts/bench/serving.py and batch.py.

`prepare_segments` registers N segment models (the logistic baseline, each trained on its region's rows of the
generated data, Region added by pandas: row i is in region i % N) as credit-default-R01.. with @champion, puts
@champion on the global model, and writes the deployment file. `serving_bench` starts one endpoint serving the
global model alone and one serving the deployment, and compares start-up time, memory (RSS of the process tree)
and 1-row latency at concurrency 8 (wrk, runs alternating between the two); `batch.py --segments N` compares the
batch job routed against one model.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
COLUMN = "Region"


def regions(n: int) -> list[str]:
    return [f"R{i:02d}" for i in range(1, n + 1)]


def with_regions(frame, n: int):
    """The frame with a Region column: row i in region i % n."""
    return frame.assign(**{COLUMN: np.array(regions(n))[np.arange(len(frame)) % n]})


def prepare_segments(n: int, rows: int, global_uri: str, work: Path) -> Path:
    """N segment models registered with @champion, the global model @champion too; the deployment file's path."""
    import dataclasses

    import mlflow

    from creditflow.data.dataset import load_dataset
    from creditflow.specs import load_experiment_spec
    from creditflow.train.run import train_and_log

    client = mlflow.MlflowClient()
    name, version = global_uri.removeprefix("models:/").split("/")
    client.set_registered_model_alias(name, "champion", version)
    exp, ds = load_experiment_spec(ROOT / "experiments" / "logistic_baseline.yaml")
    exp = exp.with_overrides(**{"explain.enabled": False, "cv_folds": 2})
    ds = ds.model_copy(update={"generated": ds.generated.model_copy(update={"rows": rows})})
    data = load_dataset(ds)
    region = with_regions(data.X, n)[COLUMN].to_numpy()
    started = time.perf_counter()
    for segment in regions(n):
        keep = region == segment
        part = dataclasses.replace(data, X=data.X[keep], y=data.y[keep], ids=data.ids[keep], true_probability=None)
        model = f"{name}-{segment}"
        outcome = train_and_log(exp.with_overrides(register_as=model), ds, part)
        client.set_registered_model_alias(model, "champion", outcome.registered_version)
        for key, value in {"segment": segment, "segment_column": COLUMN, "global_model": name}.items():
            client.set_registered_model_tag(model, key, value)
    print(f"{n} segment models trained and registered in {time.perf_counter() - started:.0f} s", flush=True)
    path = work / "segments.yaml"
    path.write_text(yaml.safe_dump({"segments": {"column": COLUMN, "fallback": f"models:/{name}@champion",
                                                 "model": f"models:/{name}-{{segment}}@champion",
                                                 "values": regions(n)}}))
    return path


def serving_bench(n: int, global_uri: str, X, args, tmp: Path, run_wrk, tools) -> int:
    """One model vs the segmented deployment: start-up, RSS, 1-row p50/p99 at concurrency 8 (or the one
    --concurrency given); ratios. `tools`: serving.py's helpers (bodies, start, wait_ready, tree_rss_mb, ...).

    The servers start one after the other (each start-up timed alone), each gets 2 s of load not measured, then the
    load runs alternate between them (one, segmented, one, ...: a shared machine's drift falls on both) and the
    medians are compared."""
    concurrency = args.concurrency[0] if len(args.concurrency) == 1 else 8
    deployment = prepare_segments(n, args.train_rows, global_uri, tmp)
    one_body = tools.bodies(X, 1)
    routed = [json.dumps({"dataframe_split": {**(s := json.loads(b)["dataframe_split"]),
                                              "columns": [*s["columns"], COLUMN],
                                              "data": [[*row, regions(n)[i % n]] for row in s["data"]]}})
              for i, b in enumerate(one_body)]
    bin_ = tools.BIN
    commands = {"one": [str(bin_ / "creditflow"), "serve", "-m", global_uri],
                "segmented": [str(bin_ / "creditflow"), "serve", "--config", str(deployment)]}
    bodies = {"one": one_body, "segmented": routed}
    results: dict[str, dict] = {name: {"runs": []} for name in commands}
    endpoints = {}
    try:
        for name, cmd in commands.items():  # one at a time: each start-up is the server's alone
            port = tools.free_port()
            started = time.perf_counter()
            endpoints[name] = tools.start(name, [*cmd, "-p", str(port), "-w", str(args.workers)], port,
                                          tmp / f"{name}.log")
            tools.wait_ready([endpoints[name]])
            results[name]["startup_s"] = time.perf_counter() - started
        scripts = {}
        for name in commands:
            scripts[name] = tmp / f"{name}.lua"
            scripts[name].write_text(tools.LUA.replace("{BODIES}", "{" + ",".join(json.dumps(b) for b in bodies[name])
                                                       + "}"))
        for name in commands:  # a short warm-up each, not measured
            run_wrk(endpoints[name].url, scripts[name], concurrency, 2)
        for _ in range(args.runs):
            for name in commands:
                results[name]["runs"].append(run_wrk(endpoints[name].url, scripts[name], concurrency, args.seconds))
        for name, r in results.items():
            r.update({k: statistics.median(run[k] for run in r["runs"]) for k in ("rps", "p50_ms", "p99_ms")})
            r["errors"] = sum(run["errors"] for run in r["runs"])
            r["rss_mb"] = tools.tree_rss_mb(endpoints[name].proc.pid)
    finally:
        tools.stop(list(endpoints.values()))
    print(f"\n{n} segment models + the global one vs the global model alone; 1-row requests at concurrency "
          f"{concurrency}, {args.runs} run(s) x {args.seconds} s each, alternating (medians)")
    print(f"{'endpoint':<10} {'start-up s':>10} {'RSS MB':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for name, r in results.items():
        print(f"{name:<10} {r['startup_s']:>10.1f} {r['rss_mb']:>8.0f} {r['rps']:>8.1f} {r['p50_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {r['errors']:>6}")
    pairs = list(zip(results["one"]["runs"], results["segmented"]["runs"], strict=True))
    paired = {k: [seg[k] / one[k] for one, seg in pairs] for k in ("p50_ms", "p99_ms")}
    print("  each run's ratio (the two endpoints' runs back to back): "
          + ", ".join(f"p50 x{a:.2f} p99 x{b:.2f}" for a, b in zip(paired["p50_ms"], paired["p99_ms"], strict=True))
          + f"; their medians: p50 x{statistics.median(paired['p50_ms']):.2f}, "
            f"p99 x{statistics.median(paired['p99_ms']):.2f}")
    one, seg = results["one"], results["segmented"]
    print(f"segmented / one: RSS x{seg['rss_mb'] / one['rss_mb']:.2f} (goal <= 1.5), "
          f"p50 x{seg['p50_ms'] / one['p50_ms']:.2f}, p99 x{seg['p99_ms'] / one['p99_ms']:.2f} (goal within 1.2), "
          f"start-up x{seg['startup_s'] / one['startup_s']:.2f}; load average {os.getloadavg()[0]:.1f} "
          f"(1 min, at the end)")
    return 1 if one["errors"] or seg["errors"] else 0


def add_regions_to_input(path: Path, n: int) -> Path:
    """A copy of a batch input with a Region column (row i in region i % n), beside it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = path.with_name(f"{path.stem}-regions{n}.parquet")
    if out.exists():
        return out
    source = pq.ParquetFile(path)
    writer = None
    offset = 0
    for batch in source.iter_batches(batch_size=100_000):
        table = pa.Table.from_batches([batch])
        names = np.array(regions(n))[(np.arange(table.num_rows) + offset) % n]
        table = table.append_column(COLUMN, pa.array(names))
        writer = writer or pq.ParquetWriter(out, table.schema)
        writer.write_table(table, row_group_size=100_000)
        offset += table.num_rows
    writer.close()
    return out
