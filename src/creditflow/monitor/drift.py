"""Data drift: how far a batch of applicants has moved from the data the model was trained on.

`drift_report` compares a new batch with the training profile logged inside the model
(`model.profile`) by the population stability index (PSI), the credit-risk industry's measure of
population shift: below 0.10 stable, 0.10 to 0.25 a moderate shift, 0.25 and above a major one
(investigate, retrain).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import mlflow
import pandas as pd

from creditflow.data.dataset import read_applicants
from creditflow.data.rules import rule_violations
from creditflow.errors import CreditflowError, DataError
from creditflow.model.profile import ColumnProfile, load_profile, psi
from creditflow.monitor.charts import distributions_figure
from creditflow.registry.client import ModelRef, check_tracking_server, model_files, resolve_model
from creditflow.specs import DEFAULT_MODEL_NAME

logger = logging.getLogger(__name__)

MODERATE, MAJOR = 0.10, 0.25  # PSI bands, as credit-risk monitoring reads them
SCORE = "score"  # the model's probability of default, profiled like a column
SCORE_LABEL = "Score (probability of default)"
NOT_COMPUTABLE = "not computable: no row within the value rules was scored"
MIN_ROWS = 20  # fewer rows give shares (and a PSI) that say nothing
MONITOR_EXPERIMENT = f"{DEFAULT_MODEL_NAME}-monitoring"
CHART_COLUMNS = 4  # input columns the distributions chart shows, most shifted first (and the score)

Status = Literal["stable", "moderate shift", "major shift"]


class DriftAlert(CreditflowError):
    """A major shift: the report is shown, and the exit code tells a scheduler to alert."""

    exit_code = 3


def status_of(value: float) -> Status:
    return "major shift" if value >= MAJOR else "moderate shift" if value >= MODERATE else "stable"


@dataclass(frozen=True)
class Drift:
    """One column's (or the score's) shift: PSI and the shares behind it."""

    column: str
    label: str
    psi: float
    reference: list[float]
    batch: list[float]
    bins: list[str] = field(default_factory=list)  # each share's bin, for the chart

    @property
    def status(self) -> Status:
        return status_of(self.psi)


def column_drift(column: str, label: str, profile: ColumnProfile, values: pd.Series) -> Drift:
    counts = profile.counts(values)
    shares = counts / max(counts.sum(), 1.0)
    return Drift(column, label, psi(profile.shares, shares), profile.shares, shares.tolist(), profile.bin_labels())


@dataclass(frozen=True)
class DriftReport:
    """A batch compared with the model's training population."""

    model_uri: str
    lineage: dict[str, str]
    source: str
    rows: int
    rows_scored: int  # rows that pass the value rules: the score's shift is measured on them
    reference_rows: int
    columns: list[Drift]
    score: Drift | None  # None: no row within the value rules, so no score to compare

    @property
    def drifts(self) -> list[Drift]:
        return [*self.columns, *([self.score] if self.score else [])]

    @property
    def worst(self) -> Drift:
        return max(self.drifts, key=lambda d: d.psi)

    def table(self) -> str:
        """The report as text lines, largest shift first."""
        rows = sorted(self.drifts, key=lambda d: -d.psi)
        width = max(len(label) for label in [*(d.label for d in rows), SCORE_LABEL])
        head = (f"[drift] {self.rows:,} rows from {self.source} against {self.reference_rows:,} training rows "
                f"of {self.model_uri} (score on {self.rows_scored:,} rows within the value rules)")
        lines = [head, f"{'column':<{width}}  {'PSI':>7}  status",
                 *[f"{d.label:<{width}}  {d.psi:7.3f}  {d.status}" for d in rows]]
        if self.score is None:
            lines.append(f"{SCORE_LABEL:<{width}}  {'-':>7}  {NOT_COMPUTABLE}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_uri": self.model_uri, **self.lineage, "source": self.source, "rows": self.rows,
            "rows_scored": self.rows_scored, "reference_rows": self.reference_rows, "status": self.worst.status,
            "thresholds": {"moderate": MODERATE, "major": MAJOR},
            "score_status": self.score.status if self.score else NOT_COMPUTABLE,
            "columns": {d.column: {"label": d.label, "psi": d.psi, "status": d.status, "reference": d.reference,
                                   "batch": d.batch} for d in self.drifts},
        }


def drift_report(model_uri: str, input_path: str | Path) -> DriftReport:
    """Compare a batch of applicants (CSV or Parquet) with the model's training population."""
    ref = resolve_model(model_uri)
    return drift_of(ref, read_applicants(input_path, ref.dataset), str(input_path))


def reference_of(ref: ModelRef) -> tuple[Any, Any]:
    """The model's training profile and the loaded model: what a batch is compared with and scored by."""
    with model_files(ref) as path:
        return load_profile(path, ref.requested), mlflow.pyfunc.load_model(str(path))


def drift_of(ref: ModelRef, X: pd.DataFrame, source: str, reference: tuple[Any, Any] | None = None) -> DriftReport:
    """Compare applicant rows (the model's raw columns) with the training population of the model `ref`
    (`reference`: its profile and model, when the caller loaded them already)."""
    if len(X) < MIN_ROWS:
        raise DataError(f"{source}: {len(X)} row(s); drift needs at least {MIN_ROWS} rows to compare shares")
    profile, model = reference or reference_of(ref)
    valid = X[(rule_violations(X, ref.dataset) == "").to_numpy()]
    probability = model.predict(valid)["probability"] if len(valid) else []
    labels = ref.dataset.display_names()
    columns = [column_drift(raw, labels.get(raw) or raw, profile.columns[raw], X[raw])
               for raw in ref.dataset.raw_columns if raw in profile.columns]
    score = column_drift(SCORE, SCORE_LABEL, profile.score, pd.Series(probability, dtype=float)) if len(valid) else None
    return DriftReport(ref.uri, ref.lineage, source, len(X), len(valid), profile.rows, columns, score)


def log_report(report: DriftReport, run_id: str | None = None, experiment: str = MONITOR_EXPERIMENT) -> str:
    """Log the report as an MLflow run (a PSI metric per column), so drift over time shows in the MLflow UI.

    Into `run_id` when given (the `mlflow run` project run), else a new run of the monitoring experiment.
    """
    check_tracking_server()
    if not run_id:
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_id=run_id, run_name=f"drift {Path(report.source).name}") as run:
        mlflow.set_tags({"creditflow.kind": "drift", "drift_status": report.worst.status, **report.lineage})
        mlflow.log_params({"drift.model_uri": report.model_uri, "drift.input": report.source,
                           "drift.rows": report.rows, "drift.rows_scored": report.rows_scored})
        mlflow.log_metrics({f"psi.{d.column}": d.psi for d in report.drifts})
        mlflow.log_dict(report.to_dict(), "drift_report.json")
        mlflow.log_figure(distributions_figure(most_shifted(report)), "drift_distributions.png")
    return run.info.run_id


def most_shifted(report: DriftReport, columns: int = CHART_COLUMNS) -> list[Drift]:
    """The `columns` input columns of largest PSI, largest first, then the score (when it was computable)."""
    return [*sorted(report.columns, key=lambda d: -d.psi)[:columns], *([report.score] if report.score else [])]


def monitor_drift(model_uri: str, input_path: str | Path, report_path: str | Path = "", log: bool = True,
                  run_id: str | None = None) -> DriftReport:
    """Report a batch's drift: shown, written to `report_path` if given, logged (into `run_id` if given)."""
    return published(drift_report(model_uri, input_path), report_path, log, run_id)


def published(report: Any, report_path: str | Path = "", log: bool = True, run_id: str | None = None) -> Any:
    """A drift report (a `DriftReport`, or one of a segmented deployment) shown, written and logged."""
    logger.info("%s", report.table())
    if report_path:
        write_report(report, report_path)
    if log:
        logger.info("[drift] logged to MLflow run %s", log_report(report, run_id))
    return report


def alert_if_major(report: DriftReport) -> None:
    """Raise DriftAlert (exit 3) naming every column with a major shift."""
    major = [d for d in sorted(report.drifts, key=lambda d: -d.psi) if d.status == "major shift"]
    if major:
        shifted = ", ".join(f"{d.label} (PSI {d.psi:.2f})" for d in major)
        raise DriftAlert(f"major shift against the training data in {shifted}: investigate, then retrain")


def write_report(report: Any, path: str | Path) -> None:
    """A report (anything with `to_dict`: drift, performance) as JSON; one line if the file cannot be written."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report.to_dict(), indent=2))
    except OSError as exc:
        raise CreditflowError(f"cannot write the report to {path}: {exc.strerror or exc}") from None
