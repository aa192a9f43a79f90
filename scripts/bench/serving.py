"""Online serving benchmark: stock scikit-learn-flavour serving vs our pyfunc, side by side.

One fitted pipeline, three endpoints started at once, each with the same number of uvicorn workers:
  stock  `mlflow models serve` of `mlflow.sklearn.log_model(pipe, pyfunc_predict_fn="predict_proba")`
  plain  `mlflow models serve` of our pyfunc (probability + decision + reason codes)
  ours   `creditflow serve` of our pyfunc (one strict parse, the pyfunc, MLflow's app for the rest)
For 1-row and 100-row requests at concurrency 1, 8 and 32, `wrk` (a separate process; Debian package
`wrk`) posts held-out applicants for `--seconds` to each endpoint in turn; this repeats `--runs` times
and the medians are printed: requests/s, p50 and p99 latency, errors, and the ratios to stock.

`--soak` runs only `ours`, each combination for `--seconds` (at least 60), sampling the server's
memory (RSS of its process tree) every 5 s; it fails (exit 1) on any error or on memory growth.

`--swap` measures following the registry (scripts/bench/swap.py): 1-row requests at the first
`--concurrency` in steady state, in the window around a hot swap, and with a shadow model on.

`--segments N` measures a segmented deployment (scripts/bench/segmented.py): N segment models plus the
global one in one server vs the global model alone: start-up time, RSS, 1-row p50/p99 at concurrency 8.

`--coalesce` serves each champion twice, requests that arrive together scored in one call (the default) and each
request alone, beside the HTTP floor (scripts/bench/coalesce.py). `--save-champions DIR` trains the champions into a
store of their own in DIR; `--champions-from DIR` takes them from there instead of training them again.

`--families` serves the champions you deploy (logistic, XGBoost 300x6, HistGradientBoosting as the demo tunes
it, a categorical spec) side by side with MLServer on the same models and a constant-answer app on the same
server stack (the HTTP floor); `--by-id` compares scoring by id with full-payload requests on the same server
(scripts/bench/deployed.py says what each row means).

    .venv/bin/python scripts/bench/serving.py                      # comparison, 3 runs x 10 s
    .venv/bin/python scripts/bench/serving.py --soak --seconds 60  # many requests, memory flat
    .venv/bin/python scripts/bench/serving.py --swap --concurrency 8 --experiment hist_gradient_boosting.yaml
    .venv/bin/python scripts/bench/serving.py --segments 20 --train-rows 150000     # many models, one endpoint
    .venv/bin/python scripts/bench/serving.py --families --rows 1 --concurrency 1 8 32 --runs 5
    .venv/bin/python scripts/bench/serving.py --by-id --concurrency 1 8
    .venv/bin/python scripts/bench/serving.py --families --quick     # a few hundred requests: does it work
    .venv/bin/python scripts/bench/serving.py --families --save-champions /tmp/champions   # trains, keeps them
    .venv/bin/python scripts/bench/serving.py --coalesce --rows 1 --concurrency 1 8 --champions-from /tmp/champions
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import by_id  # scripts/bench/by_id.py, beside this file
import coalesce  # scripts/bench/coalesce.py, beside this file
import deployed  # scripts/bench/deployed.py, beside this file
import requests
import segmented  # scripts/bench/segmented.py, beside this file
import swap  # scripts/bench/swap.py, beside this file
from proctree import tree_rss_mb  # scripts/bench/proctree.py, beside this file

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
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
  local q = {}
  for k = 1, 999 do q[k] = string.format("%f", latency:percentile(k / 10) / 1e3) end
  io.write(string.format('RESULT {"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, '
    .. '"errors": %d, "q_ms": [%s]}\\n', summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, e.connect + e.read + e.write + e.status + e.timeout, table.concat(q, ",")))
end
"""


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    proc: subprocess.Popen


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_models(rows: int, experiment: str) -> tuple[str, str, object]:
    """Train once; register our pyfunc and the stock sklearn model of the same fitted pipeline (same signature)."""
    import mlflow
    from mlflow.models import ModelSignature, infer_signature

    from creditflow.data.dataset import load_dataset, split_data
    from creditflow.model.artifact import input_schema
    from creditflow.specs import load_experiment_spec
    from creditflow.train.run import train_and_log

    exp, ds = load_experiment_spec(ROOT / "experiments" / experiment)
    exp = exp.with_overrides(**{"explain.enabled": False, "cv_folds": 2, "search.trials": 1})
    ds = ds.model_copy(update={"generated": ds.generated.model_copy(update={"rows": rows})})
    data = load_dataset(ds)
    outcome = train_and_log(exp, ds, data)
    ours = f"models:/{exp.register_as}/{outcome.registered_version}"
    pipe = mlflow.pyfunc.load_model(ours).unwrap_python_model().pipeline
    split = split_data(data, exp.test_size, exp.seed)
    with mlflow.start_run(run_name="stock-sklearn"):
        X = split.X_train[ds.raw_columns]
        outputs = infer_signature(X, pipe.predict_proba(X)).outputs
        info = mlflow.sklearn.log_model(
            pipe, name="model", pyfunc_predict_fn="predict_proba",
            signature=ModelSignature(inputs=input_schema(ds), outputs=outputs),
            input_example=X.head(5),
            skops_trusted_types=["numpy.dtype", "xgboost.core.Booster", "xgboost.sklearn.XGBClassifier",
                                 "creditflow.model.pipeline.CreditFeatures",
                                 "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"],
            registered_model_name="credit-default-stock",
        )
    stock = f"models:/credit-default-stock/{info.registered_model_version}"
    return ours, stock, split.X_test[ds.raw_columns]


def start(name: str, cmd: list[str], port: int, log: Path, code: str = "") -> Endpoint:
    """A server started with `cmd`; `code`: a `src` folder whose creditflow it runs instead of the installed one."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if code:
        env["PYTHONPATH"] = str(Path(code).resolve())
    with open(log, "wb") as out:  # the child keeps its own copy of the file descriptor
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    return Endpoint(name, f"http://127.0.0.1:{port}", proc)


def wait_ready(endpoints: list[Endpoint], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    for ep in endpoints:
        while True:
            if ep.proc.poll() is not None:
                raise SystemExit(f"error: {ep.name} server exited with {ep.proc.returncode} (see its log)")
            try:
                if requests.get(f"{ep.url}/ping", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"error: {ep.name} server did not answer /ping within {timeout} s")
            time.sleep(0.3)


def stop(endpoints: list[Endpoint]) -> None:
    """Terminate every server, then wait for each (killed after 30 s)."""
    for ep in endpoints:
        ep.proc.terminate()
    for ep in endpoints:
        try:
            ep.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            ep.proc.kill()


def bodies(X, rows: int, count: int = 40) -> list[str]:
    """`count` request bodies of `rows` held-out applicants each (dataframe_split)."""
    out = []
    for i in range(count):
        chunk = X.iloc[(i * rows) % max(len(X) - rows, 1):][:rows]
        out.append(json.dumps({"dataframe_split": json.loads(chunk.to_json(orient="split", index=False))}))
    return out


def run_wrk(url: str, script: Path, concurrency: int, seconds: int, path: str = "/invocations") -> dict:
    threads = min(concurrency, 2)
    cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script),
           f"{url}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["rps"] = result["requests"] / result["seconds"]
    return result


def check_agreement(endpoints: list[Endpoint], body: str) -> None:
    """Same applicants, same probabilities from every endpoint (stock returns [P(0), P(1)])."""
    probs = {}
    for ep in endpoints:
        r = requests.post(f"{ep.url}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=30)
        r.raise_for_status()
        preds = r.json()["predictions"]
        probs[ep.name] = [p["probability"] if isinstance(p, dict) else p[1] for p in preds]
    ref = probs.get("stock") or next(iter(probs.values()))
    worst = max(abs(a - b) for values in probs.values() for a, b in zip(values, ref, strict=True))
    print(f"probabilities agree across endpoints to {worst:.2e} ({len(ref)} applicants)")


def compare(endpoints: list[Endpoint], X, args: argparse.Namespace, tmp: Path) -> None:
    print(f"\n{args.runs} run(s) x {args.seconds} s per endpoint and combination; medians; "
          f"{args.workers} worker(s) each; load from wrk")
    print(f"{'rows':>4} {'conc':>4} {'endpoint':<6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for rows in args.rows:
        script = tmp / f"rows{rows}.lua"
        script.write_text(LUA.replace("{BODIES}", "{" + ",".join(json.dumps(b) for b in bodies(X, rows)) + "}"))
        for conc in args.concurrency:
            results: dict[str, list[dict]] = {ep.name: [] for ep in endpoints}
            for _ in range(args.runs):
                for ep in endpoints:  # side by side: each run visits every endpoint
                    results[ep.name].append(run_wrk(ep.url, script, conc, args.seconds))
            med = {name: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms")}
                   for name, rs in results.items()}
            for name, rs in results.items():
                m = med[name]
                errors = sum(r["errors"] for r in rs)
                print(f"{rows:>4} {conc:>4} {name:<6} {m['rps']:>8.1f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} "
                      f"{errors:>6}")
            if "stock" in med:
                for name in med:
                    if name != "stock":
                        print(f"{'':>10} {name}/stock: req/s x{med[name]['rps'] / med['stock']['rps']:.2f}, "
                              f"p50 x{med[name]['p50_ms'] / med['stock']['p50_ms']:.2f}")


def soak(ep: Endpoint, X, args: argparse.Namespace, tmp: Path) -> int:
    seconds = max(args.seconds, 60)
    print(f"\nsoak: {ep.name}, {seconds} s per combination; RSS of the server's process tree every 5 s")
    failed = False
    for rows in args.rows:
        script = tmp / f"rows{rows}.lua"
        script.write_text(LUA.replace("{BODIES}", "{" + ",".join(json.dumps(b) for b in bodies(X, rows)) + "}"))
        for conc in args.concurrency:
            samples = [tree_rss_mb(ep.proc.pid)]
            stop = threading.Event()

            def sample(samples: list[float] = samples, stop: threading.Event = stop) -> None:
                while not stop.wait(5):
                    samples.append(tree_rss_mb(ep.proc.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            r = run_wrk(ep.url, script, conc, seconds)
            stop.set()
            sampler.join()
            samples.append(tree_rss_mb(ep.proc.pid))
            half = samples[len(samples) // 2:]
            growth = max(half) - min(half)
            bad = r["errors"] > 0 or growth > 0.05 * min(half)
            failed |= bad
            print(f"rows={rows:>3} c={conc:>2}: {r['requests']} requests, {r['rps']:.1f} req/s, "
                  f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, errors {r['errors']}; "
                  f"RSS MB start {samples[0]:.0f} end {samples[-1]:.0f} max {max(samples):.0f} "
                  f"(second-half spread {growth:.1f})"
                  + ("  <-- FAIL" if bad else ""))
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="logistic_baseline.yaml", help="experiment spec in experiments/")
    parser.add_argument("--train-rows", type=int, default=20_000, help="generated rows to train on")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of every endpoint")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 100], help="applicants per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="open connections")
    parser.add_argument("--seconds", type=int, default=10, help="load duration per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per combination (medians are printed)")
    parser.add_argument("--endpoints", nargs="+", default=["stock", "plain", "ours"],
                        choices=["stock", "plain", "ours"], help="which endpoints to compare")
    parser.add_argument("--soak", action="store_true", help="only `ours`, >= 60 s per combination, memory sampled")
    parser.add_argument("--swap", action="store_true", help="steady vs hot swap vs shadow on (scripts/bench/swap.py)")
    parser.add_argument("--segments", type=int, default=0,
                        help="N segment models + the global one vs the global alone (scripts/bench/segmented.py)")
    add_family_options(parser)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (Debian/Ubuntu: apt-get install -y wrk)", file=sys.stderr)
        return 2
    if args.families or args.by_id or args.coalesce:
        return family_modes(args)
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        os.chdir(tmp)
        ours_uri, stock_uri, X = prepare_models(args.train_rows, args.experiment)
        if args.segments:
            return segmented.serving_bench(args.segments, ours_uri, X, args, tmp, run_wrk, sys.modules[__name__])
        names = ["ours"] if args.soak else ["follow", "shadow"] if args.swap else args.endpoints
        commands = {
            "stock": [str(BIN / "mlflow"), "models", "serve", "-m", stock_uri, "--env-manager", "local"],
            "plain": [str(BIN / "mlflow"), "models", "serve", "-m", ours_uri, "--env-manager", "local"],
            "ours": [str(BIN / "creditflow"), "serve", "-m", ours_uri],
        }
        if args.swap:
            model = swap.prepare_versions(ours_uri)
            follow = [str(BIN / "creditflow"), "serve", "-m", f"models:/{model}@champion", "--reload-seconds", "1"]
            commands["follow"] = follow
            commands["shadow"] = [*follow, "--shadow", f"models:/{model}@challenger", "--config",
                                  str(swap.shadow_config(tmp))]
        endpoints = []
        try:
            for name in names:
                port = free_port()
                cmd = commands[name] + ["-p", str(port), "-w", str(args.workers)]
                endpoints.append(start(name, cmd, port, tmp / f"{name}.log"))
            wait_ready(endpoints)
            check_agreement(endpoints, bodies(X, 100, 1)[0])
            if args.soak:
                return soak(endpoints[0], X, args, tmp)
            if args.swap:
                script = tmp / "rows1.lua"
                script.write_text(LUA.replace("{BODIES}", "{" + ",".join(json.dumps(b) for b in bodies(X, 1)) + "}"))
                return swap.swap_bench(endpoints[0].url, endpoints[1].url, model, script, args, run_wrk)
            compare(endpoints, X, args, tmp)
            return 0
        finally:
            stop(endpoints)


def add_family_options(parser: argparse.ArgumentParser) -> None:
    """Options of --families and --by-id (scripts/bench/deployed.py)."""
    parser.add_argument("--families", nargs="?", const="logistic,xgboost,hist_gradient_boosting,categorical-xgboost",
                        default="", help="the deployed champions side by side with MLServer and the HTTP floor; "
                        "optionally which (comma-separated; categorical-FAMILY for the categorical spec)")
    parser.add_argument("--by-id", nargs="?", const="logistic,xgboost,hist_gradient_boosting", default="",
                        help="by-id against full-payload requests on the same server; optionally which champions")
    parser.add_argument("--no-mlserver", action="store_true", help="--families without the MLServer rows")
    parser.add_argument("--inproc-calls", type=int, default=200, help="--families: in-process 1-row calls per round")
    parser.add_argument("--applicants", type=int, default=2000, help="--by-id: applicants in the feature store")
    parser.add_argument("--redis-db", type=int, default=14, help="--by-id: Redis database (emptied first)")
    parser.add_argument("--coalesce", nargs="?", const="logistic,xgboost,hist_gradient_boosting", default="",
                        help="requests scored together in one call, on and off side by side, with the HTTP floor "
                        "(scripts/bench/coalesce.py); optionally which champions")
    parser.add_argument("--code", nargs="+", default=[], metavar="SRC",
                        help="--coalesce: also serve each champion with these src folders' creditflow (another "
                        "checkout's), side by side")
    parser.add_argument("--champions-from", default="", help="--families/--by-id/--coalesce: champions trained "
                        "before (DIR/uris.json, DIR/<family>.parquet, DIR/mlflow.db) instead of training them")
    parser.add_argument("--save-champions", default="", help="--families/--by-id/--coalesce: train the champions "
                        "into DIR (its own store) for later runs' --champions-from DIR")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: does it work (no figures to publish)")


def family_modes(args: argparse.Namespace) -> int:
    """--families / --by-id / --coalesce, in a throwaway store; --quick shrinks everything to a few hundred requests."""
    if args.quick:
        args.train_rows, args.seconds, args.runs, args.inproc_calls, args.applicants = 3000, 1, 1, 20, 200
        args.rows, args.concurrency = [1], [1, 8]
    names = (args.families or args.by_id or args.coalesce).split(",")
    unknown = deployed.champions.unknown(names)
    if unknown:
        print(f"error: unknown champion(s) {', '.join(unknown)} (families: {', '.join(deployed.champions.FAMILIES)}, "
              f"or categorical-FAMILY)", file=sys.stderr)
        return 2
    not_code = [src for src in args.code if not (Path(src) / "creditflow" / "__init__.py").is_file()]
    if not_code or (args.code and not args.coalesce):
        print(f"error: --code takes src folders holding creditflow, with --coalesce"
              f"{': not one: ' + ', '.join(not_code) if not_code else ''}", file=sys.stderr)
        return 2
    args.families = ",".join(names)
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_name:
        tmp = Path(tmp_name)
        store = Path(args.champions_from or args.save_champions or tmp).resolve()
        store.mkdir(parents=True, exist_ok=True)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
        os.chdir(store if args.save_champions else tmp)  # a saved store keeps its artifacts (./mlruns) beside it
        from creditflow.serving.stack import stack

        print(f"work directory {tmp}; cpus {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}; server stack "
              f"{' + '.join(stack())}", flush=True)
        bench = (coalesce.coalesce_bench if args.coalesce else by_id.by_id_bench if args.by_id
                 else deployed.families_bench)
        code = bench(args, tmp)
        print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
