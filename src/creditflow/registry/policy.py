"""What a promotion is asked to do and the policy its gates apply: typed, validated at the edge.

`PromotionPolicy` is loaded once from YAML (`experiments/promotion.yaml`); `PromotionRequest` is built
from the command line by the one argparse builder that `creditflow promote` and
`scripts/promote_model.py` share. No MLflow here, so the CLI's parser stays cheap to build.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from creditflow.errors import SpecError
from creditflow.specs import DEFAULT_MODEL_NAME, first_error, read_yaml, validated

DEFAULT_POLICY = Path("experiments/promotion.yaml")
Alias = Literal["champion", "challenger"]


class PromotionPolicy(BaseModel):
    """The gates' thresholds, the bootstrap that compares two models, the shadow and monotone gates, the lease."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_roc_auc: float = Field(0.75, ge=0, le=1)
    max_calibration_error: float = Field(0.05, gt=0, le=1)
    max_ks_drop: float = Field(0.05, ge=0, le=1)
    min_auc_gain: float = Field(0.005, ge=-1, le=1)  # (b) "beats" means better: an exact copy gains 0 and is refused
    min_auc_gain_ci_low: float = Field(-0.01, ge=-1, le=1)
    bootstrap_samples: int = Field(500, ge=50)
    bootstrap_level: float = Field(0.95, gt=0.5, lt=1)
    bootstrap_seed: int = 0
    eval_rows: int = Field(10_000, ge=200)
    eval_seed: int = 0
    lease_seconds: float = Field(600, gt=0)
    shadow_min_rows: int = Field(0, ge=0)  # (e) rows compared on live traffic before @champion; 0: not required
    shadow_max_flip_rate: float | None = Field(None, ge=0, le=1)  # (e) approve/decline flips allowed; None: no limit
    monotone_rows: int = Field(200, ge=1)  # (f) held-out applicants whose declared columns are varied
    monotone_grid: int = Field(20, ge=2)  # (f) values of each declared column, spread over its observed range
    monotone_tolerance: float = Field(1e-9, ge=0)  # (f) largest move of P(default) against the direction allowed


class PromotionRequest(BaseModel):
    """One command: promote a version (or a run's version) to an alias, or roll the champion back."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(DEFAULT_MODEL_NAME, min_length=1)
    version: str | None = Field(None, pattern=r"^[1-9][0-9]*$")
    run_id: str | None = Field(None, min_length=1)
    alias: Alias = "champion"
    rollback: bool = False
    dry_run: bool = False
    force: bool = False
    reason: str = ""
    data: str | None = None
    data_rows: Literal["held_out", "all"] = "held_out"  # the gates score --data's held-out split, or all its rows

    @model_validator(mode="after")
    def _consistent(self) -> PromotionRequest:
        chosen = [flag for flag, value in (("--version", self.version), ("--run-id", self.run_id),
                                           ("--rollback", self.rollback)) if value]
        if len(chosen) != 1:
            raise ValueError("give exactly one of --version, --run-id or --rollback"
                             + (f" (got {', '.join(chosen)})" if chosen else ""))
        if self.rollback and self.alias != "champion":
            raise ValueError("--rollback restores the previous champion; it takes no --alias challenger")
        if self.force and not self.reason.strip():
            raise ValueError('--force needs --reason "why the gates are overridden"')
        if self.rollback and self.force:
            raise ValueError("--rollback and --force do not go together")
        if self.data_rows == "all" and not self.data:
            raise ValueError("--data-rows all scores every row of --data: give --data FILE")
        return self


def load_policy(path: str | Path = DEFAULT_POLICY) -> PromotionPolicy:
    path = Path(path)
    return validated(PromotionPolicy, read_yaml(path), str(path))


def _flag(text: str) -> bool:
    """A flag that also takes a value, so MLproject can pass `--dry-run false`."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_promote_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The promotion options, shared by `creditflow promote` and `scripts/promote_model.py`."""
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help="registered model name")
    parser.add_argument("--version", default="", help="the model version to promote")
    parser.add_argument("--run-id", default="", help="promote the version registered from this training run")
    parser.add_argument("--alias", default="champion", choices=["champion", "challenger"],
                        help="champion (Production) or challenger (Staging)")
    parser.add_argument("--rollback", nargs="?", const=True, default=False, type=_flag, metavar="BOOL",
                        help="restore the previous champion")
    parser.add_argument("--dry-run", nargs="?", const=True, default=False, type=_flag, metavar="BOOL",
                        help="evaluate the gates and print the decision; change nothing")
    parser.add_argument("--force", nargs="?", const=True, default=False, type=_flag, metavar="BOOL",
                        help="promote although gates (a)-(c), (e) or (f) fail; needs --reason (gate (d) still applies)")
    parser.add_argument("--reason", default="", help="why: recorded in the audit run and on the version")
    parser.add_argument("--data", default="", help="CSV/Parquet evaluation data instead of the challenger's data set")
    parser.add_argument("--data-rows", default="held_out", choices=["held_out", "all"],
                        help="the gates score the held-out split of --data (a copy of the challenger's data set), "
                             "or all its rows (data neither model trained on, e.g. a later labelled month)")
    parser.add_argument("--policy", default=str(DEFAULT_POLICY), help="promotion policy YAML (gate thresholds)")
    return parser


def request_from_args(args: argparse.Namespace) -> PromotionRequest:
    """The validated request; a contradictory command line is a one-line SpecError (exit 2)."""
    fields = {"name": args.name, "version": args.version or None, "run_id": args.run_id or None,
              "alias": args.alias, "rollback": args.rollback, "dry_run": args.dry_run, "force": args.force,
              "reason": args.reason, "data": args.data or None, "data_rows": args.data_rows}
    try:
        return PromotionRequest.model_validate(fields)
    except ValidationError as exc:
        where, msg = first_error(exc)
        raise SpecError(f"bad promotion request: {where + ': ' if where else ''}{msg}") from None
