"""Soak: online requests, streaming events and batch jobs, all at once, for `--minutes`.

One champion (the HistGradientBoosting family the demo promotes, trained on `--train-rows` generated
applicants, registered and aliased @champion in a SQLite store of its own) and, at the same time:
  online  `creditflow serve` (1 worker, following @champion) under `wrk` at `--concurrency` (32),
          1-row requests of held-out applicants, for the whole soak;
  stream  `creditflow stream score` on streams of its own (Redis database 13, emptied first), fed `--events-per-second`
          events by a producer thread (a mix of the stream config's event types over 2,000 applicants
          whose batch features were loaded first; some closings are rejected by design);
  batch   `creditflow score batch` of `--batch-rows` applicants on Spark `local[1]`, run again and
          again into the same output (batch id `soak`: each run replaces the last).
At the end the producer stops, the scorer drains, and the script prints: requests and errors; events
in, predictions out, rejected, lost (neither published nor rejected) and duplicated (an event id out
more than once); batch runs and their exit codes; and the resident memory of every process (its
tree) after a one-minute warm-up and at the end. Exit 1 unless: 0 errors, 0 lost, 0 duplicated,
every batch run exit 0, and each process's memory at the end within 10% of the warmed-up value.

    .venv/bin/python scripts/bench/soak.py                 # 10 minutes
    .venv/bin/python scripts/bench/soak.py --minutes 2     # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
import requests
import yaml

from serving import tree_rss_mb  # scripts/bench/serving.py, beside this file

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REDIS = "redis://127.0.0.1:6379/13"
LUA = """
local bodies = {BODIES}
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %d, "p50_ms": %f, "p99_ms": %f, "errors": %d, "non2xx": %d}\\n',
    summary.requests, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def prepare(tmp: Path, train_rows: int, batch_rows: int) -> tuple[str, Path, Path, list[str]]:
    """Train and register the champion; write the batch input and the applicants' features; request bodies."""
    import mlflow

    from creditflow.data.dataset import load_dataset, split_data
    from creditflow.data.synthetic import generate_credit_data
    from creditflow.serving.features import FeatureStore
    from creditflow.specs import load_experiment_spec
    from creditflow.train.run import train_and_log

    exp, ds = load_experiment_spec(ROOT / "experiments" / "hist_gradient_boosting.yaml")
    exp = exp.with_overrides(**{"explain.enabled": False, "cv_folds": 2, "search.trials": 1})
    ds = ds.model_copy(update={"generated": ds.generated.model_copy(update={"rows": train_rows})})
    data = load_dataset(ds)
    outcome = train_and_log(exp, ds, data)
    mlflow.MlflowClient().set_registered_model_alias(exp.register_as, "champion", outcome.registered_version)
    fresh = generate_credit_data(batch_rows, seed=11).frame.drop(columns=[ds.target.column])
    fresh["Id"] = fresh["Id"].astype(str)
    fresh.to_parquet(tmp / "batch.parquet", index=False)
    features = fresh.head(2000)
    FeatureStore(REDIS, ds.name).put(features, "Id")
    X = split_data(data, exp.test_size, exp.seed).X_test[ds.raw_columns].head(200)
    bodies = [json.dumps({"dataframe_split": json.loads(X.iloc[[i]].to_json(orient="split", index=False))})
              for i in range(len(X))]
    script = tmp / "soak.lua"
    script.write_text(LUA.replace("{BODIES}", "{" + ",".join(json.dumps(b) for b in bodies) + "}"))
    return f"models:/{exp.register_as}@champion", script, tmp / "batch.parquet", list(features["Id"])


def stream_config(tmp: Path, model_uri: str) -> tuple[Path, dict]:
    config = yaml.safe_load((ROOT / "serving" / "stream.yaml").read_text())
    config.update(model_uri=model_uri, store=REDIS, events_stream="soak:events", predictions_stream="soak:predictions",
                  rejected_stream="soak:rejected", group="soak", claim_idle_ms=5000)
    path = tmp / "stream.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def produce(client: redis.Redis, stream: str, ids: list[str], kinds: list[str], rate: float,
            stop: threading.Event, sent: list[str]) -> None:
    """XADD events at `rate` per second until `stop`; the ids sent go to `sent`."""
    rng, start, n = random.Random(0), time.monotonic(), 0
    while not stop.is_set():
        n += 1
        sent.append(client.xadd(stream, {"applicant_id": rng.choice(ids), "event": rng.choice(kinds)}).decode())
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            stop.wait(delay)


def batch_loop(model_uri: str, source: Path, out: Path, env: dict, stop: threading.Event, codes: list[int],
               procs: dict) -> None:
    (out.parent / "job.yaml").write_text("master: local[1]\ndriver_memory: 1g\n")
    while not stop.is_set():
        proc = subprocess.Popen([str(BIN / "creditflow"), "score", "batch", "--model-uri", model_uri, "--input",
                                 str(source), "--output", str(out), "--batch-id", "soak", "--config",
                                 str(out.parent / "job.yaml")], stdout=subprocess.DEVNULL,
                                stderr=open(out.parent / "batch.log", "ab"), env=env)  # noqa: SIM115
        procs["batch"] = proc
        codes.append(proc.wait())


def drain(client: redis.Redis, config: dict, sent: list[str], timeout: float = 300) -> tuple[list[str], list[str]]:
    """Wait until every sent event is published or rejected (or `timeout`); the event ids of each stream."""
    deadline = time.monotonic() + timeout
    while True:
        out = [f[b"event_id"].decode() for _, f in client.xrange(config["predictions_stream"])]
        rejected = [f[b"event_id"].decode() for _, f in client.xrange(config["rejected_stream"])]
        if len(set(out) | set(rejected)) >= len(sent) or time.monotonic() > deadline:
            return out, rejected
        time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--events-per-second", type=float, default=100)
    parser.add_argument("--train-rows", type=int, default=20_000)
    parser.add_argument("--batch-rows", type=int, default=50_000)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (Debian/Ubuntu: apt-get install -y wrk)", file=sys.stderr)
        return 2
    client = redis.Redis.from_url(REDIS)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        os.chdir(tmp)
        client.flushdb()
        model_uri, script, source, ids = prepare(tmp, args.train_rows, args.batch_rows)
        path, config = stream_config(tmp, model_uri)
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        port = 5400 + os.getpid() % 500
        procs = {
            "serve": subprocess.Popen([str(BIN / "creditflow"), "serve", "-m", model_uri, "-p", str(port)],
                                      stdout=open(tmp / "serve.log", "wb"), stderr=subprocess.STDOUT, env=env),  # noqa: SIM115
            "stream": subprocess.Popen([str(BIN / "creditflow"), "stream", "score", "--config", str(path)],
                                       stdout=open(tmp / "stream.log", "wb"), stderr=subprocess.STDOUT, env=env),  # noqa: SIM115
        }
        url = f"http://127.0.0.1:{port}"
        for _ in range(180):
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(1)
        stop, sent, codes = threading.Event(), [], []
        threads = [threading.Thread(target=produce, args=(client, config["events_stream"], ids, list(config["events"]),
                                                          args.events_per_second, stop, sent)),
                   threading.Thread(target=batch_loop, args=(model_uri, source, tmp / "out", env, stop, codes,
                                                             procs))]
        seconds = int(args.minutes * 60)
        wrk = subprocess.Popen(["wrk", "-t2", f"-c{args.concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s",
                                str(script), f"{url}/invocations"], stdout=subprocess.PIPE, text=True)
        for t in threads:
            t.start()
        time.sleep(min(60, seconds / 3))  # the warm-up: memory is compared from here
        warm = {name: tree_rss_mb(p.pid) for name, p in procs.items()}
        out_text = wrk.communicate()[0]
        end = {name: tree_rss_mb(p.pid) for name, p in procs.items()}
        stop.set()
        for t in threads:
            t.join()
        published, rejected = drain(client, config, sent)
        for name in ("serve", "stream"):
            procs[name].terminate()
            procs[name].wait(timeout=60)
    result = json.loads(next(line for line in out_text.splitlines() if line.startswith("RESULT "))[7:])
    handled = set(published) | set(rejected)
    lost = len(set(sent) - handled)
    duplicated = len(published) + len(rejected) - len(handled)
    print(f"soak: {args.minutes:g} min on {os.cpu_count()} cores; online c={args.concurrency}, "
          f"{args.events_per_second:g} events/s, batch jobs of {args.batch_rows:,} rows")
    print(f"online  {result['requests']:,} requests, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
          f"errors {result['errors']}, non-2xx {result['non2xx']}")
    print(f"stream  {len(sent):,} events in, {len(published):,} predictions out, {len(rejected):,} rejected, "
          f"{lost} lost, {duplicated} duplicated")
    print(f"batch   {len(codes)} runs, exit codes {sorted(set(codes))}")
    grew = {name: (end[name] - warm[name]) / max(warm[name], 1) for name in ("serve", "stream")}
    for name in ("serve", "stream"):
        print(f"memory  {name:<6} {warm[name]:,.0f} MB after warm-up, {end[name]:,.0f} MB at the end "
              f"({100 * grew[name]:+.1f}%)")
    ok = (result["errors"] == result["non2xx"] == 0 and lost == duplicated == 0 and codes and set(codes) == {0}
          and all(g <= 0.10 for g in grew.values()))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
