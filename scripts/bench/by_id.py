"""`scripts/bench/serving.py --by-id`: applicants scored by id against full-payload requests, and a lookup's floor.

One `creditflow serve --feature-store` per champion; the held-out applicants' features loaded into Redis database
`--redis-db` (emptied first). Each run loads the same server with full-payload 1-row requests (`POST /invocations`)
and with the same applicants by id (`POST /invocations/by-id`), in turn; medians of p50/p99 and by-id / full p99.

The floor: a request by id cannot answer before its features are read, so at best it is a full-payload request
plus one Redis round trip. Before the runs, this process times MGETS one-key MGETs, back to back, on the endpoint's
own client (`serving.resp`), with no other load. The floor's p99 of a run of full-payload requests is the 99th
percentile of its latency plus one of those round trips, the two drawn independently (wrk's latency quantiles, every
0.1%, against every round trip); printed as its ratio to that run's full p99, the median over runs. Round trips timed
during the runs, by a thread of this process, were longer (at concurrency 1 their p99 was 0.7-1.5 ms, above the by-id
request's own): the timer's own wake-ups, which the endpoint, busy with the request, does not pay.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import champions
import numpy as np
import requests
import uvloop
from deployed import medians, wrk_script

WARM_MGETS = 100  # a connection's first calls are not counted
MGETS = 5_000


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
            scripts[name, "full"] = wrk_script(tmp, f"{name}-full", bodies(X, 1, count=len(X)))
            scripts[name, "by-id"] = wrk_script(tmp, f"{name}-by-id",
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
        trips = np.array(uvloop.run(_timed_mgets(store, [k for name in champs for k in keys[name][:100]])))
        results: dict[tuple, list[dict]] = {}
        for run in range(args.runs):
            for conc in args.concurrency:
                for ep, name in zip(procs, champs, strict=True):
                    for kind in (("full", "by-id") if run % 2 == 0 else ("by-id", "full")):
                        results.setdefault((name, conc, kind), []).append(
                            run_wrk(ep.url, scripts[name, kind], conc, args.seconds, _path(kind)))
    finally:
        stop(procs)
        redis.Redis.from_url(store).flushdb()  # the applicants' features were the bench's own
    _report(champs, results, trips, args)
    return 0 if all(r["errors"] == 0 for rs in results.values() for r in rs) else 1


def _path(kind: str) -> str:
    return "/invocations" if kind == "full" else "/invocations/by-id"


def _report(champs: dict, results: dict, trips: np.ndarray, args: argparse.Namespace) -> None:
    print(f"\nby id against full payload, same server: {args.runs} run(s) x {args.seconds} s each, in turn; medians; "
          f"1 applicant per request; {args.workers} worker(s)")
    print(f"{'family':<36} {'conc':>4} {'request':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for name in champs:
        for conc in args.concurrency:
            med = {kind: medians(results[name, conc, kind]) for kind in ("full", "by-id")}
            for kind, m in med.items():
                errors = sum(r["errors"] for r in results[name, conc, kind])
                ratio = (f"  by-id/full p99 x{m['p99_ms'] / med['full']['p99_ms']:.2f}, "
                         f"p50 x{m['p50_ms'] / med['full']['p50_ms']:.2f}") if kind == "by-id" else ""
                print(f"{name:<36} {conc:>4} {kind:<8} {m['rps']:>8.1f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} "
                      f"{errors:>6}{ratio}")
    print(f"\nthe floor: a full request plus one MGET round trip, drawn independently; round trips timed before the "
          f"runs, {MGETS:,} back to back on the endpoint's client, alone: p50 {np.median(trips):.3f} ms, p99 "
          f"{np.percentile(trips, 99):.3f} ms; medians over runs; by-id/full p99 beside it, from the table above")
    print(f"{'family':<36} {'conc':>4} {'floor':>6} {'by-id':>6}")
    for name in champs:
        for conc in args.concurrency:
            full = results[name, conc, "full"]
            med = {kind: medians(results[name, conc, kind]) for kind in ("full", "by-id")}
            floor = statistics.median(_floor_p99(r["q_ms"], trips) / r["p99_ms"] for r in full)
            print(f"{name:<36} {conc:>4} x{floor:>5.2f} x{med['by-id']['p99_ms'] / med['full']['p99_ms']:>5.2f}")


def _floor_p99(latency_ms: list[float], trips_ms: np.ndarray) -> float:
    """The 99th percentile of a request's latency plus a round trip's, drawn independently."""
    draws = trips_ms[np.random.default_rng(0).permutation(len(trips_ms))[:3000]]
    return float(np.percentile(np.array(latency_ms)[:, None] + draws[None, :], 99))


async def _timed_mgets(store: str, keys: list[str]) -> list[float]:
    """Milliseconds of MGETS one-key MGETs on the endpoint's client, one after the other."""
    from creditflow.serving.resp import RespClient

    client, trips = RespClient(store, connect_timeout=2, timeout=5), []
    for i in range(MGETS + WARM_MGETS):
        start = time.perf_counter()
        await client.command("MGET", keys[i % len(keys)])
        trips.append((time.perf_counter() - start) * 1e3)
    client.close()
    return trips[WARM_MGETS:]
