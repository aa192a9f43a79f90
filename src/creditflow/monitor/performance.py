"""Realized performance by vintage: how the scored batches did once their outcomes became known.

Per vintage (a batch id, YYYY-MM): rows with outcomes, realized ROC AUC and KS with bootstrap intervals,
expected default rate (mean predicted P(default)) against the observed one with a Wilson interval, and the
calibration error. The latest measurable vintage alarms when its AUC interval lies wholly more than the
policy's margin below the scoring model's held-out AUC from training, or when the observed default rate's
interval lies wholly above the expected rate (plus a margin): the interval decides, not the point estimate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric
from scipy.stats import binomtest

from creditflow.errors import CreditflowError, DataError
from creditflow.monitor.charts import vintages_figure
from creditflow.monitor.drift import MONITOR_EXPERIMENT, write_report
from creditflow.monitor.outcomes import Vintage, join_vintages, read_batches
from creditflow.monitor.policy import MonitoringPolicy
from creditflow.registry.client import (
    check_tracking_server,
    experiment_id,
    held_out_auc,
    quoted,
    resolve_model,
    version_uri,
)
from creditflow.train.metrics import bootstrap_intervals, calibration_error, ks_statistic, rank_auc

logger = logging.getLogger(__name__)

METRICS = ("realized_roc_auc", "realized_ks", "expected_default_rate", "observed_default_rate", "calibration_error")
INTERVALS = {"realized_roc_auc": "roc_auc", "realized_ks": "ks", "calibration_error": "calibration_error"}
MEASURED = "measured"


class PerformanceAlert(CreditflowError):
    """The latest vintage performs credibly worse than promised: the report is shown, exit 3 tells a scheduler."""

    exit_code = 3


@dataclass(frozen=True)
class VintagePerformance:
    """One vintage's realized figures (empty when not yet measurable) and its alarms."""

    vintage: str
    model_name: str
    model_version: str
    scored: int
    outcomes: int
    unknown: int
    pending: int
    status: str  # MEASURED, or why not yet measurable
    validation_roc_auc: float | None
    figures: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    alarms: tuple[str, ...] = ()

    @property
    def measured(self) -> bool:
        return self.status == MEASURED

    @property
    def alarm(self) -> bool:
        return bool(self.alarms)

    @property
    def realized_roc_auc(self) -> float | None:
        return self.figures.get("realized_roc_auc")

    @property
    def auc_interval(self) -> tuple[float, float] | None:
        return self.intervals.get("realized_roc_auc")

    def line(self) -> str:
        head = (f"{self.vintage:<8} v{self.model_version or '-':<4} {self.scored:>8,} {self.outcomes:>8,} "
                f"{self.unknown:>7,}")
        if not self.measured:
            return f"{head}  {self.status}"
        f, ci = self.figures, self.intervals
        auc_ci, ks_ci, rate_ci = ci["realized_roc_auc"], ci["realized_ks"], ci["observed_default_rate"]
        return (f"{head}  {f['realized_roc_auc']:.4f} [{auc_ci[0]:.4f}, {auc_ci[1]:.4f}]  "
                f"{f['realized_ks']:.3f} [{ks_ci[0]:.3f}, {ks_ci[1]:.3f}]  {f['expected_default_rate']:8.2%}  "
                f"{f['observed_default_rate']:6.2%} [{rate_ci[0]:6.2%}, {rate_ci[1]:6.2%}]  "
                f"{f['calibration_error']:.4f}  {'ALARM' if self.alarms else 'ok'}")

    def to_dict(self) -> dict[str, Any]:
        return {"vintage": self.vintage, "model_name": self.model_name, "model_version": self.model_version,
                "scored": self.scored, "outcomes": self.outcomes, "unknown_outcomes": self.unknown,
                "pending_outcomes": self.pending, "status": self.status,
                "validation_roc_auc": self.validation_roc_auc, **self.figures,
                "intervals": {k: list(v) for k, v in self.intervals.items()}, "alarms": list(self.alarms)}


@dataclass(frozen=True)
class PerformanceReport:
    """Every vintage of a predictions folder judged on the outcomes known by `as_of`."""

    as_of: str
    predictions: str
    outcomes: str
    policy: MonitoringPolicy
    vintages: list[VintagePerformance]
    unscored: dict[str, int]  # outcomes of months no batch scored

    @property
    def latest(self) -> VintagePerformance | None:
        """The latest measurable vintage: the one that decides the alarm."""
        measured = [v for v in self.vintages if v.measured]
        return measured[-1] if measured else None

    @property
    def alarms(self) -> tuple[str, ...]:
        """Why the latest measurable vintage alarms (empty: no alarm)."""
        return self.latest.alarms if self.latest else ()

    @property
    def alarm(self) -> bool:
        return bool(self.alarms)

    def vintage(self, name: str) -> VintagePerformance | None:
        return next((v for v in self.vintages if v.vintage == name), None)

    @property
    def unknown(self) -> int:
        return sum(v.unknown for v in self.vintages)

    def table(self) -> str:
        level = f"{self.policy.interval_level:.0%}"
        lines = [f"[performance] vintages of {self.predictions} against outcomes in {self.outcomes} known by "
                 f"{self.as_of} ({level} intervals, {self.policy.bootstrap_samples} bootstrap samples)",
                 f"{'vintage':<8} {'model':<5} {'scored':>8} {'outcomes':>8} {'unknown':>7}  {'realized AUC [CI]':<23}"
                 f"  {'KS [CI]':<20}  {'expected':>8}  {'observed [CI]':<22}  cal.err  alarm"]
        lines += [v.line() for v in self.vintages]
        lines += [f"  {v.vintage}: {alarm}" for v in self.vintages for alarm in v.alarms]
        if self.unscored:
            lines.append("outcomes of months no batch scored: "
                         + ", ".join(f"{m} ({n:,})" for m, n in self.unscored.items()))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"as_of": self.as_of, "predictions": self.predictions, "outcomes": self.outcomes,
                "policy": self.policy.model_dump(), "latest": self.latest.vintage if self.latest else None,
                "alarms": list(self.alarms), "unknown_outcomes": self.unknown, "unscored_months": self.unscored,
                "vintages": [v.to_dict() for v in self.vintages]}


def measure(v: Vintage, validation_auc: float | None, policy: MonitoringPolicy) -> VintagePerformance:
    """A vintage's realized figures with their intervals and alarms, or why it cannot be measured yet."""
    base = dict(vintage=v.vintage, model_name=v.model_name, model_version=v.model_version, scored=v.scored,
                outcomes=len(v.y), unknown=v.unknown, pending=v.pending, validation_roc_auc=validation_auc)
    defaults = int(v.y.sum())
    if len(v.y) < policy.min_outcomes:
        return VintagePerformance(**base, status=f"not yet measurable: {len(v.y):,} outcome(s) known, "
                                                 f"needs {policy.min_outcomes:,}")
    if defaults in (0, len(v.y)):
        return VintagePerformance(**base, status="not yet measurable: the known outcomes are all of one class")
    figures = {"realized_roc_auc": rank_auc(v.y, v.p), "realized_ks": ks_statistic(v.y, v.p),
               "expected_default_rate": float(v.p.mean()), "observed_default_rate": defaults / len(v.y),
               "calibration_error": calibration_error(v.y, v.p)}
    boot = bootstrap_intervals(v.y, v.p, 0.5, policy.bootstrap_samples, policy.bootstrap_seed, policy.interval_level)
    rate = binomtest(defaults, len(v.y)).proportion_ci(policy.interval_level, method="wilson")
    intervals = {name: boot[key] for name, key in INTERVALS.items()}
    intervals["observed_default_rate"] = (float(rate.low), float(rate.high))
    return VintagePerformance(**base, status=MEASURED, figures=figures, intervals=intervals,
                              alarms=_alarms(figures, intervals, validation_auc, policy))


def _alarms(figures: dict[str, float], intervals: dict[str, tuple[float, float]], validation_auc: float | None,
            policy: MonitoringPolicy) -> tuple[str, ...]:
    alarms = []
    low, high = intervals["realized_roc_auc"]
    if validation_auc is not None and high < validation_auc - policy.auc_margin:
        by = f"more than {policy.auc_margin} " if policy.auc_margin else ""
        alarms.append(f"realized AUC {figures['realized_roc_auc']:.4f} [{low:.4f}, {high:.4f}] is credibly {by}"
                      f"below the model's held-out AUC {validation_auc:.4f}")
    low, high = intervals["observed_default_rate"]
    expected = figures["expected_default_rate"]
    if low > expected + policy.default_rate_margin:
        alarms.append(f"observed default rate {figures['observed_default_rate']:.2%} [{low:.2%}, {high:.2%}] is "
                      f"credibly above the expected {expected:.2%}"
                      + (f" + {policy.default_rate_margin:.2%}" if policy.default_rate_margin else ""))
    return tuple(alarms)


def performance_report(predictions: str | Path, outcomes: str | Path, policy: MonitoringPolicy,
                       as_of: str | None = None) -> PerformanceReport:
    """Every batch under `predictions` joined with the outcomes in `outcomes` known by `as_of` (default: now)."""
    as_of = as_of or datetime.now(UTC).strftime("%Y-%m")
    batches = read_batches(predictions)
    latest = batches[-1].lineage
    if not latest["model_name"]:
        raise DataError(f"{predictions}: batch {batches[-1].batch_id} was scored by a model outside the registry "
                        f"(run {latest['run_id']}); its held-out AUC and dataset spec are unknown")
    spec = resolve_model(version_uri(latest["model_name"], latest["model_version"])).dataset
    vintages, unscored = join_vintages(batches, outcomes, spec, as_of)
    client, promised = MlflowClient(), {}
    for v in vintages:
        key = (v.model_name, v.model_version)
        if key not in promised:
            promised[key] = held_out_auc(client, *key) if v.model_name else None
    measured = [measure(v, promised[(v.model_name, v.model_version)], policy) for v in vintages]
    return PerformanceReport(as_of, str(predictions), str(outcomes), policy, measured, unscored)


def log_performance(report: PerformanceReport) -> list[str]:
    """One run per vintage in the monitoring experiment (reused when the vintage is reported again, so its
    figures follow the outcomes as they arrive); the latest run also holds the chart over vintages and the report."""
    check_tracking_server()
    client = MlflowClient()
    experiment = experiment_id(client, MONITOR_EXPERIMENT)
    runs = []
    for v in report.vintages:
        run_id = _vintage_run(client, experiment, v)
        client.set_tag(run_id, "status", v.status)
        client.set_tag(run_id, "as_of", report.as_of)
        client.set_tag(run_id, "alarm", "; ".join(v.alarms) or "none")
        counts = {"outcomes": v.outcomes, "unknown_outcomes": v.unknown, "pending_outcomes": v.pending}
        bounds = {f"{k}_ci_{side}": b for k, (low, high) in v.intervals.items() for side, b in (("low", low),
                                                                                               ("high", high))}
        stamp = int(datetime.now(UTC).timestamp() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(x), stamp, 0)
                                          for k, x in {**counts, **v.figures, **bounds}.items()])
        client.set_terminated(run_id)
        runs.append(run_id)
    if runs:
        client.log_figure(runs[-1], vintages_figure(report.vintages, report.as_of, report.policy.interval_level),
                          "performance_over_vintages.png")
        client.log_dict(runs[-1], report.to_dict(), "performance_report.json")
    return runs


def _vintage_run(client: MlflowClient, experiment: str, v: VintagePerformance) -> str:
    """The vintage's run for this model version, or a new one."""
    found = client.search_runs([experiment], f"tags.`creditflow.kind` = 'performance' and tags.vintage = "
                                             f"{quoted(v.vintage)} and tags.model_version = {quoted(v.model_version)}"
                                             f" and tags.model_name = {quoted(v.model_name)}", max_results=1)
    if found:
        return found[0].info.run_id
    tags = {"creditflow.kind": "performance", "vintage": v.vintage, "model_name": v.model_name,
            "model_version": v.model_version}
    return client.create_run(experiment, tags=tags, run_name=f"performance {v.vintage}").info.run_id


def monitor_performance(predictions: str | Path, outcomes: str | Path, policy: MonitoringPolicy,
                        as_of: str | None = None, log: bool = True, report_path: str | Path = "") -> PerformanceReport:
    """Report every vintage's realized performance: shown (logged as text), written to `report_path` if given,
    and with `log` as MLflow runs."""
    report = performance_report(predictions, outcomes, policy, as_of)
    logger.info("%s", report.table())
    if report_path:
        write_report(report, report_path)
    if log:
        runs = log_performance(report)
        logger.info("[performance] %d vintage run(s) in MLflow experiment %s", len(runs), MONITOR_EXPERIMENT)
    return report


def alert_on(report: PerformanceReport) -> None:
    """Outcomes of ids their batch never scored: DataError (exit 2); else the latest measurable vintage's alarms:
    PerformanceAlert (exit 3)."""
    if report.unknown:
        raise DataError(f"{report.unknown:,} outcome(s) in {report.outcomes} have ids their batch never scored "
                        "(counted in the report's unknown column)")
    if report.alarms:
        raise PerformanceAlert(f"vintage {report.latest.vintage}: " + "; ".join(report.alarms))
