"""Streaming benchmark: events/s per scorer and event-to-prediction latency, against the real Redis.

Champions from scripts/bench/champions.py (reason codes for every applicant, as the experiments ship), each trained
once into a throwaway store; `--applicants` new applicants' batch features loaded into Redis database `--redis-db`
(emptied first), on streams of the bench's own. Events are a mix of serving/stream.yaml's event types over those
applicants (a closing that would take an applicant's open lines below zero is rejected by design: counted apart).
Every scorer is a `creditflow stream score` process with serving/stream.yaml's settings but the batch size, started
and warmed up (one event scored) before anything is measured.

  throughput  for each batch size (`batch_size`: 1, 10, 100), `--events` events are queued first, then one scorer
              drains them. events/s = events handled after the first batch / seconds from the first batch's
              publication to the last's (the prediction and rejected streams' entry ids: Redis's clock).
  latency     at each fixed rate (200 and 1,000 events/s) a producer XADDs events for `--seconds` while one scorer
              (the shipped batch size, 100) consumes them. Each event's latency is its prediction's stream id time
              minus the event's stream id time (both Redis's clock, milliseconds): p50, p99 and max; and whether
              the scorer kept up (events still unhandled one second after the producer stopped).
Each measurement runs `--runs` times, champions alternating within a run; medians are printed.

    .venv/bin/python scripts/bench/stream.py                                   # ~10 min
    .venv/bin/python scripts/bench/stream.py --families logistic --quick      # a few hundred events
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import champions
import redis
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-")[0])


def config_file(tmp: Path, tag: str, model_uri: str, store: str, batch_size: int) -> tuple[Path, dict]:
    """serving/stream.yaml with this run's model, store, streams (named by `tag`) and batch size."""
    config = yaml.safe_load((ROOT / "serving" / "stream.yaml").read_text())
    config.update(model_uri=model_uri, store=store, events_stream=f"bench:{tag}:events",
                  predictions_stream=f"bench:{tag}:predictions", rejected_stream=f"bench:{tag}:rejected",
                  group=f"bench-{tag}", batch_size=batch_size, reload_seconds=0)
    path = tmp / f"stream-{tag}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def handled(client: redis.Redis, config: dict) -> tuple[list, list]:
    return client.xrange(config["predictions_stream"]), client.xrange(config["rejected_stream"])


def wait_handled(client: redis.Redis, config: dict, count: int, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done = client.xlen(config["predictions_stream"]) + client.xlen(config["rejected_stream"])
        if done >= count:
            return
        if proc.poll() is not None:
            raise SystemExit(f"error: the scorer exited with {proc.returncode} after {done} of {count} events "
                             f"(see its log)")
        if time.monotonic() > deadline:
            raise SystemExit(f"error: {done} of {count} events handled within {timeout:.0f} s")
        time.sleep(0.05)  # polling the streams' lengths: the bench's own wait, not part of any figure


def start_scorer(tmp: Path, tag: str, path: Path) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(tmp / f"scorer-{tag}.log", "wb") as log:
        return subprocess.Popen([str(BIN / "creditflow"), "stream", "score", "--config", str(path), "--idle-seconds",
                                 "30"], stdout=log, stderr=subprocess.STDOUT, env=env)


def warm_up(client: redis.Redis, config: dict, ids: list[str], proc: subprocess.Popen) -> None:
    """One event through a fresh scorer (its start-up, model load and first prediction), then empty streams."""
    client.xadd(config["events_stream"], {"applicant_id": ids[0], "event": "late_payment_30_59"})
    wait_handled(client, config, 1, 300, proc)
    for stream in ("predictions_stream", "rejected_stream"):
        client.delete(config[stream])


def events(ids: list[str], kinds: list[str], n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"applicant_id": rng.choice(ids), "event": rng.choice(kinds)} for _ in range(n)]


def throughput(client, tmp: Path, tag: str, uri: str, store: str, batch: int, ids: list[str], n: int) -> dict:
    path, config = config_file(tmp, tag, uri, store, batch)
    proc = start_scorer(tmp, tag, path)
    try:
        warm_up(client, config, ids, proc)
        pipe = client.pipeline(transaction=False)
        for fields in events(ids, list(config["events"]), n, seed=len(tag)):
            pipe.xadd(config["events_stream"], fields)
        pipe.execute()
        wait_handled(client, config, n, 600, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    published, rejected = handled(client, config)
    times = sorted(_ms(i) for i, _ in published + rejected)
    later = [t for t in times if t > times[0]]  # after the first batch's publication
    seconds = max((times[-1] - times[0]) / 1000, 1e-3)
    return {"events_per_s": len(later) / seconds, "events": n, "rejected": len(rejected), "seconds": seconds}


def latency(client, tmp: Path, tag: str, uri: str, store: str, rate: float, seconds: float, ids: list[str]) -> dict:
    from soak import produce  # scripts/bench/soak.py: XADD at a fixed rate from a thread

    path, config = config_file(tmp, tag, uri, store, 100)
    proc = start_scorer(tmp, tag, path)
    try:
        warm_up(client, config, ids, proc)
        stop, sent = threading.Event(), []
        producer = threading.Thread(target=produce, args=(client, config["events_stream"], ids,
                                                          list(config["events"]), rate, stop, sent))
        producer.start()
        stop.wait(seconds)  # the measured window: the producer runs for it
        stop.set()
        producer.join()
        behind = len(sent) - client.xlen(config["predictions_stream"]) - client.xlen(config["rejected_stream"])
        wait_handled(client, config, len(sent), 300, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    published, rejected = handled(client, config)
    waits = sorted(_ms(i) - _ms(fields[b"event_id"]) for i, fields in published)
    pick = lambda q: waits[min(len(waits) - 1, int(q * len(waits)))]  # noqa: E731
    return {"sent": len(sent), "rate": len(sent) / seconds, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "max_ms": waits[-1], "rejected": len(rejected), "behind_at_stop": behind}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="logistic,xgboost,hist_gradient_boosting",
                        help="champions, comma-separated (scripts/bench/champions.py)")
    parser.add_argument("--train-rows", type=int, default=20_000)
    parser.add_argument("--applicants", type=int, default=2_000, help="applicants with batch features")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--events", type=int, default=5_000, help="events queued per throughput measurement")
    parser.add_argument("--rates", type=float, nargs="+", default=[200, 1000], help="events/s of the latency runs")
    parser.add_argument("--seconds", type=float, default=20, help="producer window per latency run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--redis-db", type=int, default=12, help="Redis database (emptied first)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: does it work (no figures to publish)")
    args = parser.parse_args()
    if args.quick:
        args.train_rows, args.applicants, args.events, args.seconds, args.runs = 3000, 200, 300, 2, 1
    names = [n for n in args.families.split(",") if n]
    unknown = champions.unknown(names)
    if unknown:
        print(f"error: unknown champion(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    store = f"redis://127.0.0.1:6379/{args.redis_db}"
    client = redis.Redis.from_url(store)
    try:
        client.ping()
    except redis.RedisError as exc:
        print(f"error: Redis at {store} cannot be reached ({exc})", file=sys.stderr)
        return 2
    from creditflow.serving.features import FeatureStore

    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        os.chdir(tmp)
        print(f"work directory {tmp}; cpus {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}", flush=True)
        client.flushdb()
        champs = {n: c for n, c in champions.train(names, args.train_rows, tmp, "all", args.quick).items()
                  if n in names}
        ids: dict[str, list[str]] = {}
        for name, champ in champs.items():
            frame = champions.applicants(champ.spec, args.applicants, seed=31, ids=True)
            FeatureStore(store, champ.spec.name).put(frame, "Id")
            ids[name] = frame["Id"].tolist()
        through: dict[tuple, list[dict]] = {}
        delays: dict[tuple, list[dict]] = {}
        for run in range(args.runs):
            order = list(champs) if run % 2 == 0 else list(champs)[::-1]
            for name in order:
                for batch in args.batch_sizes:
                    r = throughput(client, tmp, f"{name}-b{batch}-r{run}", champs[name].uri, store, batch, ids[name],
                                   args.events)
                    through.setdefault((name, batch), []).append(r)
                    print(f"run {run + 1} {name:<24} batch {batch:>3}: {r['events_per_s']:8,.0f} events/s "
                          f"({r['events']:,} events, {r['rejected']:,} rejected)", flush=True)
                for rate in args.rates:
                    r = latency(client, tmp, f"{name}-r{rate:g}-r{run}", champs[name].uri, store, rate, args.seconds,
                                ids[name])
                    delays.setdefault((name, rate), []).append(r)
                    print(f"run {run + 1} {name:<24} {rate:>6g}/s: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
                          f"max {r['max_ms']} ms ({r['sent']:,} events at {r['rate']:,.0f}/s, "
                          f"{r['behind_at_stop']} unhandled at the producer's stop)", flush=True)
        client.flushdb()
    med = statistics.median
    print(f"\nmedians of {args.runs} run(s); one `creditflow stream score` process per measurement; Redis "
          f"127.0.0.1:6379/{args.redis_db}; {os.cpu_count()} cores")
    print(f"{'family':<36} {'batch size':>10} {'events/s':>10}")
    for (name, batch), rs in through.items():
        print(f"{name:<36} {batch:>10} {med(r['events_per_s'] for r in rs):>10,.0f}")
    print(f"\n{'family':<36} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'unhandled at stop':>18}")
    for (name, rate), rs in delays.items():
        print(f"{name:<36} {rate:>10g} {med(r['p50_ms'] for r in rs):>8g} {med(r['p99_ms'] for r in rs):>8g} "
              f"{med(r['max_ms'] for r in rs):>8g} {med(r['behind_at_stop'] for r in rs):>18g}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
