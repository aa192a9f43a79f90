"""The online request path in process: what `creditflow serve` does for one request, without HTTP, code against code.

For each champion (scripts/bench/champions.py, trained once into a throwaway store), a fresh process per measurement
loads the model as a worker does (`serving.live.fetch`) and times `--calls` one-applicant requests through the guard's
path: `parse_body` of a `dataframe_split` body, `serving.online.predict` (the model, the JSON body), and the /metrics
count (`Metrics.answered`); medians of wall time and of the thread's CPU time per request (CPU time moves far less
with the machine's load). `--code` names the `src` folders to compare (another checkout's, e.g. main's, against this
one's): every round measures each of them in turn, the order reversed every other round, and the bodies they write are
checked to be the same bytes. Figures: docs/performance.md, "The online request path".

    .venv/bin/python scripts/bench/request_path.py --code ../main/src src --rounds 3
    .venv/bin/python scripts/bench/request_path.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def measure(uri: str, rows_file: str, calls: int) -> dict:
    """Medians of `calls` one-applicant requests through the guard's path, with the code on this process's path."""
    import pandas as pd

    from creditflow.serving.coalesce import predict
    from creditflow.serving.live import fetch
    from creditflow.serving.metrics import Metrics
    from creditflow.serving.requests import parse_body
    from serving import bodies

    loaded, metrics = fetch(uri), Metrics()
    requests = [b.encode() for b in bodies(pd.read_parquet(rows_file), 1)]

    def one(body: bytes) -> bytes:
        answer, counted = predict(loaded, parse_body(body, "application/json", loaded.spec, 5_000))
        metrics.answered(counted)
        return answer

    for body in requests:  # warm
        one(body)
    wall, cpu = [], []
    for i in range(calls):
        t0, c0 = time.perf_counter(), time.thread_time()
        one(requests[i % len(requests)])
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return {"wall_ms": statistics.median(wall) * 1e3, "cpu_ms": statistics.median(cpu) * 1e3,
            "body": one(requests[0]).decode(), "load": os.getloadavg()[0]}


def run(code: str, uri: str, rows_file: str, calls: int) -> dict:
    """`measure` in a fresh process whose creditflow is the one in `code`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([code, str(HERE)])}
    out = subprocess.run([sys.executable, __file__, "--measure", uri, rows_file, str(calls)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    if sys.argv[1:2] == ["--measure"]:
        print(json.dumps(measure(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="logistic,hist_gradient_boosting", help="champions (comma-separated)")
    parser.add_argument("--code", nargs="+", default=[str(ROOT / "src")], help="src folders to compare")
    parser.add_argument("--train-rows", type=int, default=20_000, help="generated rows to train on")
    parser.add_argument("--calls", type=int, default=800, help="requests per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (medians are printed)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: does it work (no figures to publish)")
    args = parser.parse_args()
    if args.quick:
        args.train_rows, args.calls, args.rounds = 3_000, 50, 1
    missing = [code for code in args.code if not (Path(code) / "creditflow").is_dir()]
    if missing:
        print(f"error: no creditflow package in {', '.join(missing)}", file=sys.stderr)
        return 2
    args.code = [str(Path(code).resolve()) for code in args.code]  # before the work directory changes
    sys.path.insert(0, str(HERE))
    import champions

    with tempfile.TemporaryDirectory(prefix="bench-request-path-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        os.chdir(tmp)
        champs = champions.train(args.families.split(","), args.train_rows, tmp, "all", quick=args.quick)
        results: dict[tuple[str, str], list[dict]] = {}
        for r in range(args.rounds):
            for name, champ in champs.items():
                rows_file = str(tmp / f"{name}.parquet")
                champ.held_out.to_parquet(rows_file)
                for code in (args.code if r % 2 == 0 else args.code[::-1]):
                    results.setdefault((name, code), []).append(run(code, champ.uri, rows_file, args.calls))
            print(f"round {r + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"\none-applicant requests in process (parse, model, JSON body, /metrics count): medians of {args.calls} "
          f"requests x {args.rounds} round(s), each code in a fresh process")
    print(f"{'champion':<28} {'code':<40} {'wall ms':>8} {'CPU ms':>8} {'CPU vs first':>12}")
    for name in champs:
        first = statistics.median(m["cpu_ms"] for m in results[name, args.code[0]])
        for code in args.code:
            ms = results[name, code]
            cpu = statistics.median(m["cpu_ms"] for m in ms)
            print(f"{name:<28} {code[-40:]:<40} {statistics.median(m['wall_ms'] for m in ms):>8.3f} {cpu:>8.3f} "
                  f"{cpu / first:>11.2f}x")
        if len({m["body"] for code in args.code for m in results[name, code]}) != 1:
            print(f"{name}: the codes wrote different bodies", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
