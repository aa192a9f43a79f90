"""Test driver: `creditflow promote` in its own process, with the library's step hook.

    python tests/registry_driver.py [--barrier DIR --parties N] [--die-at STEP] [--pause-at STEP --gate DIR]
        -- <creditflow promote options>
    python tests/registry_driver.py --serve

--barrier: wait before taking the lease until N processes reached it (a real race, not a staggered one).
--die-at: end the process with os._exit at that step, as a kill between two registry calls would.
--pause-at: at that step, create DIR/reached and wait until the test creates DIR/go (a holder that stalls).
--serve: read one driver command line per stdin line (a JSON list), run each in a forked child and answer
    one JSON line {"code": exit code, "output": stdout and stderr}: the kill loops pay the imports once,
    and each promotion still ends in a process of its own that dies with os._exit.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from creditflow.cli import build_parser, promote_command, quiet_downloads
from creditflow.errors import CreditflowError

KILLED = 137
WAIT_SECONDS = 120  # a barrier or gate that never opens ends the driver instead of hanging the test


def wait_for(condition) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.002)


def step_hook(opts: argparse.Namespace):
    def on_step(name: str) -> None:
        if name == "acquiring" and opts.barrier is not None:
            (opts.barrier / str(os.getpid())).touch()
            wait_for(lambda: len(list(opts.barrier.iterdir())) >= opts.parties)
        if name == opts.pause_at:
            (opts.gate / "reached").touch()
            wait_for((opts.gate / "go").exists)
        if name == opts.die_at:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(KILLED)

    return on_step


def run(argv: list[str]) -> int:
    split = argv.index("--")
    own = argparse.ArgumentParser()
    own.add_argument("--barrier", type=Path)
    own.add_argument("--parties", type=int, default=2)
    own.add_argument("--die-at")
    own.add_argument("--pause-at")
    own.add_argument("--gate", type=Path)
    opts = own.parse_args(argv[:split])
    args = build_parser().parse_args(["promote", *argv[split + 1:]])
    try:
        with quiet_downloads():  # as creditflow.cli.main runs every command
            return promote_command(args, step_hook(opts))
    except CreditflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def in_child(argv: list[str]) -> tuple[int, str]:
    """Run one command in a forked child with its output in a file; (exit code, output)."""
    with tempfile.TemporaryFile("w+") as sink:
        pid = os.fork()
        if pid == 0:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            code = run(argv)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        sink.seek(0)
        return os.waitstatus_to_exitcode(status), sink.read()


def serve() -> int:
    import mlflow.pyfunc  # noqa: F401  what a promotion loads (~4 s), imported once before the first fork
    import sklearn.ensemble  # noqa: F401
    import xgboost  # noqa: F401

    import creditflow.model.pyfunc  # noqa: F401
    import creditflow.registry.gates  # noqa: F401

    for line in sys.stdin:
        code, output = in_child(json.loads(line))
        print(json.dumps({"code": code, "output": output}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else run(sys.argv[1:]))
