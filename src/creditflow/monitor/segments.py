"""Drift of a segmented deployment: every row against the fallback's training data, and each segment's rows
against the training data of the model that scores them (its own champion, or the fallback while it has none).

The report reads as a `DriftReport` (`monitor.drift`): the overall figures as they are, each segment's as
`psi.<segment>.<column>`; a major shift anywhere is an alarm (exit 3).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from creditflow.data.dataset import read_applicants
from creditflow.monitor.drift import MIN_ROWS, Drift, DriftReport, drift_of, published, reference_of
from creditflow.serving.segments import SegmentsConfig, resolve_deployment


@dataclass(frozen=True)
class SegmentedDrift:
    column: str
    overall: DriftReport  # every row against the fallback's training data
    segments: dict[str, DriftReport]  # each listed segment's rows against its model's
    too_few: dict[str, int]  # listed segments with rows, but fewer than MIN_ROWS: not compared

    model_uri = property(lambda self: self.overall.model_uri)
    lineage = property(lambda self: self.overall.lineage)
    source = property(lambda self: self.overall.source)
    rows = property(lambda self: self.overall.rows)
    rows_scored = property(lambda self: self.overall.rows_scored)
    columns = property(lambda self: self.overall.columns)  # the picture logged with the report: all rows
    score = property(lambda self: self.overall.score)

    @property
    def drifts(self) -> list[Drift]:
        return [*self.overall.drifts, *(replace(d, column=f"{s}.{d.column}", label=f"{d.label} [{s}]")
                                        for s, report in self.segments.items() for d in report.drifts)]

    @property
    def worst(self) -> Drift:
        return max(self.drifts, key=lambda d: d.psi)

    def table(self) -> str:
        """The overall report, then one line per segment: its model, rows, largest column shift and score shift."""
        lines = [self.overall.table(), f"[drift] by {self.column}: each segment against its model's training data",
                 f"{'segment':<10} {'model':<28} {'rows':>8}  {'largest column shift':<36} {'PSI':>7}  "
                 f"{'score PSI':>9}  status"]
        for segment, report in self.segments.items():
            top = max(report.columns, key=lambda d: d.psi)
            score = f"{report.score.psi:9.3f}" if report.score else f"{'-':>9}"
            model = f"{report.lineage['model_name']}/{report.lineage['model_version']}"
            lines.append(f"{segment:<10} {model:<28} {report.rows:>8,}  {top.label[:36]:<36} {top.psi:7.3f}  {score}"
                         f"  {report.worst.status}")
        lines += [f"{segment:<10} {'':<28} {rows:>8,}  fewer than {MIN_ROWS} rows: not compared"
                  for segment, rows in self.too_few.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {**self.overall.to_dict(), "status": self.worst.status, "segment_column": self.column,
                "segments": {s: report.to_dict() for s, report in self.segments.items()},
                "segments_too_few_rows": self.too_few}


def segmented_drift(deployment: SegmentsConfig, input_path: str | Path) -> SegmentedDrift:
    """Drift of a batch (CSV or Parquet carrying the segment column) overall and per segment."""
    refs = resolve_deployment(deployment)
    X = read_applicants(input_path, refs.fallback.dataset, segment=deployment.column)
    features = X.drop(columns=[deployment.column])
    fallback = reference_of(refs.fallback)  # loaded once: every segment without a champion of its own uses it
    overall = drift_of(refs.fallback, features, str(input_path), fallback)
    segments, too_few = {}, {}
    for segment in deployment.values:
        rows = features[(X[deployment.column] == segment).to_numpy()]
        if 0 < len(rows) < MIN_ROWS:
            too_few[segment] = len(rows)
        elif len(rows):
            own = refs.segments[segment]
            segments[segment] = drift_of(own or refs.fallback, rows, f"{input_path} [{deployment.column}={segment}]",
                                         None if own else fallback)
    return SegmentedDrift(deployment.column, overall, segments, too_few)


def monitor_segments(deployment: SegmentsConfig, input_path: str | Path, report_path: str | Path = "",
                     log: bool = True, run_id: str | None = None) -> SegmentedDrift:
    """`creditflow monitor drift --deployment`: the segmented report shown, written and logged."""
    return published(segmented_drift(deployment, input_path), report_path, log, run_id)
