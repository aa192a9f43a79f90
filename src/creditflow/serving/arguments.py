"""The command-line options of the serving commands: `serve`, `features load`, `stream score` (argparse only:
the CLI's parser stays cheap to build)."""

from __future__ import annotations

import argparse

from creditflow.specs import CHAMPION_URI


def add_reload_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reload-seconds", type=float, default=None,
                   help="how often an alias is re-resolved and a new version swapped in (default 30; 0: pinned)")


def add_serve_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", default="", help="serving config YAML, e.g. serving/online.yaml")
    p.add_argument("-m", "--model-uri", default=None, help=f"model to serve (default {CHAMPION_URI})")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("-p", "--port", type=int, default=None, help="port (default 5001)")
    p.add_argument("-w", "--workers", type=int, default=None, help="uvicorn worker processes (default 1)")
    p.add_argument("--feature-store", default=None,
                   help="redis://host:port/db of precomputed features: enables POST /invocations/by-id")
    add_reload_argument(p)
    p.add_argument("--shadow", default=None,
                   help="a model scored on the same requests off the response path, e.g. models:/NAME@challenger")
    return p


def add_features_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model-uri", default=CHAMPION_URI, help="whose dataset spec to read by")
    p.add_argument("--input", required=True, help="applicants with their id column: .csv or .parquet, or a directory")
    p.add_argument("--store", default="redis://127.0.0.1:6379/0", help="feature store URL (default: local Redis)")
    p.add_argument("--ttl-hours", type=float, default=0, help="expire each applicant's features (0: never)")
    return p


def add_stream_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", default="serving/stream.yaml", help="stream config YAML")
    p.add_argument("--model-uri", default=None, help="override the config's model")
    p.add_argument("--store", default=None, help="override the config's Redis URL")
    p.add_argument("--max-events", type=int, default=0, help="stop after this many events (0: never)")
    p.add_argument("--idle-seconds", type=float, default=0, help="stop after this long without events (0: never)")
    add_reload_argument(p)
    return p
