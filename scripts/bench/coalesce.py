"""`scripts/bench/serving.py --coalesce`: requests that arrive together scored in one call, on and off side by side.

For each champion (scripts/bench/champions.py, or the ones already in `--champions-from DIR`: DIR/uris.json
{family: models:/...}, DIR/<family>.parquet held-out rows, the store's MLFLOW_TRACKING_URI set by the caller) two
`creditflow serve` endpoints run at once, `-w W` each:
  on    the defaults (`coalesce: true`)
  off   `coalesce: false` (each request its own model call, as before)
beside the HTTP floor (scripts/bench/floor_app.py). `--code SRC ...` adds, per `src` folder (another checkout's), an
endpoint `on@SRC` running that folder's creditflow with the defaults: code against code, served side by side, the
CPU of each request (the server's processes' user + system CPU over the run, from /proc) beside its req/s. Each run
visits every endpoint in turn with `wrk` (1-row requests of held-out applicants) at every concurrency, the order
reversed every other run; medians over runs. Printed: req/s, p50, p99, errors, the share of the floor's req/s,
on/off, and for `on` the requests scored per model call (creditflow_requests_per_call from /metrics). In process:
the guard's per-request cost of 8 one-applicant requests scored one by one and together (the `Coalescer`'s own
path), medians of rounds alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import champions
import pandas as pd
import requests
from proctree import tree_cpu_seconds  # scripts/bench/proctree.py, beside this file

MODES = ("on", "off")


def modes(args: argparse.Namespace) -> list[str]:
    """The endpoints of each champion: on, off, and `on@SRC` per `--code` folder."""
    return [*MODES, *(f"on@{src}" for src in args.code)]


def per_call(url: str) -> tuple[float, float]:
    """(requests, model calls) counted by an endpoint's creditflow_requests_per_call histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{url}/metrics", timeout=10).text
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name in ("creditflow_requests_per_call_sum", "creditflow_requests_per_call_count")}
    return samples.get("creditflow_requests_per_call_sum", 0.0), samples.get("creditflow_requests_per_call_count", 0.0)


def in_process(uri: str, X: pd.DataFrame, rounds: int = 40) -> dict[str, float]:
    """Median us per request of 8 one-applicant requests: parsed, scored and written one by one, or together."""
    from creditflow.serving.coalesce import Coalescer
    from creditflow.serving.live import fetch
    from creditflow.serving.online import INLINE_ROWS, answered
    from creditflow.serving.requests import parse_body
    from serving import bodies

    loaded = fetch(uri)
    texts = [b.encode() for b in bodies(X[loaded.spec.raw_columns], 1, 8)]
    coalescer, loop = Coalescer(answered, INLINE_ROWS), asyncio.new_event_loop()

    async def together() -> list:
        return await asyncio.gather(*(coalescer.score(loaded, parse_body(t, "application/json", loaded.spec, 100))
                                      for t in texts))

    ways = {"alone": lambda: [answered(loaded, parse_body(t, "application/json", loaded.spec, 100)) for t in texts],
            "together": lambda: loop.run_until_complete(together())}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for r in range(rounds):
        for name in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
            start = time.perf_counter()
            ways[name]()
            times[name].append((time.perf_counter() - start) / len(texts) * 1e6)
    loop.close()
    return {name: statistics.median(t) for name, t in times.items()}


def coalesce_bench(args: argparse.Namespace, tmp: Path) -> int:
    from serving import BIN, LUA, Endpoint, bodies, free_port, run_wrk, start, stop, wait_ready

    names = [n for n in args.families.split(",") if n]  # serving.py checked them
    champs = {name: (c.uri, c.held_out) for name, c in champions.chosen(args, names, tmp, "all").items()}
    off = tmp / "coalesce-off.yaml"
    off.write_text("coalesce: false\n")
    procs: list[Endpoint] = []
    targets: dict[tuple[str, str], Endpoint] = {}
    try:
        port = free_port()
        procs.append(start("floor", [sys.executable, str(Path(__file__).with_name("floor_app.py")), "-p", str(port),
                                     "-w", str(args.workers)], port, tmp / "floor.log"))
        targets["floor", "floor"] = procs[-1]
        for name, (uri, _) in champs.items():
            for mode in modes(args):
                port = free_port()
                cmd = [str(BIN / "creditflow"), "serve", "-m", uri, "-p", str(port), "-w", str(args.workers)]
                procs.append(start(f"{name}-{mode}", cmd + (["--config", str(off)] if mode == "off" else []), port,
                                   tmp / f"{name}-{mode.replace('/', '_')}.log", mode.partition("@")[2]))
                targets[name, mode] = procs[-1]
        wait_ready(procs)
        scripts = {}
        for name, (_, X) in champs.items():
            scripts[name] = tmp / f"{name}.lua"
            scripts[name].write_text(LUA.replace("{BODIES}", "{" + ",".join(json.dumps(b) for b in bodies(X, 1)) + "}"))
        first = next(iter(champs))
        for (name, _), ep in targets.items():  # a fresh server's first seconds are slower: not measured
            run_wrk(ep.url, scripts[first if name == "floor" else name], 2, min(args.seconds, 3))
        results: dict[tuple, list[dict]] = {}
        calls: dict[tuple, list[float]] = {}
        for run in range(args.runs):
            for conc in args.concurrency:
                visits = list(targets.items())
                for (name, mode), ep in (visits if run % 2 == 0 else visits[::-1]):
                    url, pid = ep.url, ep.proc.pid
                    before = per_call(url) if mode.startswith("on") else (0.0, 0.0)
                    cpu = tree_cpu_seconds(pid)
                    result = run_wrk(url, scripts[first if name == "floor" else name], conc, args.seconds)
                    result["cpu_us"] = (tree_cpu_seconds(pid) - cpu) / max(result["requests"], 1) * 1e6
                    results.setdefault((name, mode, conc), []).append(result)
                    if mode.startswith("on"):
                        after = per_call(url)
                        calls.setdefault((name, mode, conc), []).append(
                            (after[0] - before[0]) / max(after[1] - before[1], 1))
            print(f"run {run + 1}/{args.runs} done; load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        stop(procs)
    report(champs, results, calls, args)
    print("\nin process: us per one-applicant request (parse, score, body), 8 requests one by one or together, "
          "medians of 40 rounds alternating")
    for name, (uri, X) in champs.items():
        t = in_process(uri, X)
        print(f"{name:<24} alone {t['alone']:8.0f}  together {t['together']:8.0f}  x{t['alone'] / t['together']:.1f}")
    return 0 if all(r["errors"] == 0 for rs in results.values() for r in rs) else 1


def report(champs: dict, results: dict, calls: dict, args: argparse.Namespace) -> None:
    def med(key: tuple) -> dict[str, float]:
        return {k: statistics.median(r[k] for r in results[key]) for k in ("rps", "p50_ms", "p99_ms", "cpu_us")}

    print(f"\n{args.runs} run(s) x {args.seconds} s per endpoint and concurrency, endpoints in turn (order reversed "
          f"every other run); medians; 1 applicant per request; {args.workers} worker(s) each")
    width = max(8, *(len(m) for m in modes(args)))
    print(f"{'family':<24} {'conc':>4} {'coalesce':<{width}} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
          f"{'CPU us':>7}  {'floor %':>7}  notes")
    for conc in args.concurrency:
        floor = med(("floor", "floor", conc))
        print(f"{'(HTTP floor)':<24} {conc:>4} {'':<{width}} {floor['rps']:>8.1f} {floor['p50_ms']:>8.2f} "
              f"{floor['p99_ms']:>8.2f} {sum(r['errors'] for r in results['floor', 'floor', conc]):>6} "
              f"{floor['cpu_us']:>7.0f}")
        for name in champs:
            on = med((name, "on", conc))
            for mode in modes(args):
                m = med((name, mode, conc))
                errors = sum(r["errors"] for r in results[name, mode, conc])
                per = f"{statistics.median(calls[name, mode, conc]):.2f}" if mode != "off" else ""
                note = (f"on/off req/s x{on['rps'] / m['rps']:.2f}, p50 x{on['p50_ms'] / m['p50_ms']:.2f}"
                        if mode == "off" else f"{per} requests per model call")
                if mode.startswith("on@"):
                    note += f"; req/s x{m['rps'] / on['rps']:.2f} on's, CPU a request x{m['cpu_us'] / on['cpu_us']:.2f}"
                print(f"{name:<24} {conc:>4} {mode:<{width}} {m['rps']:>8.1f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} "
                      f"{errors:>6} {m['cpu_us']:>7.0f}  {100 * m['rps'] / floor['rps']:>6.1f}%  {note}")
