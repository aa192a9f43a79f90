"""A segmented deployment: a model per segment behind one endpoint, one batch job and one stream scorer.

The deployment is the `segments:` block of a serving config (serving/segments.yaml):

    segments:
      column: Region                                   # the routing key: a request carries it, no model reads it
      fallback: models:/credit-default@champion        # the global model
      model: models:/credit-default-{segment}@champion # each segment's model (a template)
      values: [R01, R02, ..., R20]

Routing: a row whose segment value is listed and whose segment model has a champion is scored by that
model; every other row (value unknown or missing, or its model not promoted) by the fallback, flagged
`segment_model: false`. Rows are grouped by the model that scores them: one predict call per model.
Each model follows its alias on its own (`serving.live.LiveModel`): a segment promoted while the
server runs is served from its next poll, a segment without a champion falls back until it gets one.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from pydantic import BaseModel, ConfigDict, Field, model_validator

from creditflow.errors import SpecError, TrackingError
from creditflow.registry.client import (
    ModelRef,
    alias_parts,
    check_server_for,
    mlflow_errors,
    registered_model,
    resolve_model,
)
from creditflow.serving.live import LiveModel, Loaded, fetch
from creditflow.serving.metrics import Metrics
from creditflow.serving.typed import RoutedRows
from creditflow.specs import CHAMPION_URI, DatasetSpec, read_yaml, validated

logger = logging.getLogger(__name__)

FALLBACK = ""  # the route key of rows the fallback scores
SEGMENT = "{segment}"


class SegmentsConfig(BaseModel):
    """Which model scores which rows: the segment column, each segment's model, the fallback."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    column: str = Field(min_length=1)  # the routing key: requests and batches carry it, models do not read it
    fallback: str = CHAMPION_URI  # the global model: rows of no served segment
    model: str  # each segment's model: models:/NAME-{segment}@ALIAS
    values: tuple[str, ...] = Field(min_length=1)  # the segments served by a model of their own

    @model_validator(mode="after")
    def _check(self) -> SegmentsConfig:
        if not (self.model.startswith("models:/") and SEGMENT in self.model and "@" in self.model):
            raise ValueError(f"model must be an alias URI naming {SEGMENT}, e.g. models:/credit-default-{SEGMENT}"
                             "@champion")
        if any(not str(v).strip() for v in self.values):
            raise ValueError("values must be non-empty segment names")
        dupes = sorted({v for v in self.values if self.values.count(v) > 1})
        if dupes:
            raise ValueError(f"segment value(s) listed twice: {', '.join(dupes)}")
        return self

    def uri(self, segment: str) -> str:
        return self.model.replace(SEGMENT, segment)



def with_fallback(config: Any) -> Any:
    """A config (serving, stream) whose `segments` block is set: its model_uri is the fallback (one given must name
    it). A pydantic after-validator."""
    segments = config.segments
    if segments is None:
        return config
    if "model_uri" in config.model_fields_set and config.model_uri != segments.fallback:
        raise ValueError(f"model_uri {config.model_uri} is not the segments' fallback {segments.fallback}: leave "
                         "model_uri out of a segmented deployment")
    return config.model_copy(update={"model_uri": segments.fallback})


def load_deployment(path: str | Path) -> SegmentsConfig:
    """The `segments:` block of a deployment file (serving/segments.yaml): what batch scoring and drift route by."""
    data = read_yaml(Path(path), "deployment file")
    if not isinstance(data.get("segments"), dict):
        raise SpecError(f"{path}: no `segments:` block (column, fallback, model, values): not a segmented deployment")
    return validated(SegmentsConfig, data["segments"], f"{path} segments")


@dataclass(frozen=True)
class DeploymentRefs:
    """The deployment as the registry holds it now: each model pinned, None for a segment without a champion."""

    fallback: ModelRef
    segments: dict[str, ModelRef | None]

    @property
    def served(self) -> dict[str, ModelRef]:
        return {s: ref for s, ref in self.segments.items() if ref is not None}

    def summary(self) -> str:
        waiting = [s for s, ref in self.segments.items() if ref is None]
        return (f"{len(self.served)} of {len(self.segments)} segments with a model of their own"
                + (f" (falling back: {', '.join(waiting)})" if waiting else "") + f"; fallback {self.fallback.label}")


def resolve_deployment(config: SegmentsConfig) -> DeploymentRefs:
    """Every model of the deployment pinned and checked; one line when it cannot be served as written.

    The fallback must exist; so must at least one segment's registered model (none: the template names no
    model, a mistake). A listed segment with no registered model or no version behind the alias falls back.
    Each segment model reads the fallback's columns (no column the deployment's requests do not carry).
    """
    check_server_for(config.fallback)
    fallback = resolve_model(config.fallback)
    client, segments, registered = MlflowClient(), {}, 0
    for value in config.values:
        uri = config.uri(value)
        name, alias = alias_parts(uri)
        with mlflow_errors(f"cannot read registered model '{name}'"):
            model = registered_model(client, name)
        registered += model is not None
        column = model.tags.get("segment_column", config.column) if model else config.column
        if column != config.column:
            raise TrackingError(f"registered model '{name}' is a model of segment column '{column}', not of this "
                                f"deployment's '{config.column}'")
        segments[value] = resolve_model(uri) if model and alias in model.aliases else None
    if not registered:
        raise TrackingError(f"no registered model matches {config.model}: none of "
                            f"{', '.join(alias_parts(config.uri(v))[0] for v in config.values[:3])}"
                            f"{', ...' if len(config.values) > 3 else ''} exists")
    for value, ref in segments.items():
        missing = sorted(set(ref.required) - set(fallback.columns)) if ref else []
        if missing:
            raise TrackingError(f"{ref.uri} (segment {value}) needs columns the fallback {fallback.label} does not "
                                f"read: {', '.join(missing)}")
    refs = DeploymentRefs(fallback, segments)
    logger.info("segments by %s: %s", config.column, refs.summary())
    return refs


def route_keys(values: Iterable[Any], served: Container[str]) -> list[str]:
    """Per row, the segment whose model scores it, or FALLBACK: a value not listed, missing or not served."""
    return [v if isinstance(v, str) and v in served else FALLBACK for v in values]


def route_groups(keys: list[str] | np.ndarray) -> list[tuple[str, slice | np.ndarray]]:
    """Each route key with its rows (ascending), in order of first appearance: one predict call per model. One key
    routing every row (any 1-row request) gets them as a slice: no split, no reassembly."""
    if len(keys) == 1:
        return [(keys[0], slice(None))]
    codes, groups = pd.factorize(np.asarray(keys, dtype=object))  # one hash pass, not a compare per row and key
    if len(groups) == 1:
        return [(groups[0], slice(None))]
    rows = np.split(np.argsort(codes, kind="stable"), np.cumsum(np.bincount(codes))[:-1])
    return list(zip(groups, rows, strict=True))


@dataclass(frozen=True)
class Routing:
    """The deployment's loaded versions at one moment: what a request is answered with, whatever swaps meanwhile."""

    fallback: Loaded
    segments: dict[str, Loaded]  # segments with a champion only

    @property
    def spec(self) -> DatasetSpec:
        return self.fallback.spec

    @property
    def label(self) -> str:
        return self.fallback.label

    @property
    def members(self) -> tuple[Loaded, ...]:
        return (self.fallback, *self.segments.values())

    def answer(self, rows: RoutedRows, typed: bool = False) -> pd.DataFrame:
        """Each row scored by its model (one predict call per model), in request order, with `model_version`
        and `segment_model` (`typed`: as `Loaded.answer`)."""
        return self._answer(rows, route_groups(route_keys(rows.segments, self.segments)), typed)

    def _answer(self, rows: RoutedRows, groups: list[tuple[str, slice | np.ndarray]], typed: bool) -> pd.DataFrame:
        if len(groups) == 1:  # one model answers the whole request (any 1-row request): no split, no reassembly
            return self.labelled(groups[0][0], rows.frame, typed)
        parts = [self.labelled(key, rows.frame.iloc[picked], typed).set_axis(picked) for key, picked in groups]
        return pd.concat(parts).sort_index().reset_index(drop=True)

    def labelled(self, key: str, frame: pd.DataFrame, typed: bool = False) -> pd.DataFrame:
        """The answer of the model of route key `key`, flagged whether it is the segment's own."""
        answer = self.segments.get(key, self.fallback).answer(frame, typed)
        answer["segment_model"] = key != FALLBACK
        return answer

    def columns(self, rows: RoutedRows) -> dict[str, list]:
        """The answer to rows `parse_body` typed, as lists of plain values, as `Loaded.columns` gives it."""
        groups = route_groups(route_keys(rows.segments, self.segments))
        if len(groups) == 1:  # one model answers: its columns straight, no answer frame
            key = groups[0][0]
            columns = self.segments.get(key, self.fallback).columns(rows.frame)
            return {**columns, "segment_model": [key != FALLBACK] * len(rows)}
        answer = self._answer(rows, groups, typed=True)
        return {name: answer[name].tolist() for name in answer.columns}


class SegmentRouter:
    """A segmented deployment served live: the fallback's and each segment's `LiveModel`, polled on their own."""

    def __init__(self, column: str, fallback: LiveModel, segments: dict[str, LiveModel]):
        self.column, self.fallback, self.segments = column, fallback, segments
        self.metrics = fallback.metrics

    @property
    def follows(self) -> bool:
        return self.fallback.follows

    @property
    def current(self) -> Routing:
        loaded = {s: live.current for s, live in self.segments.items()}
        return Routing(self.fallback.current, {s: v for s, v in loaded.items() if v is not None})

    def start(self) -> SegmentRouter:
        """Every follower started, their polls spread evenly over the reload period: at once, the 21 polls of a
        20-segment deployment stalled requests for up to ~0.1 s every period (docs/performance.md)."""
        followers = (self.fallback, *self.segments.values())
        for i, live in enumerate(followers):
            live.start(offset=live.reload_seconds * i / len(followers))
        return self

    def stop(self) -> None:
        for live in (self.fallback, *self.segments.values()):
            live.stop()

    def models(self) -> list[dict[str, Any]]:
        """GET /models: each segment with the version that answers for it now (the fallback's while it has none
        of its own), then the fallback (`segment: null`)."""
        fallback = self.fallback.label
        return ([{"segment": s, "model_version": live.current.label if live.current else fallback}
                 for s, live in self.segments.items()]
                + [{"segment": None, "model_version": fallback}])

    def health(self) -> dict[str, Any]:
        return {**self.fallback.health(), "segment_column": self.column,
                "segments": {s: live.health() for s, live in self.segments.items()}}


def segment_follower(config: SegmentsConfig, segment: str, first: Loaded | None, reload_seconds: float,
                     metrics: Metrics | None) -> LiveModel:
    """The LiveModel of one segment (role `segment:<name>` in /metrics)."""
    return LiveModel(config.uri(segment), first, reload_seconds, f"segment:{segment}", metrics)


def follow_deployment(config: SegmentsConfig, reload_seconds: float, role: str = "champion") -> SegmentRouter:
    """The deployment checked, each model with a version fetched (resolved, downloaded, loaded, warmed), and a
    follower per model: what the stream scorer holds."""
    refs = resolve_deployment(config)
    fallback = LiveModel(config.fallback, fetch(refs.fallback.uri), reload_seconds, role)
    return SegmentRouter(config.column, fallback, {
        s: segment_follower(config, s, ref and fetch(ref.uri), reload_seconds, fallback.metrics)
        for s, ref in refs.segments.items()})
