"""The command-line options of `creditflow segments`, `retrain` and `replay` (argparse only: the CLI's parser
stays cheap to build, as `registry.policy.add_promote_arguments`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from creditflow.data.calendar import DRIFT_KINDS
from creditflow.specs import DEFAULT_MODEL_NAME


def add_segments_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--spec", default="experiments/segmented.yaml", help="experiment spec YAML with `segments:`")
    p.add_argument("--data", default="", help="CSV/Parquet file (with the segment column) instead of the spec's source")
    p.add_argument("--master", default="", help="train the segments on Spark, e.g. spark://host:7077 or local[2] "
                                                "(default: worker processes on this machine's cores)")
    p.add_argument("--policy", default="experiments/promotion.yaml", help="promotion policy YAML (gate thresholds)")
    return p


def add_retrain_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--window", type=int, default=6, help="labelled months to train on (default 6)")
    p.add_argument("--months", default="data/months/", help="folder of applicants/ and outcomes/ (data generate)")
    p.add_argument("--as-of", default="", help="the month outcomes are known by, YYYY-MM (default: the latest "
                                               "month of applicants)")
    p.add_argument("--name", default=DEFAULT_MODEL_NAME, help="registered model whose champion is retrained")
    p.add_argument("--policy", default="experiments/promotion.yaml", help="promotion policy YAML (gate thresholds)")
    p.add_argument("--output", default="data/retrain/", help="where the window and the evaluation month are written")
    return p


def add_replay_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", default="experiments/replay.yaml", help="replay spec YAML")
    p.add_argument("--drift", default="", choices=("", *DRIFT_KINDS), help="override the spec's drift kind")
    p.add_argument("--rows-per-month", type=int, default=0, help="override the spec's applicants a month (0: spec's)")
    p.add_argument("--output", default="", help="override the spec's output folder (months/, predictions/, retrain/)")
    p.add_argument("--batch-config", default="serving/batch/job.yaml", help="Spark settings of the batch scoring")
    return p


def add_retraining_parsers(sub: argparse._SubParsersAction, retrain: Callable[[argparse.Namespace], int],
                           replay: Callable[[argparse.Namespace], int]) -> None:
    """`creditflow retrain` and `creditflow replay`, handled by the CLI's `retrain` and `replay`."""
    p = sub.add_parser("retrain", help="train the champion's spec on the most recent labelled months, then promote "
                                       "it through the gates if it is better (exit 0 promoted, 3 refused)")
    add_retrain_arguments(p).set_defaults(handler=retrain)
    p = sub.add_parser("replay", help="replay months of drifting generated applicants end to end: score, monitor, "
                                      "retrain and promote through the gates (one line a month)")
    add_replay_arguments(p).set_defaults(handler=replay)
