"""`scripts/bench/serving.py --families`: the champion you deploy, per family, against the limits.

--families  Each named champion (scripts/bench/champions.py: logistic, XGBoost 300 trees of depth 6,
            HistGradientBoosting tuned as the demo tunes it, categorical-FAMILY on the categorical spec; each logged
            with reason codes for every applicant, as the experiments ship) is served at once, side by side, by:
              ours      `creditflow serve -m models:/NAME/VERSION -w W`
              mlserver  MLServer 1.7.1 with mlserver-mlflow, the same registered model's files, V2 REST API,
                        `parallel_workers` W (scripts/bench/mlserver_env.py; left out, said so, when it cannot be
                        installed)
            and one endpoint for all of them:
              floor     a constant answer under the same server stack (scripts/bench/floor_app.py): the HTTP floor
            Each run visits every endpoint in turn with `wrk` (held-out applicants of the champion's own spec, the same
            rows in MLflow's and V2's request format) for every rows x concurrency; medians over runs. Printed per
            family: req/s, p50, p99, errors; ours as a share of the floor's req/s; ours / mlserver (req/s, p50); and the
            in-process 1-row `predict` of each champion (medians of calls alternating champion by champion) with each
            categorical champion against its numeric family, in process and over HTTP (p50 at concurrency 1). Last,
            each model's own work per applicant (the compiled probability and exact reasons, in process), in calls
            of 8 applicants (as the endpoint's calls hold at concurrency 8) and alone, beside the floor's CPU a
            request: the most of the floor's req/s any endpoint of that model could answer.
--by-id     scripts/bench/by_id.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import champions
import mlserver_env
import requests


def wrk_script(tmp: Path, name: str, bodies: list[str]) -> Path:
    from serving import LUA

    path = tmp / f"{name}.lua"
    path.write_text(LUA.replace("{BODIES}", "{" + ",".join(json.dumps(b) for b in bodies) + "}"))
    return path


def _v2_bodies(X, rows: int, count: int = 40) -> list[str]:
    return [mlserver_env.body(X.iloc[(i * rows) % max(len(X) - rows, 1):][:rows]) for i in range(count)]


def _in_process(champs: dict, calls: int, rounds: int) -> dict[str, float]:
    """Median ms of the loaded pyfunc's `predict` on 1-row frames, calls alternating champion by champion."""
    import mlflow

    models = {name: mlflow.pyfunc.load_model(c.uri) for name, c in champs.items()}
    times: dict[str, list[float]] = {name: [] for name in champs}
    for r in range(rounds):
        for name in (list(champs) if r % 2 == 0 else list(champs)[::-1]):
            X = champs[name].held_out
            for i in range(calls):
                row = X.iloc[[i % len(X)]]
                t0 = time.perf_counter()
                models[name].predict(row)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def _model_work(champs: dict, batches: int = 25, applicants: int = 200) -> dict[str, dict[int, float]]:
    """Per champion, the CPU us of the model's own work per applicant, in process, in calls of 1 and of 8 applicants
    (at concurrency 8 the endpoint scores about 8 requests a call: `serving.coalesce`): the compiled scorer's
    probability and exact reasons (`FastScorer.score` of raw rows), no parse, no JSON, no HTTP; the least of `batches`
    batches' means (the work itself, what the machine's other load can only add to)."""
    import mlflow

    from creditflow.model.inputs import applicant_matrix

    out: dict[str, dict[int, float]] = {}
    for name, champ in champs.items():
        scoring = mlflow.pyfunc.load_model(champ.uri).unwrap_python_model().scoring
        X = champ.held_out.head(applicants)
        for size in (1, 8):
            calls = [applicant_matrix(X.iloc[i:i + size], scoring.spec, scoring.scorer.codes)
                     for i in range(0, len(X) - size + 1, size)]
            means = []
            for _ in range(batches):
                start = time.thread_time()
                for R in calls:
                    scoring.scorer.score(R)
                means.append((time.thread_time() - start) / (len(calls) * size))
            out.setdefault(name, {})[size] = min(means) * 1e6
    return out


def _agree(url: str, mlserver_url: str | None, X) -> str:
    """Probabilities of ours and MLServer for the same 100 applicants: the largest difference."""
    from serving import bodies

    ours = requests.post(f"{url}/invocations", data=bodies(X, 100, 1)[0], timeout=60,
                         headers={"Content-Type": "application/json"})
    ours.raise_for_status()
    p = [row["probability"] for row in ours.json()["predictions"]]
    if not mlserver_url:
        return f"{len(p)} applicants scored"
    theirs = requests.post(f"{mlserver_url}{mlserver_env.PATH}", data=_v2_bodies(X, 100, 1)[0], timeout=60,
                           headers={"Content-Type": "application/json"})
    theirs.raise_for_status()
    q = mlserver_env.probabilities(theirs.json())
    return f"ours and mlserver agree to {max(abs(a - b) for a, b in zip(p, q, strict=True)):.2e} on {len(p)} applicants"


def families_bench(args: argparse.Namespace, tmp: Path) -> int:
    import mlflow
    from proctree import tree_cpu_seconds

    from serving import BIN, Endpoint, bodies, free_port, run_wrk, start, stop, wait_ready

    names = [n for n in args.families.split(",") if n]
    champs = champions.chosen(args, names, tmp, "all")
    print("\nchampions: " + ", ".join(f"{n} {c.uri}" for n, c in champs.items()), flush=True)
    procs: list[Endpoint] = []
    targets: dict[str, dict[str, tuple[str, str]]] = {}  # champion -> endpoint -> (url, path)
    try:
        port = free_port()
        procs.append(start("floor", [sys.executable, str(Path(__file__).with_name("floor_app.py")), "-p", str(port),
                                     "-w", str(args.workers)], port, tmp / "floor.log"))
        floor = procs[-1].url
        env = None
        for name, champ in champs.items():
            port = free_port()
            serve = [str(BIN / "creditflow"), "serve", "-m", champ.uri, "-p", str(port), "-w", str(args.workers)]
            procs.append(start(f"ours-{name}", serve, port, tmp / f"ours-{name}.log"))
            targets[name] = {"ours": (procs[-1].url, "/invocations")}
            if args.no_mlserver:
                continue
            model_dir = Path(mlflow.artifacts.download_artifacts(champ.uri, dst_path=str(tmp / f"model-{name}")))
            env = env or mlserver_env.environment(model_dir / "requirements.txt", print)
            if env is None:
                args.no_mlserver = True
                continue
            ports = (free_port(), free_port(), free_port())
            procs.append(start(f"mlserver-{name}", mlserver_env.command(env, model_dir, tmp / f"mlserver-{name}",
                                                                       ports, args.workers),
                               ports[0], tmp / f"mlserver-{name}.log"))
            targets[name]["mlserver"] = (procs[-1].url, mlserver_env.PATH)
        wait_ready(procs)
        pids = {ep.url: ep.proc.pid for ep in procs}  # each endpoint's process tree: its CPU per request
        for name, champ in champs.items():
            ms = targets[name].get("mlserver")
            print(f"{name}: {_agree(targets[name]['ours'][0], ms[0] if ms else None, champ.held_out)}")
        scripts = {}
        for name, champ in champs.items():
            for rows in args.rows:
                scripts[name, rows, "ours"] = wrk_script(
                    tmp, f"{name}-{rows}", bodies(champ.held_out, rows))
                scripts[name, rows, "mlserver"] = wrk_script(tmp, f"{name}-{rows}-v2", _v2_bodies(champ.held_out, rows))
        for name, per in targets.items():  # a fresh server's first seconds are slower: not measured
            for endpoint, (url, path) in per.items():
                run_wrk(url, scripts[name, args.rows[0], endpoint], 2, min(args.seconds, 3), path)
        results: dict[tuple, list[dict]] = {}
        first = next(iter(champs))
        for run in range(args.runs):
            for rows in args.rows:
                for conc in args.concurrency:  # every endpoint in turn, the order reversed every other run
                    visits = [("floor", "floor", floor, "/invocations"),
                              *[(name, e, url, path) for name in champs for e, (url, path) in targets[name].items()]]
                    for name, endpoint, url, path in (visits if run % 2 == 0 else visits[::-1]):
                        script = (scripts[first, rows, "ours"] if name == "floor" else scripts[name, rows, endpoint])
                        pid, cpu = pids[url], tree_cpu_seconds(pids[url])
                        result = run_wrk(url, script, conc, args.seconds, path)
                        result["cpu_us"] = (tree_cpu_seconds(pid) - cpu) / max(result["requests"], 1) * 1e6
                        results.setdefault((name, rows, conc, endpoint), []).append(result)
            print(f"run {run + 1}/{args.runs} done", flush=True)
        in_process = _in_process(champs, calls=args.inproc_calls, rounds=4)
        model_work = _model_work(champs)
    finally:
        stop(procs)
    report(champs, results, in_process, args)
    report_ceiling(results, model_work, args)
    return 0 if all(r["errors"] == 0 for rs in results.values() for r in rs) else 1


def medians(rs: list[dict]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms", "cpu_us") if k in rs[0]}


def report(champs: dict, results: dict, in_process: dict[str, float], args: argparse.Namespace) -> None:
    floor = {k[1:3]: medians(v) for k, v in results.items() if k[3] == "floor"}
    print(f"\n{args.runs} run(s) x {args.seconds} s per endpoint and combination, endpoints in turn within each run; "
          f"medians; {args.workers} worker(s) each; load from wrk")
    print(f"{'family':<36} {'rows':>4} {'conc':>4} {'endpoint':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6} {'CPU us':>7}  ratios (CPU us: the endpoint's processes' user + system CPU per request)")
    for (rows, conc), m in sorted(floor.items()):
        errors = sum(r["errors"] for k, rs in results.items() if k[1:] == (rows, conc, "floor") for r in rs)
        print(f"{'(HTTP floor: constant answer)':<36} {rows:>4} {conc:>4} {'floor':<8} {m['rps']:>8.1f} "
              f"{m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} {errors:>6} {m['cpu_us']:>7.0f}")
    for name in champs:
        for rows in args.rows:
            for conc in args.concurrency:
                med = {e: medians(results[name, rows, conc, e]) for e in ("ours", "mlserver")
                       if (name, rows, conc, e) in results}
                for endpoint, m in med.items():
                    errors = sum(r["errors"] for r in results[name, rows, conc, endpoint])
                    ratios = ""
                    if endpoint == "ours":
                        ratios = (f"{100 * m['rps'] / floor[rows, conc]['rps']:.1f}% of the floor's req/s, CPU a "
                                  f"request x{m['cpu_us'] / floor[rows, conc]['cpu_us']:.1f} the floor's")
                        if "mlserver" in med:
                            ratios += (f"; ours/mlserver req/s x{m['rps'] / med['mlserver']['rps']:.2f}, "
                                       f"p50 x{m['p50_ms'] / med['mlserver']['p50_ms']:.2f}")
                    print(f"{name:<36} {rows:>4} {conc:>4} {endpoint:<8} {m['rps']:>8.1f} {m['p50_ms']:>8.2f} "
                          f"{m['p99_ms']:>8.2f} {errors:>6} {m['cpu_us']:>7.0f}  {ratios}")
    print(f"\nin process: the loaded pyfunc's predict on one applicant (reason codes included), median ms of "
          f"{args.inproc_calls} calls x 4 rounds, champions alternating")
    for name, ms in in_process.items():
        line = f"{name:<36} {ms:8.3f} ms"
        base = name.removeprefix(champions.CATEGORICAL)
        if base != name and base in in_process:
            line += f"  categorical / numeric {base}: x{ms / in_process[base]:.2f} in process"
            key, numeric = (name, 1, 1, "ours"), (base, 1, 1, "ours")
            if key in results and numeric in results:
                http = medians(results[key])["p50_ms"] / medians(results[numeric])["p50_ms"]
                line += f", x{http:.2f} over HTTP (p50, 1 row, c=1)"
        print(line)


def report_ceiling(results: dict, model_work: dict[str, dict[int, float]], args: argparse.Namespace) -> None:
    """The most of the floor's req/s an endpoint of each model could answer with one worker: every request costs at
    least the floor's CPU plus the model's own work on its applicant (CPU-bound worker: req/s is 1 / CPU a request),
    that work in calls of 8 applicants (what the endpoint's calls hold at concurrency 8) and, for reference, alone."""
    conc = 8 if 8 in args.concurrency else args.concurrency[-1]
    floor = [r["cpu_us"] for k, rs in results.items() if k[1:] == (1, conc, "floor") for r in rs]
    if not floor or 1 not in args.rows:
        return
    floor_us = statistics.median(floor)
    print(f"\nthe model's own work per applicant in process (compiled probability + exact reasons; no parse, "
          f"no JSON, no HTTP; CPU us, least of 25 batches' means), in calls of 8 applicants and alone, against the "
          f"floor's CPU a request at concurrency {conc} ({floor_us:.0f} us): the ceiling of any endpoint's share of "
          f"the floor's req/s")
    for name, work in model_work.items():
        served = results.get((name, 1, conc, "ours"), [])
        ours = statistics.median(r["cpu_us"] for r in served) if served else float("nan")
        print(f"{name:<36} model {work[8]:7.1f} us in eights ({work[1]:.1f} alone)  ceiling "
              f"{100 * floor_us / (floor_us + work[8]):5.1f}% ({100 * floor_us / (floor_us + work[1]):.1f}% alone)  "
              f"(ours: {ours:.0f} us a request, {100 * floor_us / ours:.1f}% by CPU)")
