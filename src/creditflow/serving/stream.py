"""Streaming prediction: batch features plus streaming features, scored as events arrive.

Events come on a Redis stream (`XADD creditflow:events * applicant_id 17 event late_payment_30_59`).
Each event type adds to some of the model's columns (serving/stream.yaml: a reported late payment
adds one to a delinquency count, a new credit line one to the open lines). Those streaming
features are running sums per applicant in Redis (`creditflow:stream:<dataset>:<id>`), on top of the
applicant's batch features (`creditflow features load`). On each event the applicant is scored
again with both, and the prediction goes to an output stream with the event that caused it.

Several scorers may share the work (one Redis consumer group). Delivery is at least once: an event
is acknowledged after its prediction is published; events a scorer took and left unacknowledged
(it died) are read again when it restarts, or claimed by another scorer after claim_idle_ms. An
event's sums are applied once (a Lua script marks it applied in the same step; the marker costs
Redis ~100 bytes for applied_ttl_days), so a redelivered event is scored again but never counted
twice. Events that cannot be scored (unknown type, no batch features, a value rule broken) go to a
rejected stream with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from creditflow.data.dataset import coerce_columns
from creditflow.data.rules import rule_violations
from creditflow.errors import SpecError
from creditflow.serving.features import FeatureStore, FeatureStoreError
from creditflow.serving.live import LiveModel
from creditflow.specs import CHAMPION_URI, DatasetSpec, load_config

logger = logging.getLogger(__name__)

SUMS_PREFIX = "creditflow:stream"
APPLY = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  for i = 2, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], ARGV[i + 1]) end
  return 1
end
return 0
"""  # KEYS: the event's applied-marker, the applicant's sums; ARGV: marker TTL, then column, amount pairs


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
    events: dict[str, dict[str, float]] = Field(min_length=1)  # event type -> {raw column: amount added}


def load_stream_config(path: str | Path, **overrides: Any) -> StreamConfig:
    return load_config(StreamConfig, path, "stream config", **overrides)


def check_event_columns(config: StreamConfig, spec: DatasetSpec) -> None:
    """Every column an event adds to must be a numeric column of the model's dataset."""
    for event, sums in config.events.items():
        wrong = [c for c in sums if c not in spec.columns or spec.columns[c].group == "categorical"]
        if wrong:
            raise SpecError(f"stream config: event '{event}' adds to {', '.join(wrong)}, not numeric columns of "
                            f"the model's dataset '{spec.name}'")


@dataclass(frozen=True)
class Event:
    id: str  # the stream entry's id
    applicant_id: str
    kind: str


@dataclass
class Tally:
    """What a scorer has done so far."""

    scored: int = 0
    rejected: int = 0
    started: float = field(default_factory=time.perf_counter)

    def line(self) -> str:
        seconds = time.perf_counter() - self.started
        total = self.scored + self.rejected
        return (f"[stream] {total:,} events: {self.scored:,} scored, {self.rejected:,} rejected "
                f"({total / max(seconds, 1e-9):,.0f} events/s)")


class StreamScorer:
    """One consumer of the events stream: applies streaming sums, scores, publishes, acknowledges."""

    def __init__(self, config: StreamConfig, live: LiveModel, consumer: str = ""):
        self.config, self.live = config, live
        self.spec: DatasetSpec = live.current.spec
        check_event_columns(config, self.spec)
        self.features = FeatureStore(config.store, self.spec.name)
        self.redis = self.features.client
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.apply_script = self.redis.register_script(APPLY)
        self.tally = Tally()

    def sums_key(self, applicant_id: str) -> str:
        return f"{SUMS_PREFIX}:{self.spec.name}:{applicant_id}"

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if they do not exist yet."""
        try:
            self.features.call("setup", self.redis.xgroup_create, self.config.events_stream, self.config.group,
                                "0", True)
        except FeatureStoreError as exc:
            if "BUSYGROUP" not in str(exc):  # anything but "it exists already"
                raise

    def read(self, pending: bool) -> list[tuple[str, dict[str, str]]]:
        """The next entries for this consumer: its own unacknowledged ones first (pending), then new ones."""
        streams = {self.config.events_stream: "0" if pending else ">"}
        reply = self.features.call("read", self.redis.xreadgroup, self.config.group, self.consumer, streams,
                                    self.config.batch_size, None if pending else self.config.block_ms)
        return _entries(reply[0][1] if reply else [])

    def claim(self) -> list[tuple[str, dict[str, str]]]:
        """Entries another scorer took and left unacknowledged for claim_idle_ms (it died): now this one's."""
        reply = self.features.call("claim", self.redis.xautoclaim, self.config.events_stream, self.config.group,
                                    self.consumer, self.config.claim_idle_ms, "0-0", self.config.batch_size)
        return _entries(reply[1])

    def process(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        """Apply, score, publish and acknowledge one batch of entries."""
        events, rejected = [], []
        for entry_id, fields in entries:
            event, reason = self.parse(entry_id, fields)
            if event:
                events.append(event)
            else:
                rejected.append((entry_id, fields, reason))
        for event in events:
            self.apply(event)
        scored, more_rejected = self.score(events)
        rejected += more_rejected
        pipe = self.redis.pipeline(transaction=False)
        for fields in scored:
            pipe.xadd(self.config.predictions_stream, fields)
        for entry_id, fields, reason in rejected:
            pipe.xadd(self.config.rejected_stream, {**fields, "event_id": entry_id, "reason": reason})
        if entries:
            pipe.xack(self.config.events_stream, self.config.group, *[i for i, _ in entries])
        self.features.call("publish", pipe.execute)
        self.tally.scored += len(scored)
        self.tally.rejected += len(rejected)

    def parse(self, entry_id: str, fields: dict[str, str]) -> tuple[Event | None, str]:
        applicant, kind = fields.get("applicant_id", "").strip(), fields.get("event", "").strip()
        if not applicant:
            return None, "no applicant_id field"
        if kind not in self.config.events:
            return None, f"unknown event type '{kind}' (known: {', '.join(sorted(self.config.events))})"
        return Event(entry_id, applicant, kind), ""

    def apply(self, event: Event) -> None:
        """Add the event's amounts to the applicant's streaming sums, once per event even if redelivered."""
        marker = f"{SUMS_PREFIX}:applied:{self.config.events_stream}:{event.id}"
        args: list[Any] = [self.config.applied_ttl_days * 86400]
        for column, amount in self.config.events[event.kind].items():
            args += [column, amount]
        self.features.call("apply", self.apply_script, [marker, self.sums_key(event.applicant_id)], args)

    def current(self, applicant_ids: list[str]) -> tuple[pd.DataFrame, list[str]]:
        """Batch features plus streaming sums, one row per applicant known to the store; and the unknown ids."""
        ids = list(dict.fromkeys(applicant_ids))
        found = self.features.find(ids)
        known = [(i, record) for i, record in zip(ids, found, strict=True) if record is not None]
        pipe = self.redis.pipeline(transaction=False)
        for applicant, _ in known:
            pipe.hgetall(self.sums_key(applicant))
        sums = self.features.call("read", pipe.execute) if known else []
        rows = []
        for (applicant, record), added in zip(known, sums, strict=True):
            for column, amount in added.items():
                name = _text(column)
                record[name] = (record.get(name) or 0.0) + float(amount)
            rows.append({"_id": applicant, **record})
        unknown = [i for i, record in zip(ids, found, strict=True) if record is None]
        return pd.DataFrame(rows, columns=["_id", *self.spec.raw_columns]), unknown

    def score(self, events: list[Event]) -> tuple[list[dict[str, str]], list[tuple[str, dict[str, str], str]]]:
        """Prediction fields per scorable event, and (entry id, fields, reason) per event that is not."""
        if not events:
            return [], []
        loaded = self.live.current  # the version this batch is scored with, whatever is swapped in meanwhile
        frame, unknown = self.current([e.applicant_id for e in events])
        X = coerce_columns(frame[self.spec.raw_columns], self.spec, origin="stream")
        reasons = rule_violations(X, self.spec)
        broken, valid = dict(zip(frame["_id"], reasons, strict=True)), (reasons == "").to_numpy()
        predicted = loaded.model.predict(X[valid]) if valid.any() else pd.DataFrame()
        answers = {applicant: row for applicant, row in zip(frame["_id"][valid], predicted.to_dict("records"),
                                                             strict=True)}
        scored_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        scored, rejected = [], []
        for event in events:
            source = {"applicant_id": event.applicant_id, "event": event.kind}
            if event.applicant_id in unknown:
                rejected.append((event.id, source, f"no precomputed features for applicant {event.applicant_id}"))
            elif event.applicant_id not in answers:
                rejected.append((event.id, source, f"the applicant's features break a value rule: "
                                                   f"{broken[event.applicant_id]}"))
            else:
                answer = answers[event.applicant_id]
                scored.append({**source, "event_id": event.id, "probability": repr(float(answer["probability"])),
                               "decision": str(answer["decision"]),
                               "reason_codes": json.dumps(list(answer["reason_codes"])), "model_uri": loaded.uri,
                               "model_version": loaded.label, "scored_at": scored_at})
        return scored, rejected

    def run(self, max_events: int = 0, idle_seconds: float = 0) -> Tally:
        """Consume until interrupted, or `max_events` handled, or `idle_seconds` without a new event."""
        self.ensure_group()
        while entries := self.read(pending=True) or self.claim():  # its own unfinished events, then dead scorers'
            self.process(entries)
        idle_since = time.monotonic()
        while not (max_events and self.tally.scored + self.tally.rejected >= max_events):
            entries = self.read(pending=False) or self.claim()
            if entries:
                self.process(entries)
                idle_since = time.monotonic()
                logger.info("%s", self.tally.line())
            elif idle_seconds and time.monotonic() - idle_since >= idle_seconds:
                break
        return self.tally


def _entries(raw: list[Any]) -> list[tuple[str, dict[str, str]]]:
    """Stream entries as (id, fields) text."""
    return [(_text(i), {_text(k): _text(v) for k, v in (fields or {}).items()}) for i, fields in raw]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
