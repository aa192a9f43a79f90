#!/usr/bin/env bash
# Start the MLflow tracking server after start-up checks (the logic is in src/creditflow/ops/tracking_server.py).
#   scripts/start_tracking_server.sh --profile local                  # SQLite ./mlflow.db + ./mlartifacts
#   scripts/start_tracking_server.sh --profile production [--auth]    # PostgreSQL + S3, from the env or .env
# Options: --host (127.0.0.1) --port (5000) --workers (1) --create-bucket --env-file --check-only; see --help.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_BIN="${VENV_BIN:-$ROOT/.venv/bin}"
export PATH="$VENV_BIN:$PATH"
exec "$VENV_BIN/creditflow" tracking-server "$@"
