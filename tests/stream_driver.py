"""Test driver: `creditflow stream score` in its own process, killed (SIGKILL) at a step of the scorer.

    python tests/stream_driver.py --die-at STEP -- <creditflow stream score options>

STEP: "scored" (the batch is scored, nothing written: sums, predictions and acknowledgements are one
transaction) or "published" (that transaction is committed). The process kills itself with SIGKILL there, as
an operator's `kill -9` or the OOM killer would.
"""

import argparse
import os
import signal
import sys

from creditflow.cli import build_parser, quiet_downloads, stream_command
from creditflow.errors import CreditflowError


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--")
    own = argparse.ArgumentParser()
    own.add_argument("--die-at", required=True)
    opts = own.parse_args(argv[:split])
    args = build_parser().parse_args(["stream", "score", *argv[split + 1:]])

    def on_step(name: str) -> None:
        if name == opts.die_at:
            os.kill(os.getpid(), signal.SIGKILL)

    try:
        with quiet_downloads():  # as creditflow.cli.main runs every command
            return stream_command(args, on_step)
    except CreditflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
