"""Test driver: `creditflow score batch` in its own process, ended at a step of the batch job.

    python tests/batch_driver.py --die-at STEP [--go FILE] -- <creditflow score batch options>

STEP: a step of `serving.batch.job.run_batch`: "committed" (the SQL rows), "exchanged-scored",
"published-scored", "exchanged-quarantine", "published-quarantine". The process ends there with
os._exit (exit code 137, no cleanup), as a kill would. Its Spark JVM and Python workers outlive it:
the caller kills them (every process of its session).

--go: start the job's Spark session (its config, as the command would), then wait until FILE exists
before running the command, whose own `start_spark` gets that session: the caller's work overlaps the
imports and the JVM's start-up. Nothing of the batch (model, input, output) is read before FILE exists.
"""

import argparse
import os
import sys
import time
from pathlib import Path

from creditflow.cli import build_parser, console_logging, quiet_downloads, score_batch_command
from creditflow.errors import CreditflowError

KILLED = 137
WAIT_SECONDS = 300  # a gate that never opens ends the driver instead of leaving it waiting


def warm_up(args: argparse.Namespace, go: Path) -> None:
    """The Spark session the command will start, started now; then wait for `go`."""
    from creditflow.serving.batch.spark import load_batch_config, start_spark

    start_spark(load_batch_config(args.config or None, master=args.master))
    print("[driver] spark started", flush=True)
    deadline = time.monotonic() + WAIT_SECONDS
    while not go.exists():
        if time.monotonic() > deadline:
            sys.exit(f"[driver] {go} did not appear within {WAIT_SECONDS} s")
        time.sleep(0.01)


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--")
    own = argparse.ArgumentParser()
    own.add_argument("--die-at", required=True)
    own.add_argument("--go", type=Path)
    opts = own.parse_args(argv[:split])
    args = build_parser().parse_args(["score", "batch", *argv[split + 1:]])

    def on_step(name: str) -> None:
        print(f"[driver] step {name}", flush=True)
        if name == opts.die_at:
            os._exit(KILLED)

    try:
        with quiet_downloads(), console_logging():  # as creditflow.cli.main runs every command
            if opts.go is not None:
                warm_up(args, opts.go)
            return score_batch_command(args, on_step)
    except CreditflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
