"""`scripts/bench/serving.py --by-id`: applicants scored by id against full-payload requests, and a lookup's floor.

One `creditflow serve --feature-store` per champion; the held-out applicants' features loaded into Redis database
`--redis-db` (emptied first). Each run loads the same server with full-payload 1-row requests (`POST /invocations`)
and with the same applicants by id (`POST /invocations/by-id`), in turn; medians of p50/p99 and by-id / full p99.

The floor: a request by id cannot answer before its features are read, so at best it is a full-payload request
plus one Redis round trip. After the runs, each champion's server is loaded once more with full-payload requests
at each concurrency while this process times one-key MGETs, one at a time, on redis' asyncio client (as the
endpoint reads them): the round trips under that load. The floor's p99 is the 99th percentile of a full request's
latency plus a round trip's, the two drawn independently (wrk's latency quantiles of that same load, every 0.1%,
against every timed round trip); the floor ratio is that over the full request's p99.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import champions
import numpy as np
import requests
from deployed import _median, _script

WARM_MGETS = 100  # a connection's first calls are not timed


def by_id_bench(args: argparse.Namespace, tmp: Path) -> int:
    import redis

    from creditflow.serving.features import FeatureStore
    from serving import BIN, bodies, free_port, run_wrk, start, stop, wait_ready

    names = [n for n in args.families.split(",") if n]
    champs = champions.chosen(args, names, tmp, "all")
    store = f"redis://127.0.0.1:6379/{args.redis_db}"
    redis.Redis.from_url(store).flushdb()
    procs, scripts, champ_rows, keys = [], {}, {}, {}
    try:
        for name, champ in champs.items():
            frame = champ_rows[name] = champions.applicants(champ.spec, args.applicants, seed=23, ids=True)
            features = FeatureStore(store, champ.spec.name)
            features.put(frame, "Id")
            keys[name] = [features.key(str(i)) for i in frame["Id"]]
            X = frame.drop(columns=["Id"])
            scripts[name, "full"] = _script(tmp, f"{name}-full", bodies(X, 1, count=len(X)))
            scripts[name, "by-id"] = _script(tmp, f"{name}-by-id",
                                             [json.dumps({"applicant_ids": [i]}) for i in frame["Id"]])
            port = free_port()
            procs.append(start(name, [str(BIN / "creditflow"), "serve", "-m", champ.uri, "-p", str(port), "-w",
                                      str(args.workers), "--feature-store", store], port, tmp / f"by-id-{name}.log"))
        wait_ready(procs)
        for ep, name in zip(procs, champs, strict=True):  # the same answer both ways
            full, by_id = (requests.post(f"{ep.url}{path}", data=body, headers={"Content-Type": "application/json"},
                                         timeout=60) for path, body in (
                ("/invocations", bodies(champ_rows[name].drop(columns=["Id"]), 1, 1)[0]),
                ("/invocations/by-id", json.dumps({"applicant_ids": [champ_rows[name]["Id"].iat[0]]}))))
            assert full.json() == by_id.json(), (full.text, by_id.text)
            print(f"{name}: by id and full payload give the same answer", flush=True)
            for kind in ("full", "by-id"):  # a fresh server's first seconds are slower: not measured
                run_wrk(ep.url, scripts[name, kind], 2, min(args.seconds, 3), _path(kind))
        results: dict[tuple, list[dict]] = {}
        for run in range(args.runs):
            for conc in args.concurrency:
                for ep, name in zip(procs, champs, strict=True):
                    for kind in (("full", "by-id") if run % 2 == 0 else ("by-id", "full")):
                        results.setdefault((name, conc, kind), []).append(
                            run_wrk(ep.url, scripts[name, kind], conc, args.seconds, _path(kind)))
        floors = {(name, conc): _floor(store, keys[name], partial(run_wrk, ep.url, scripts[name, "full"], conc,
                                                                  args.seconds, _path("full")))
                  for conc in args.concurrency for ep, name in zip(procs, champs, strict=True)}
    finally:
        stop(procs)
        redis.Redis.from_url(store).flushdb()  # the applicants' features were the bench's own
    _report(champs, results, floors, args)
    return 0 if all(r["errors"] == 0 for rs in results.values() for r in rs) else 1


def _path(kind: str) -> str:
    return "/invocations" if kind == "full" else "/invocations/by-id"


def _report(champs: dict, results: dict, floors: dict, args: argparse.Namespace) -> None:
    print(f"\nby id against full payload, same server: {args.runs} run(s) x {args.seconds} s each, in turn; medians; "
          f"1 applicant per request; {args.workers} worker(s)")
    print(f"{'family':<36} {'conc':>4} {'request':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for name in champs:
        for conc in args.concurrency:
            med = {kind: _median(results[name, conc, kind]) for kind in ("full", "by-id")}
            for kind, m in med.items():
                errors = sum(r["errors"] for r in results[name, conc, kind])
                ratio = (f"  by-id/full p99 x{m['p99_ms'] / med['full']['p99_ms']:.2f}, "
                         f"p50 x{m['p50_ms'] / med['full']['p50_ms']:.2f}") if kind == "by-id" else ""
                print(f"{name:<36} {conc:>4} {kind:<8} {m['rps']:>8.1f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} "
                      f"{errors:>6}{ratio}")
    print("\nthe floor: a full request plus one MGET round trip, timed under that full-payload load (one more run), "
          "drawn independently; by-id/full p99 beside it, from the runs above")
    print(f"{'family':<36} {'conc':>4} {'MGET p50':>9} {'MGET p99':>9} {'full p99':>9} {'floor p99':>10} "
          f"{'floor':>6} {'by-id':>6}")
    for (name, conc), f in floors.items():
        med = {kind: _median(results[name, conc, kind]) for kind in ("full", "by-id")}
        print(f"{name:<36} {conc:>4} {f['mget_p50']:>9.3f} {f['mget_p99']:>9.3f} {f['full_p99']:>9.2f} "
              f"{f['floor_p99']:>10.2f} x{f['floor_p99'] / f['full_p99']:>5.2f} "
              f"x{med['by-id']['p99_ms'] / med['full']['p99_ms']:>5.2f}")


def _floor(store: str, keys: list[str], load: Callable[[], dict]) -> dict[str, float]:
    """Round trips of one-key MGETs timed while `load` (a wrk run of full-payload requests) runs; the floor's p99."""
    stop, samples = threading.Event(), []
    timer = threading.Thread(target=lambda: samples.extend(_timed_mgets(store, keys, stop)))
    timer.start()
    try:
        full = load()
    finally:
        stop.set()
        timer.join()
    trips = np.array(samples[WARM_MGETS:]) * 1e3
    latency = np.array(full["q_ms"])
    draws = trips[np.random.default_rng(0).permutation(len(trips))[:3000]]
    return {"mget_p50": float(np.median(trips)), "mget_p99": float(np.percentile(trips, 99)),
            "full_p99": full["p99_ms"], "floor_p99": float(np.percentile(latency[:, None] + draws[None, :], 99))}


def _timed_mgets(store: str, keys: list[str], stop: threading.Event) -> list[float]:
    """Seconds of each one-key MGET, sent one at a time until `stop`."""
    import redis.asyncio
    import uvloop

    async def timed() -> list[float]:
        client, out = redis.asyncio.Redis.from_url(store), []
        while not stop.is_set():
            start = time.perf_counter()
            await client.mget([keys[len(out) % len(keys)]])
            out.append(time.perf_counter() - start)
        await client.aclose()
        return out

    return uvloop.run(timed())
