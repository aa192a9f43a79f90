"""Streaming prediction: batch features plus streaming features, scored as events arrive.

Events come on a Redis stream (`XADD creditflow:events * applicant_id 17 event late_payment_30_59`).
Each event type adds to some of the model's columns (serving/stream.yaml: a reported late payment
adds one to a delinquency count, a new credit line one to the open lines). Those streaming
features are running sums per applicant in Redis (`creditflow:stream:<dataset>:<id>`), on top of the
applicant's batch features (`creditflow features load`). On each event the applicant is scored
again with both, and the prediction goes to an output stream with the event that caused it.

Several scorers may share the work (one Redis consumer group). A batch's predictions, rejections and
acknowledgements go to Redis in one MULTI/EXEC transaction: all of them or none, so a prediction is
published once per event even when a scorer is killed; events a scorer took and left unacknowledged
(it died) are read again when it restarts, or claimed by another scorer after claim_idle_ms. An
event's sums are applied once (a Lua script marks it applied in the same step; the marker costs
Redis ~100 bytes for applied_ttl_days), so a redelivered event is scored again but never counted
twice. Events apply in stream order per applicant, and each prediction describes the applicant right
after its event, however the events were batched. Events that cannot be scored (unreadable fields,
unknown type, no batch features, a state that would break a value rule, an error in the model for
that event alone) go to a rejected stream with the reason and are acknowledged: a rejected event
changes no sums, so the applicant stays scorable. An entry read more than max_deliveries times
without being handled (a scorer crashed on it) is dead-lettered the same way.
With `segments:` (serving/segments.yaml) an event is scored by its segment's model (`Region R07`) or the fallback.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from creditflow.data.dataset import coerce_columns
from creditflow.data.rules import rule_violations
from creditflow.registry.lease import Step, no_step
from creditflow.serving.features import FeatureStore, FeatureStoreError
from creditflow.serving.live import LiveModel
from creditflow.serving.requests import RoutedRows
from creditflow.serving.segments import SegmentRouter
from creditflow.serving.stream_config import StreamConfig, check_event_columns
from creditflow.specs import DatasetSpec

logger = logging.getLogger(__name__)

SUMS_PREFIX = "creditflow:stream"
APPLY = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  for i = 2, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], ARGV[i + 1]) end
  return 1
end
return 0
"""  # KEYS: the event's applied-marker, the applicant's sums; ARGV: marker TTL, then column, amount pairs


Entry = tuple[str, dict[Any, Any]]  # (entry id, fields as Redis sent them)
Rejected = tuple[str, dict[str, str], str]  # (entry id, printable fields, reason)


@dataclass(frozen=True)
class Event:
    id: str  # the stream entry's id
    applicant_id: str
    kind: str
    segment: str | None = None  # the segment the event names (a segmented scorer), None: the fallback's


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

    def __init__(self, config: StreamConfig, live: LiveModel | SegmentRouter, consumer: str = "",
                 on_step: Step = no_step):
        self.config, self.live, self.on_step = config, live, on_step  # on_step: the hook of the kill tests
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

    def read(self, pending: bool) -> list[Entry]:
        """The next entries for this consumer: its own unacknowledged ones first (pending), then new ones."""
        streams = {self.config.events_stream: "0" if pending else ">"}
        reply = self.features.call("read", self.redis.xreadgroup, self.config.group, self.consumer, streams,
                                    self.config.batch_size, None if pending else self.config.block_ms)
        return _entries(reply[0][1] if reply else [])

    def claim(self) -> list[Entry]:
        """Entries another scorer took and left unacknowledged for claim_idle_ms (it died): now this one's."""
        reply = self.features.call("claim", self.redis.xautoclaim, self.config.events_stream, self.config.group,
                                    self.consumer, self.config.claim_idle_ms, "0-0", self.config.batch_size)
        return _entries(reply[1])

    def process(self, entries: list[Entry], redelivered: bool = False) -> None:
        """Score or reject every entry of one batch, publish, acknowledge: none is left pending.

        Redelivered entries past max_deliveries are dead-lettered first. When the batch raises, its
        entries are handled one at a time, so an entry that breaks scoring is rejected alone.
        """
        rejected = self.dead_letters(entries) if redelivered else []
        dead = {entry_id for entry_id, _, _ in rejected}
        todo = [e for e in entries if e[0] not in dead]
        try:
            scored, more = self.handle(todo)
        except FeatureStoreError:
            raise  # Redis is down: nothing acknowledged, the entries are read again
        except Exception:
            logger.exception("stream: a batch of %d entries failed; handling them one at a time", len(todo))
            scored, more = self.one_by_one(todo)
        rejected += more
        pipe = self.redis.pipeline(transaction=True)  # MULTI/EXEC: published and acknowledged together, or neither
        for fields in scored:
            pipe.xadd(self.config.predictions_stream, fields)
        for entry_id, fields, reason in rejected:
            pipe.xadd(self.config.rejected_stream, {**fields, "event_id": entry_id, "reason": reason})
        if entries:
            pipe.xack(self.config.events_stream, self.config.group, *[i for i, _ in entries])
        self.features.call("publish", pipe.execute)
        self.on_step("published")
        self.tally.scored += len(scored)
        self.tally.rejected += len(rejected)

    def one_by_one(self, entries: list[Entry]) -> tuple[list[dict[str, str]], list[Rejected]]:
        scored, rejected = [], []
        for entry in entries:
            try:
                one, more = self.handle([entry])
            except FeatureStoreError:
                raise
            except Exception:
                logger.exception("stream: entry %s cannot be scored", entry[0])
                one, more = [], [(entry[0], _printable(entry[1]), "internal error while scoring this event; "
                                  "the scorer's log has the details")]
            scored, rejected = scored + one, rejected + more
        return scored, rejected

    def dead_letters(self, entries: list[Entry]) -> list[Rejected]:
        """Entries delivered more than max_deliveries times (each failed to be handled): rejected, never retried."""
        if not entries:
            return []
        ids = [entry_id for entry_id, _ in entries]
        pending = self.features.call("read", self.redis.xpending_range, self.config.events_stream, self.config.group,
                                     min(ids), max(ids), len(ids) * 2)
        counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        limit = self.config.max_deliveries
        return [(entry_id, _printable(fields), f"delivered {counts[entry_id]} times without being handled "
                                               f"(more than max_deliveries {limit}): dead-lettered")
                for entry_id, fields in entries if counts.get(entry_id, 0) > limit]

    def handle(self, entries: list[Entry]) -> tuple[list[dict[str, str]], list[Rejected]]:
        """Prediction fields per scored event and (id, fields, reason) per rejected one, in stream order."""
        events, rejected = [], []
        for entry_id, raw in entries:
            event, reason = self.parse(entry_id, raw)
            if event:
                events.append(event)
            else:
                rejected.append((entry_id, _printable(raw), reason))
        if not events:
            return [], rejected
        loaded = self.live.current  # the version this batch is scored with, whatever is swapped in meanwhile
        states, reasons = self.decide(events)
        valid = [e for e in events if not reasons.get(e.id)]
        self.apply_all(valid)
        self.on_step("applied")
        rows = self.routed(states.loc[[e.id for e in valid]].reset_index(drop=True), [e.segment for e in valid])
        predicted = loaded.answer(rows) if valid else pd.DataFrame()
        answers = dict(zip([e.id for e in valid], predicted.to_dict("records"), strict=True))
        uris = {m.label: m.uri for m in loaded.members}
        scored_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        scored = []
        for event in events:
            source = {"applicant_id": event.applicant_id, "event": event.kind}
            if reasons.get(event.id):
                rejected.append((event.id, source, reasons[event.id]))
                continue
            answer = answers[event.id]
            scored.append({**source, "event_id": event.id, "probability": repr(float(answer["probability"])),
                           "decision": str(answer["decision"]),
                           "reason_codes": json.dumps(list(answer["reason_codes"])),
                           "reason_statements": json.dumps(list(answer.get("reason_statements", []))),
                           "model_uri": uris[answer["model_version"]], "model_version": answer["model_version"],
                           **{k: str(answer[k]).lower() for k in ("segment_model",) if k in answer},
                           "scored_at": scored_at})
        return scored, sorted(rejected, key=lambda r: _order(r[0]))

    def parse(self, entry_id: str, raw: dict[Any, Any]) -> tuple[Event | None, str]:
        try:
            fields = {_text(k): _text(v) for k, v in raw.items()}
        except UnicodeDecodeError:
            return None, "a field is not UTF-8 text (kept as base64)"
        applicant, kind = fields.get("applicant_id", "").strip(), fields.get("event", "").strip()
        if not applicant:
            return None, "no applicant_id field"
        if kind not in self.config.events:
            return None, f"unknown event type '{kind}' (known: {', '.join(sorted(self.config.events))})"
        segment = (fields.get(self.config.segments.column, "").strip() or None) if self.config.segments else None
        return Event(entry_id, applicant, kind, segment), ""

    def decide(self, events: list[Event]) -> tuple[pd.DataFrame, dict[str, str]]:
        """Each scored event's state (the applicant right after it) as the model's typed row, indexed by event id,
        and the reason of each rejected event.

        Events apply in stream order, per applicant. A rejected event changes nothing: the next event of
        that applicant starts from the state before it, so the applicant stays scorable. An event already
        applied (read again after a crash) is in the stored sums already and adds nothing more.
        """
        base, unknown = self.current([e.applicant_id for e in events])
        applied = self.applied(events)
        reasons = {e.id: f"no precomputed features for applicant {e.applicant_id}"
                   for e in events if e.applicant_id in unknown}
        while True:  # each pass rejects the first rule-breaking event of some applicants; rarely more than one
            state = {a: dict(row) for a, row in base.items()}
            states: dict[str, dict[str, Any]] = {}
            for e in events:
                if e.id in reasons:
                    continue
                if not applied[e.id]:
                    state[e.applicant_id] = _added(state[e.applicant_id], self.config.events[e.kind])
                states[e.id] = state[e.applicant_id]
            rows, broken = self.broken(states)
            first: dict[str, str] = {}
            for e in events:
                if broken.get(e.id) and e.applicant_id not in first:
                    first[e.applicant_id] = e.id
            if not first:
                return rows, reasons
            reasons.update({i: f"the applicant's features would break a value rule: {broken[i]}"
                            for i in first.values()})

    def broken(self, states: dict[str, dict[str, Any]]) -> tuple[pd.DataFrame, dict[str, str]]:
        """The states as typed rows (indexed by event id; typed once per batch, for the rules and the model) and the
        value rule each breaks ("" when none), checked for all states at once."""
        rows = self.frame(list(states.values())).set_axis(list(states))
        if not states:
            return rows, {}
        return rows, dict(zip(states, rule_violations(rows, self.spec), strict=True))

    def frame(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        """Applicant rows as the model's typed raw columns."""
        return coerce_columns(pd.DataFrame(rows, columns=self.spec.raw_columns), self.spec, origin="stream")

    def routed(self, rows: pd.DataFrame, segments: list[str | None]) -> pd.DataFrame | RoutedRows:
        """Typed rows, with each event's segment beside them for a segmented scorer."""
        return RoutedRows(rows, segments) if self.config.segments else rows

    def applied(self, events: list[Event]) -> dict[str, bool]:
        """Whether each event's sums are in the store already (a redelivery)."""
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            pipe.exists(self._marker(event))
        return {e.id: bool(n) for e, n in zip(events, self.features.call("read", pipe.execute), strict=True)}

    def _marker(self, event: Event) -> str:
        return f"{SUMS_PREFIX}:applied:{self.config.events_stream}:{event.id}"

    def apply(self, event: Event) -> None:
        """Add the event's amounts to the applicant's streaming sums, once per event even if redelivered."""
        self.apply_all([event])

    def apply_all(self, events: list[Event]) -> None:
        """Add each event's amounts to its applicant's sums, in order, each once (a marker per event)."""
        if not events:
            return
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            args: list[Any] = [self.config.applied_ttl_days * 86400]
            for column, amount in self.config.events[event.kind].items():
                args += [column, amount]
            self.apply_script(keys=[self._marker(event), self.sums_key(event.applicant_id)], args=args, client=pipe)
        self.features.call("apply", pipe.execute)

    def current(self, applicant_ids: list[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Batch features plus stored streaming sums per applicant known to the store; and the unknown ids."""
        ids = list(dict.fromkeys(applicant_ids))
        found = self.features.find(ids)
        known = [(i, record) for i, record in zip(ids, found, strict=True) if record is not None]
        pipe = self.redis.pipeline(transaction=False)
        for applicant, _ in known:
            pipe.hgetall(self.sums_key(applicant))
        sums = self.features.call("read", pipe.execute) if known else []
        rows = {}
        for (applicant, record), added in zip(known, sums, strict=True):
            rows[applicant] = _added(record, {_text(c): float(a) for c, a in added.items()})
        unknown = [i for i, record in zip(ids, found, strict=True) if record is None]
        return rows, unknown

    def run(self, max_events: int = 0, idle_seconds: float = 0) -> Tally:
        """Consume until interrupted, or `max_events` handled, or `idle_seconds` without a new event."""
        self.ensure_group()
        while entries := self.read(pending=True) or self.claim():  # its own unfinished events, then dead scorers'
            self.process(entries, redelivered=True)
        idle_since = time.monotonic()
        while not (max_events and self.tally.scored + self.tally.rejected >= max_events):
            fresh = self.read(pending=False)
            entries = fresh or self.claim()
            if entries:
                self.process(entries, redelivered=not fresh)
                idle_since = time.monotonic()
                logger.info("%s", self.tally.line())
            elif idle_seconds and time.monotonic() - idle_since >= idle_seconds:
                break
        return self.tally


def _entries(raw: list[Any]) -> list[Entry]:
    """Stream entries as (id, fields as Redis sent them): fields are decoded where they are parsed."""
    return [(_text(i), dict(fields or {})) for i, fields in raw]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _printable(raw: dict[Any, Any]) -> dict[str, str]:
    """An entry's fields as text for the rejected stream: what is not UTF-8 as "base64:..."."""
    def safe(value: Any) -> str:
        try:
            return _text(value)
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(value).decode()
    return {safe(k): safe(v) for k, v in raw.items()}


def _added(row: dict[str, Any], amounts: dict[str, float]) -> dict[str, Any]:
    """A copy of `row` with `amounts` added to its columns (a missing value counts as 0)."""
    out = dict(row)
    for column, amount in amounts.items():
        out[column] = (out.get(column) or 0.0) + amount
    return out


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
