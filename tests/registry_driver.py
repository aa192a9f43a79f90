"""Test driver: `creditflow promote` in its own process, with the library's step hook.

    python tests/registry_driver.py [--barrier DIR --parties N] [--die-at STEP] -- <creditflow promote options>

--barrier: wait before taking the lease until N processes reached it (a real race, not a staggered one).
--die-at: end the process with os._exit at that step, as a kill between two registry calls would.
"""

import argparse
import os
import sys
import time
from pathlib import Path

from creditflow.cli import build_parser, promote_command, quiet_downloads
from creditflow.errors import CreditflowError

KILLED = 137


def step_hook(barrier: Path | None, parties: int, die_at: str | None):
    def on_step(name: str) -> None:
        if name == "acquiring" and barrier is not None:
            (barrier / str(os.getpid())).touch()
            deadline = time.monotonic() + 60
            while len(list(barrier.iterdir())) < parties and time.monotonic() < deadline:
                time.sleep(0.002)
        if name == die_at:
            os._exit(KILLED)

    return on_step


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--")
    own = argparse.ArgumentParser()
    own.add_argument("--barrier", type=Path)
    own.add_argument("--parties", type=int, default=2)
    own.add_argument("--die-at")
    opts = own.parse_args(argv[:split])
    args = build_parser().parse_args(["promote", *argv[split + 1:]])
    try:
        with quiet_downloads():  # as creditflow.cli.main runs every command
            return promote_command(args, step_hook(opts.barrier, opts.parties, opts.die_at))
    except CreditflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
