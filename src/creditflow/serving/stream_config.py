"""The stream scorer's settings (serving/stream.yaml), validated once at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from creditflow.errors import SpecError
from creditflow.serving.segments import SegmentsConfig, with_fallback
from creditflow.specs import CHAMPION_URI, DatasetSpec, load_config


class StreamConfig(BaseModel):
    """The streaming scorer (serving/stream.yaml): model, Redis, streams and what each event type adds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_uri: str = CHAMPION_URI
    store: str = "redis://127.0.0.1:6379/0"
    events_stream: str = "creditflow:events"
    predictions_stream: str = "creditflow:predictions"
    rejected_stream: str = "creditflow:events:rejected"
    group: str = "creditflow-scorers"
    batch_size: int = Field(100, gt=0)
    block_ms: int = Field(1000, gt=0)
    applied_ttl_days: int = Field(7, gt=0)  # how long an event is remembered as applied (redelivery window)
    claim_idle_ms: int = Field(60_000, ge=0)  # another scorer's events unacknowledged this long are taken over
    reload_seconds: float = Field(30, ge=0)  # how often an alias is re-resolved (0: the start-up version, pinned)
    max_deliveries: int = Field(5, gt=0)  # an entry read this many times and never handled is dead-lettered
    events: dict[str, dict[str, float]] = Field(min_length=1)  # event type -> {raw column: amount added}
    segments: SegmentsConfig | None = None  # a model per segment: events name their segment in the column's field

    _fallback = model_validator(mode="after")(with_fallback)  # with segments: model_uri is their fallback


def load_stream_config(path: str | Path, **overrides: Any) -> StreamConfig:
    return load_config(StreamConfig, path, "stream config", **overrides)


def check_event_columns(config: StreamConfig, spec: DatasetSpec) -> None:
    """Every column an event adds to must be a numeric column of the model's dataset."""
    for event, sums in config.events.items():
        wrong = [c for c in sums if c not in spec.columns or spec.columns[c].group == "categorical"]
        if wrong:
            raise SpecError(f"stream config: event '{event}' adds to {', '.join(wrong)}, not numeric columns of "
                            f"the model's dataset '{spec.name}'")
