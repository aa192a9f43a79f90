"""Test driver: `creditflow score batch` in its own process, ended at a step of the batch job.

    python tests/batch_driver.py --die-at STEP -- <creditflow score batch options>

STEP: a step of `serving.batch.job.run_batch`: "committed" (the SQL rows), "exchanged-scored",
"published-scored", "exchanged-quarantine", "published-quarantine". The process ends there with
os._exit (exit code 137, no cleanup), as a kill would. Its Spark JVM and Python workers outlive it:
the caller kills them (every process of its session).
"""

import argparse
import os
import sys

from creditflow.cli import build_parser, console_logging, quiet_downloads, score_batch_command
from creditflow.errors import CreditflowError

KILLED = 137


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--")
    own = argparse.ArgumentParser()
    own.add_argument("--die-at", required=True)
    opts = own.parse_args(argv[:split])
    args = build_parser().parse_args(["score", "batch", *argv[split + 1:]])

    def on_step(name: str) -> None:
        print(f"[driver] step {name}", flush=True)
        if name == opts.die_at:
            os._exit(KILLED)

    try:
        with quiet_downloads(), console_logging():  # as creditflow.cli.main runs every command
            return score_batch_command(args, on_step)
    except CreditflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
