"""The replay (`mlflow run . -e replay`, `make demo-decay`): months of drifting applicants, end to end.

A first champion learns from the embedded default; then, month by month, it batch-scores the month's applicants
(batch id = the month), the outcomes known by then judge the earlier vintages (`monitor.performance`), the month's
applicants are compared with the champion's training data (`monitor.drift`), and when either alarms outside the
cooldown the champion's own spec is retrained on the labelled months and goes through the gates
(`pipelines.retrain`): a retrained model that is not better is refused and the champion stays. The generator's
true probabilities give each vintage's achievable AUC, which no model sees. Spark starts once for all months.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow import MlflowClient
from pydantic import BaseModel, ConfigDict, Field

from creditflow.data.calendar import MONTH_PATTERN, DriftKind, add_months
from creditflow.data.dataset import load_dataset
from creditflow.data.io import read_table
from creditflow.data.months import KNOWN_MONTH, PROBABILITY, generate_months
from creditflow.data.synthetic import ID_COLUMN, TARGET
from creditflow.errors import CreditflowError, DataError
from creditflow.monitor.drift import MONITOR_EXPERIMENT, DriftReport, drift_report, log_report
from creditflow.monitor.performance import PerformanceReport, log_performance, performance_report
from creditflow.monitor.policy import MonitoringPolicy, load_monitoring_policy
from creditflow.pipelines.retrain import Retrained, retrain
from creditflow.registry.client import check_tracking_server, require_model, version_uri
from creditflow.registry.policy import PromotionPolicy, PromotionRequest, load_policy
from creditflow.registry.promote import promote
from creditflow.scoped import log_level
from creditflow.serving.batch.job import run_batch
from creditflow.serving.batch.plan import plan_batch
from creditflow.serving.batch.spark import SparkConfig, load_batch_config, start_spark
from creditflow.specs import load_config, load_experiment_spec
from creditflow.train.metrics import rank_auc
from creditflow.train.run import detach_project_run, train_and_log

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

MONTH = MONTH_PATTERN.pattern


class ReplaySpec(BaseModel):
    """What is replayed (experiments/replay.yaml): the months, the first champion, the retrain window, the policies.

    Spec files are relative to the replay spec's folder; `output` (months/, predictions/, retrain/) to the working
    directory.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    months: int = Field(18, ge=2)
    start: str = Field("2025-01", pattern=MONTH)
    drift: DriftKind = "concept"
    onset: str | None = Field("2025-10", pattern=MONTH)
    rows_per_month: int = Field(20_000, ge=500)
    outcome_lag: int = Field(1, ge=0)
    seed: int = 42
    experiment: str = "replay_champion.yaml"  # the first champion's spec, which every retrain then reuses
    first_rows: int = Field(50_000, ge=1_000)  # rows of the embedded default the first champion learns from
    name: str = Field("credit-default-replay", min_length=1)  # the registered model the replay promotes
    window: int = Field(4, ge=1)  # labelled months a retrain learns from
    promotion_policy: str = "promotion.yaml"
    monitoring_policy: str = "monitoring.yaml"
    output: str = "replay"


@dataclass(frozen=True)
class MonthStep:
    """One replayed month: who scored it, what the monitors saw, what was done."""

    month: str
    champion: str  # the version that scored the month's applicants
    vintage: str | None  # the latest vintage measurable this month
    realized_auc: float | None
    achievable_auc: float | None
    top_psi: float
    top_column: str
    alarms: tuple[str, ...]
    action: str
    retrained: Retrained | None = None

    def line(self) -> str:
        auc = (f"realized AUC {self.realized_auc:.4f} (vintage {self.vintage}), achievable {self.achievable_auc:.4f}"
               if self.realized_auc is not None and self.achievable_auc is not None else
               "realized AUC -      (no vintage measurable yet)           ")
        return (f"[replay] {self.month}  champion v{self.champion:<3} {auc}  top PSI {self.top_psi:.3f} "
                f"({self.top_column})  {self.action}")


@dataclass(frozen=True)
class VintageResult:
    """A vintage as the replay ends: the version that scored it, its realized and achievable AUC."""

    vintage: str
    version: str
    realized_auc: float | None
    achievable_auc: float | None

    def line(self) -> str:
        if self.realized_auc is None or self.achievable_auc is None:
            return f"  {self.vintage}  v{self.version:<3} not yet measurable"
        return (f"  {self.vintage}  v{self.version:<3} realized {self.realized_auc:.4f}  achievable "
                f"{self.achievable_auc:.4f}  gap {self.achievable_auc - self.realized_auc:+.4f}")


@dataclass(frozen=True)
class ReplayResult:
    steps: list[MonthStep]
    vintages: list[VintageResult]
    run_id: str
    first_champion: str

    @property
    def retrains(self) -> list[MonthStep]:
        return [s for s in self.steps if s.retrained is not None]

    @property
    def promoted(self) -> list[Retrained]:
        return [s.retrained for s in self.retrains if s.retrained.promoted]

    @property
    def champion(self) -> str:
        """The champion as the replay ends."""
        return self.promoted[-1].version if self.promoted else self.first_champion

    def summary(self) -> str:
        return (f"replay: {len(self.steps)} months, {len(self.retrains)} retrain(s), {len(self.promoted)} promoted; "
                f"champion v{self.first_champion} -> v{self.champion}; MLflow run {self.run_id}")


@dataclass
class LoopState:
    """What the loop remembers between months: the champion and the month of the last retrain."""

    champion: str
    last_retrain: str | None = None
    steps: list[MonthStep] = field(default_factory=list)


def load_replay_spec(path: str | Path, **overrides: object) -> ReplaySpec:
    return load_config(ReplaySpec, path, "replay spec", **overrides)


def psi_alarm(report: DriftReport, policy: MonitoringPolicy) -> str | None:
    """The month's applicants (or scores) shifted enough to call for a retrain."""
    worst = report.worst
    if worst.psi < policy.retrain_psi:
        return None
    return f"PSI {worst.psi:.3f} of {worst.label} >= {policy.retrain_psi}"


def performance_alarm(report: PerformanceReport, name: str, champion: str) -> str | None:
    """The latest measurable vintage alarms, and the current champion scored it (an older one's decay is history)."""
    latest = report.latest
    if latest is None or not latest.alarms or (latest.model_name, latest.model_version) != (name, champion):
        return None
    return f"vintage {latest.vintage}: " + "; ".join(latest.alarms)


def cooling_until(month: str, last_retrain: str | None, cooldown: int) -> str | None:
    """The month retraining is allowed again, when `month` is still inside the cooldown of the last retrain."""
    if last_retrain is None:
        return None
    until = add_months(last_retrain, cooldown)
    return until if month < until else None


def achievable_auc(folder: Path, vintage: str, as_of: str) -> float | None:
    """The AUC of the generator's true probabilities on the vintage's outcomes known by `as_of`: the best any
    model could do on those rows."""
    outcomes = read_table(folder / "outcomes" / f"{vintage}.csv")
    known = outcomes[outcomes[KNOWN_MONTH].astype(str) <= as_of]
    rows = known.merge(read_table(folder / "truth" / f"{vintage}.csv"), on=ID_COLUMN)
    y = rows[TARGET].to_numpy()
    return rank_auc(y, rows[PROBABILITY].to_numpy()) if 0 < y.sum() < len(y) else None


def first_champion(spec: ReplaySpec, experiments: Path, policy: PromotionPolicy) -> str:
    """The replay's spec trained on the embedded default and made champion (forced over an earlier replay's)."""
    exp, ds = load_experiment_spec(experiments / spec.experiment)
    ds = ds.model_copy(update={"generated": ds.generated.model_copy(update={"rows": spec.first_rows})})
    logger.info("[replay] first champion: %s on %s rows of the embedded default", exp.name, f"{spec.first_rows:,}")
    version = train_and_log(exp.with_overrides(register_as=spec.name), ds, load_dataset(ds)).registered_version
    earlier = require_model(MlflowClient(), spec.name).get("champion")
    reason = f"the replay starts again from a first champion (v{earlier} was the last replay's)" if earlier else ""
    decision = promote(PromotionRequest(name=spec.name, version=version, force=bool(earlier), reason=reason), policy)
    if decision.exit_code:
        raise CreditflowError(f"the replay's first champion was refused: {decision.reason}")
    return str(version)


def replay_month(spark: SparkSession, spec: ReplaySpec, month: str, out: Path, state: LoopState,
                 policies: tuple[PromotionPolicy, MonitoringPolicy]) -> MonthStep:
    """Score the month, monitor drift and performance, retrain if an alarm calls for it outside the cooldown."""
    promotion, monitoring = policies
    scorer, months = state.champion, out / "months"
    uri = version_uri(spec.name, scorer)
    applicants = months / "applicants" / f"{month}.csv"
    with log_level("creditflow.serving.batch", logging.WARNING):  # one line a month, not the job's progress
        run_batch(spark, plan_batch(uri, applicants, out / "predictions", batch_id=month))
    drift = drift_report(uri, applicants)
    log_report(drift)
    performance = performance_report(out / "predictions", months / "outcomes", monitoring, as_of=month)
    log_performance(performance)
    latest = performance.latest
    alarms = tuple(a for a in (performance_alarm(performance, spec.name, scorer),
                               psi_alarm(drift, monitoring)) if a)
    action, retrained = "-", None
    until = cooling_until(month, state.last_retrain, monitoring.cooldown_months)
    if alarms and until:
        action = f"alarm: {'; '.join(alarms)}; cooling down until {until}"
    elif alarms:
        action, retrained = retrain_step(spec, month, out, state, promotion, alarms)
    step = MonthStep(month, scorer, latest.vintage if latest else None, latest.realized_roc_auc if latest else None,
                     achievable_auc(months, latest.vintage, month) if latest else None, drift.worst.psi,
                     drift.worst.label, alarms, action, retrained)
    logger.info("%s", step.line())
    return step


def retrain_step(spec: ReplaySpec, month: str, out: Path, state: LoopState, policy: PromotionPolicy,
                 alarms: tuple[str, ...]) -> tuple[str, Retrained | None]:
    """Retrain and promote through the gates; too few labelled months yet is reported, not raised."""
    head = f"alarm: {'; '.join(alarms)}; retrain"
    try:
        result = retrain(spec.name, out / "months", spec.window, month, policy, out / "retrain")
    except DataError as exc:
        return f"{head} not possible yet: {exc}", None
    state.last_retrain = month
    if result.promoted:
        state.champion = result.version
        return f"{head} -> v{result.version} promoted", result
    failed = ", ".join(f"({g.key})" for g in result.decision.gates if g.passed is False)
    return f"{head} -> v{result.version} {result.decision.outcome} (failed gate {failed})", result


def final_vintages(spec: ReplaySpec, out: Path, as_of: str, monitoring: MonitoringPolicy) -> list[VintageResult]:
    """Every vintage judged on all the outcomes known when the replay ends."""
    report = performance_report(out / "predictions", out / "months" / "outcomes", monitoring, as_of=as_of)
    log_performance(report)
    return [VintageResult(v.vintage, v.model_version, v.realized_roc_auc,
                          achievable_auc(out / "months", v.vintage, as_of) if v.measured else None)
            for v in report.vintages]


def log_replay(spec: ReplaySpec, steps: list[MonthStep], vintages: list[VintageResult]) -> str:
    """One run in the monitoring experiment charting the replay: per month (step) the champion and the top PSI,
    per vintage its realized and achievable AUC; the printed lines as replay.txt."""
    mlflow.set_experiment(MONITOR_EXPERIMENT)
    with mlflow.start_run(run_name=f"replay {spec.drift} {steps[0].month}..{steps[-1].month}") as run:
        mlflow.set_tags({"creditflow.kind": "replay", "model_name": spec.name})
        mlflow.log_params(spec.model_dump())
        for i, s in enumerate(steps):
            mlflow.log_metrics({"champion_version": float(s.champion), "top_psi": s.top_psi,
                                "retrained": float(s.retrained is not None)}, step=i)
        for i, v in enumerate(vintages):
            if v.realized_auc is not None and v.achievable_auc is not None:
                mlflow.log_metrics({"realized_roc_auc": v.realized_auc, "achievable_roc_auc": v.achievable_auc,
                                    "auc_gap": v.achievable_auc - v.realized_auc}, step=i)
        mlflow.log_text("\n".join([s.line() for s in steps] + [v.line() for v in vintages]), "replay.txt")
    return run.info.run_id


def run_replay(spec: ReplaySpec, experiments: Path, spark: SparkSession | None = None,
               spark_config: SparkConfig | None = None, launcher: str | None = None) -> ReplayResult:
    """Generate the months, make a first champion, replay every month; starts (and stops) Spark unless given one."""
    promotion = load_policy(experiments / spec.promotion_policy)
    monitoring = load_monitoring_policy(experiments / spec.monitoring_policy)
    check_tracking_server()
    out = Path(spec.output)
    for scratch in ("predictions", "retrain"):  # a replay starts from nothing scored
        shutil.rmtree(out / scratch, ignore_errors=True)
    names = generate_months(out / "months", spec.months, spec.start, spec.drift, spec.onset if spec.drift != "none"
                            else None, spec.rows_per_month, spec.outcome_lag, spec.seed)
    logger.info("[replay] %d months %s..%s of %s applicants, drift %s%s, outcomes known %d month(s) later, in %s",
                len(names), names[0], names[-1], f"{spec.rows_per_month:,}", spec.drift,
                f" from {spec.onset}" if spec.drift != "none" else "", spec.outcome_lag, out / "months")
    state = LoopState(first_champion(spec, experiments, promotion))
    own = spark is None
    spark = start_spark(spark_config or SparkConfig()) if own else spark
    try:
        for month in names:
            state.steps.append(replay_month(spark, spec, month, out, state, (promotion, monitoring)))
    finally:
        if own:
            spark.stop()
    vintages = final_vintages(spec, out, names[-1], monitoring)
    logger.info("[replay] vintages as of %s:\n%s", names[-1], "\n".join(v.line() for v in vintages))
    run_id = log_replay(spec, state.steps, vintages)
    if launcher:  # the `mlflow run` project run points at the replay's run
        MlflowClient().set_tag(launcher, "creditflow.replay_run", run_id)
    logger.info("[replay] charted in MLflow run %s (experiment %s)", run_id, MONITOR_EXPERIMENT)
    return ReplayResult(state.steps, vintages, run_id, state.steps[0].champion)


def replay_from_args(args: argparse.Namespace) -> ReplayResult:
    """`creditflow replay` (pipelines.arguments.add_replay_arguments): the spec with the command line's overrides;
    under `mlflow run`, the project run is tagged with the replay's run."""
    spec = load_replay_spec(args.config, drift=args.drift, rows_per_month=args.rows_per_month or None,
                            output=args.output)
    return run_replay(spec, Path(args.config).parent, spark_config=load_batch_config(args.batch_config or None),
                      launcher=detach_project_run())
