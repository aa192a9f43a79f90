"""The batch job's plan: everything a user can get wrong is found before Spark starts.

The model is resolved (pinned to its version), the input's columns read from its headers or footers
and checked against the model's signature, the batch id and the prediction table's URL validated. A
segmented deployment (serving/segments.yaml) pins every model it routes to, the fallback first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa

from creditflow.data.io import InputFiles, id_header, inspect_input
from creditflow.errors import DataError
from creditflow.registry.client import ModelRef, resolve_model
from creditflow.serving.batch.spark import BatchError
from creditflow.serving.batch.table import PredictionTable, check_scored_layout, default_table_url
from creditflow.serving.segments import SegmentsConfig, resolve_deployment
from creditflow.specs import DatasetSpec

BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")


@dataclass(frozen=True)
class BatchPlan:
    """Everything checked before Spark starts: model, input, where the batch goes, its id."""

    model: ModelRef
    source: InputFiles
    output: Path
    batch_id: str
    id_column: str  # the applicant id as the input names it
    table_url: str
    scored_at: datetime
    segment_column: str = ""  # a segmented batch: the routing column, and each segment's model (with a champion)
    segment_models: dict[str, ModelRef] = field(default_factory=dict)

    @property
    def models_label(self) -> str:
        """The model(s) the batch is scored with, for its summary and its MLflow run."""
        own = f" + {len(self.segment_models)} segment models by {self.segment_column}" if self.segment_column else ""
        return self.model.uri + own


def default_batch_id(source: Path, today: date | None = None) -> str:
    """The input's name and the date: rerunning the same input on the same day replaces its batch."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", source.stem if source.is_file() else source.name).strip("-_") or "batch"
    return f"{stem[:80]}-{(today or date.today()):%Y%m%d}"


def plan_batch(model_uri: str, input_path: str | Path, output: str | Path, batch_id: str = "",
               id_column: str = "", table: str = "", deployment: SegmentsConfig | None = None) -> BatchPlan:
    """Resolve the model (or every model of a segmented `deployment`) and check the input against its signature;
    raises before any Spark work."""
    refs = resolve_deployment(deployment) if deployment else None
    model = refs.fallback if refs else resolve_model(model_uri)
    segment_models = refs.served if refs else {}
    source = inspect_input(input_path)
    if deployment and deployment.column not in source.columns:
        raise DataError(f"{source.path}: missing the segment column {deployment.column} the deployment routes by")
    batch_id = batch_id or default_batch_id(source.path)
    if not BATCH_ID.match(batch_id):
        raise BatchError(f"batch id '{batch_id[:40]}' must be 1-100 letters, digits, '-' or '_'")
    if not (id_column or model.dataset.id_column):
        raise DataError(f"the model's dataset spec '{model.dataset.name}' names no id_column: batch scoring needs "
                        "one (pass --id-column NAME)")
    id_column = _id_column(source, id_column or model.dataset.id_column, bool(id_column))
    for each in (model, *segment_models.values()):
        _check_columns(source, each)
    output = Path(output).absolute()
    check_scored_layout(output)
    table_url = PredictionTable(table or default_table_url(output)).url  # an unsupported URL fails here
    return BatchPlan(model, source, output, batch_id, id_column, table_url, datetime.now(UTC),
                     deployment.column if deployment else "", segment_models)


def _id_column(source: InputFiles, wanted: str, explicit: bool) -> str:
    found = (wanted if wanted in source.columns else None) if explicit else id_header(source.columns, wanted)
    if found is not None:
        return found
    raise DataError(f"{source.path}: missing id column '{wanted}' (pass --id-column NAME)")


def _check_columns(source: InputFiles, model: ModelRef) -> None:
    missing = [c for c in model.required if c not in source.columns]
    if missing:
        raise DataError(f"{source.path}: missing column(s) the model needs: {', '.join(missing)}")
    wrong = [f"{c} ({t})" for c, t in source.types.items() if c in model.columns and not _usable(t, model.dataset, c)]
    if wrong:
        raise DataError(f"{source.path}: column type(s) the model cannot take: {', '.join(wrong)}")


def _usable(t: pa.DataType, spec: DatasetSpec, column: str) -> bool:
    """Numbers (or text to be parsed) for numeric columns, text for categorical ones."""
    text = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)
    if spec.columns[column].group == "categorical":
        return text
    return text or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)

