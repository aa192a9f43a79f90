"""The monitoring policy: when realized performance, defaults or drift call for an alarm and a retrain.

One typed object loaded once from YAML (`experiments/monitoring.yaml`) and validated at the edge; the
performance report (`monitor.performance`) and the retraining loop read it. No MLflow here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from creditflow.specs import CHAMPION_URI, read_yaml, validated

DEFAULT_MONITORING_POLICY = Path("experiments/monitoring.yaml")


class MonitoringPolicy(BaseModel):
    """Margins and intervals of the performance alarms, the PSI that triggers a retrain, the cooldown."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    auc_margin: float = Field(0.02, ge=0, le=1)
    """Alarm when the latest vintage's realized AUC is credibly (its whole interval) this far below the
    champion's validation AUC."""
    default_rate_margin: float = Field(0.005, ge=0, le=1)
    """Alarm when the observed default rate is credibly (its whole interval) this far above the expected one."""
    interval_level: float = Field(0.95, gt=0.5, lt=1)
    """Confidence level of every bootstrap interval."""
    bootstrap_samples: int = Field(200, ge=50)
    """Bootstrap resamples per vintage."""
    bootstrap_seed: int = 0
    """Seed of the bootstrap, so a report is reproducible."""
    min_outcomes: int = Field(500, ge=20)
    """A vintage with fewer known outcomes (or no default, or no non-default) is not yet measurable."""
    retrain_psi: float = Field(0.25, gt=0)
    """A column (or the score) whose PSI reaches this calls for a retrain."""
    cooldown_months: int = Field(3, ge=0)
    """Months after a retrain during which no alarm triggers another one."""


def load_monitoring_policy(path: str | Path = DEFAULT_MONITORING_POLICY) -> MonitoringPolicy:
    """The policy from YAML; a missing file or a bad field is one SpecError line."""
    path = Path(path)
    return validated(MonitoringPolicy, read_yaml(path, "monitoring policy"), str(path))


def add_drift_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `creditflow monitor drift`."""
    p.add_argument("--model-uri", default="", help=f"the model (default {CHAMPION_URI})")
    p.add_argument("--deployment", default="", help="instead: a segmented deployment (serving/segments.yaml): "
                                                    "each segment's rows against its model, and overall")
    p.add_argument("--input", required=True, help="applicants: a .csv or .parquet file, or a directory of them")
    p.add_argument("--report", default="", help="also write the report as JSON to this file")
    p.add_argument("--log", action=argparse.BooleanOptionalAction, default=True,
                   help="log the report as an MLflow run (default: yes)")
    return p


def add_performance_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `creditflow monitor performance`."""
    p.add_argument("--outcomes", required=True, help="folder of outcome files named by vintage (YYYY-MM.csv)")
    p.add_argument("--predictions", default="predictions", help="the batch job's output directory")
    p.add_argument("--as-of", default="", help="judge on the outcomes known by this month, YYYY-MM (default: now)")
    p.add_argument("--policy", default=str(DEFAULT_MONITORING_POLICY), help="monitoring policy YAML")
    p.add_argument("--report", default="", help="also write the report as JSON to this file")
    p.add_argument("--log", action=argparse.BooleanOptionalAction, default=True,
                   help="log one MLflow run per vintage (default: yes)")
    return p
