"""Promote a registered model version to @champion/@challenger through the gates, or roll back.

    python scripts/promote_model.py --name credit-default --version 3 [--dry-run]
    python scripts/promote_model.py --name credit-default --run-id RUN --alias challenger
    python scripts/promote_model.py --name credit-default --rollback
    python scripts/promote_model.py --name credit-default --version 4 --force --reason "approved by risk (ticket 123)"

Exit codes: 0 promoted (or nothing to do), 3 refused by a gate or by a concurrent promotion,
2 bad usage, unknown model/version/run, or an unreachable tracking server. Same as `creditflow promote`.
"""

import sys

from creditflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["promote", *sys.argv[1:]]))
