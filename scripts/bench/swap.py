"""`scripts/bench/serving.py --swap`: latency in steady state, around a hot swap, and with a shadow model.

Two `creditflow serve` endpoints of the same champion (`models:/NAME@champion`, following the alias every
second), one plain and one with `--shadow models:/NAME@challenger`. The champion's run is registered twice
(versions 1 and 2, the same model) so a swap loads a real second version. Per run, `wrk` posts 1-row
requests at the given concurrency for `seconds` to:
  steady  the plain endpoint, nothing moving;
  swap    the plain endpoint while @champion moves to the other version `seconds / 3` in (the worker
          downloads, loads, warms and swaps during the window; /health confirms the new version);
  shadow  the endpoint with the shadow on (the challenger scored on every request, off the response path).
Medians over `runs`; ratios swap/steady (p99) and shadow/steady (p50) side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests


def move_alias(name: str, version: str, after: float) -> threading.Thread:
    """Move @champion to `version` after `after` seconds, in a thread (wrk runs meanwhile)."""
    import mlflow

    def move() -> None:
        time.sleep(after)  # a point inside the load window, not a barrier
        mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)

    thread = threading.Thread(target=move, daemon=True)
    thread.start()
    return thread


def served_version(url: str) -> str:
    return requests.get(f"{url}/health", timeout=10).json()["model_version"]


def shadow_rows(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("creditflow_shadow_rows_total"))


def swap_bench(plain: str, shadowed: str, name: str, script: Path, args: argparse.Namespace,
               run_wrk: Callable[[str, Path, int, int], dict]) -> int:
    conc, seconds = args.concurrency[0], args.seconds
    print(f"\nswap: {args.runs} run(s) x {seconds} s per phase, 1-row requests at concurrency {conc}; medians")
    results: dict[str, list[dict]] = {"steady": [], "swap": [], "shadow": []}
    for url in (plain, shadowed):  # the first seconds of a fresh server are slower: not measured
        run_wrk(url, script, conc, 3)
    versions = ["2", "1"]
    for run in range(args.runs):
        results["steady"].append(run_wrk(plain, script, conc, seconds))
        before, target = served_version(plain), f"{name}/{versions[run % 2]}"
        mover = move_alias(name, versions[run % 2], seconds / 3)
        results["swap"].append(run_wrk(plain, script, conc, seconds))
        mover.join()
        after = served_version(plain)
        results["swap"][-1]["swapped"] = after == target and before != target
        results["shadow"].append(run_wrk(shadowed, script, conc, seconds))
        print(f"run {run + 1}: " + ", ".join(f"{phase} {rs[-1]['rps']:.0f} req/s p50 {rs[-1]['p50_ms']:.1f} ms "
                                             f"p99 {rs[-1]['p99_ms']:.1f} ms" for phase, rs in results.items()))
    compared = shadow_rows(shadowed)
    print(f"{'phase':<7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    med = {}
    for phase, rs in results.items():
        med[phase] = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms")}
        m = med[phase]
        print(f"{phase:<7} {m['rps']:>8.1f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} "
              f"{sum(r['errors'] for r in rs):>6}")
    swapped = sum(r["swapped"] for r in results["swap"])
    print(f"swaps that happened inside the window: {swapped}/{args.runs}")
    print(f"swap/steady p99 x{med['swap']['p99_ms'] / med['steady']['p99_ms']:.2f} (goal <= 2); "
          f"shadow/steady p50 x{med['shadow']['p50_ms'] / med['steady']['p50_ms']:.2f} (goal <= 1.10); "
          f"shadow rows compared {compared:,.0f} of {sum(r['requests'] for r in results['shadow']):,} requests")
    errors = sum(r["errors"] for rs in results.values() for r in rs)
    return 0 if errors == 0 and swapped == args.runs else 1


def prepare_versions(ours_uri: str) -> str:
    """Register the champion's model again (version 2), alias v1 @champion and v2 @challenger; the model name."""
    import mlflow

    client = mlflow.MlflowClient()
    name, version = ours_uri.removeprefix("models:/").split("/")
    source = client.get_model_version(name, version)
    second = client.create_model_version(name, source.source, run_id=source.run_id, model_id=source.model_id)
    client.set_registered_model_alias(name, "champion", version)
    client.set_registered_model_alias(name, "challenger", str(second.version))
    return name


def shadow_config(tmp: Path) -> Path:
    path = tmp / "online-shadow.yaml"
    path.write_text(json.dumps({"shadow_window_seconds": 5}))
    return path
