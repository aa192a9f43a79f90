"""Streaming prediction: batch features plus streaming features, scored as events arrive.

Events come on a Redis stream (`XADD creditflow:events * applicant_id 17 event late_payment_30_59`).
Each event type adds to some of the model's columns (serving/stream.yaml: a reported late payment
adds one to a delinquency count, a new credit line one to the open lines). Those streaming
features are running sums per applicant in Redis (`creditflow:stream:<dataset>:<id>`), on top of the
applicant's batch features (`creditflow features load`). On each event the applicant is scored
again with both, and the prediction goes to an output stream with the event that caused it.

Several scorers may share the work (one Redis consumer group). A batch costs three round trips: the
read; the applicants' features, sums and applied-markers; and one MULTI/EXEC transaction that applies
the scored events' sums, publishes predictions and rejections and acknowledges the entries: all of it
or none, so a prediction is published once per event even when a scorer is killed; events a scorer took
and left unacknowledged (it died) are read again when it restarts, or claimed by another scorer after
claim_idle_ms. An event's sums are applied once (the script that adds them marks it applied; the
marker costs Redis ~100 bytes for applied_ttl_days), so an event two scorers both took is never
counted twice. Events apply in stream order per applicant, and each prediction describes the applicant right
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

from creditflow.data.dataset import records_frame
from creditflow.data.rules import RuleCheck
from creditflow.model.inputs import applicant_matrix, spec_vocabulary
from creditflow.registry.lease import Step, no_step
from creditflow.serving.features import FeatureStore, FeatureStoreError
from creditflow.serving.live import LiveModel
from creditflow.serving.segments import SegmentRouter
from creditflow.serving.stream_config import StreamConfig, check_event_columns
from creditflow.serving.stream_redis import queue_apply, queue_publish, queue_sums, sums, text
from creditflow.serving.typed import RoutedRows
from creditflow.specs import DatasetSpec

logger = logging.getLogger(__name__)

SUMS_PREFIX = "creditflow:stream"


Entry = tuple[str, dict[Any, Any]]  # (entry id, fields as Redis sent them)
Rejected = tuple[str, dict[str, str], str]  # (entry id, printable fields, reason)


@dataclass(frozen=True)
class Event:
    id: str  # the stream entry's id
    applicant_id: str
    kind: str
    segment: str | None = None  # the segment the event names (a segmented scorer), None: the fallback's


@dataclass
class Outcome:
    """What handling a batch gives its commit: predictions, rejections, and the events whose sums to apply."""

    scored: list[dict[str, str]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    applies: list[Event] = field(default_factory=list)  # scored events not applied before (not redeliveries)


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
        self.rules = RuleCheck.from_spec(self.spec, spec_vocabulary(self.spec))  # the value rules' table, built once
        self.features = FeatureStore(config.store, self.spec.name)
        self.redis = self.features.client
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
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
        """Score or reject every entry of one batch, then apply, publish and acknowledge: none is left pending.

        Redelivered entries past max_deliveries are dead-lettered first. When the batch raises, its
        entries are handled one at a time, so an entry that breaks scoring is rejected alone.
        """
        dead = self.dead_letters(entries) if redelivered else []
        gone = {entry_id for entry_id, _, _ in dead}
        todo = [e for e in entries if e[0] not in gone]
        try:
            done = self.handle(todo)
        except FeatureStoreError:
            raise  # Redis is down: nothing acknowledged, the entries are read again
        except Exception:
            logger.exception("stream: a batch of %d entries failed; handling them one at a time", len(todo))
            self.one_by_one(todo)
            entries, done = [e for e in entries if e[0] in gone], Outcome()
        done.rejected[:0] = dead
        self.finish(entries, done)

    def finish(self, entries: list[Entry], done: Outcome) -> None:
        self.on_step("scored")
        self.commit(entries, done)
        self.on_step("published")
        self.tally.scored += len(done.scored)
        self.tally.rejected += len(done.rejected)

    def commit(self, entries: list[Entry], done: Outcome) -> None:
        """One MULTI/EXEC: the scored events' sums applied, predictions and rejections published, entries
        acknowledged; all of it or none, in one round trip."""
        pipe = self.redis.pipeline(transaction=True)
        self.queue_apply(pipe, done.applies)
        queue_publish(pipe, self.config.predictions_stream, done.scored)
        queue_publish(pipe, self.config.rejected_stream, [{**fields, "event_id": entry_id, "reason": reason}
                                                           for entry_id, fields, reason in done.rejected])
        if entries:
            pipe.xack(self.config.events_stream, self.config.group, *[i for i, _ in entries])
        self.features.call("publish", pipe.execute)

    def one_by_one(self, entries: list[Entry]) -> None:
        """Each entry handled and committed alone (the next one reads the sums it applied)."""
        for entry in entries:
            try:
                done = self.handle([entry])
            except FeatureStoreError:
                raise
            except Exception:
                logger.exception("stream: entry %s cannot be scored", entry[0])
                done = Outcome(rejected=[(entry[0], _printable(entry[1]), "internal error while scoring this event; "
                                          "the scorer's log has the details")])
            self.finish([entry], done)

    def dead_letters(self, entries: list[Entry]) -> list[Rejected]:
        """Entries delivered more than max_deliveries times (each failed to be handled): rejected, never retried."""
        if not entries:
            return []
        ids = [entry_id for entry_id, _ in entries]
        pending = self.features.call("read", self.redis.xpending_range, self.config.events_stream, self.config.group,
                                     min(ids), max(ids), len(ids) * 2)
        counts = {text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        limit = self.config.max_deliveries
        return [(entry_id, _printable(fields), f"delivered {counts[entry_id]} times without being handled "
                                               f"(more than max_deliveries {limit}): dead-lettered")
                for entry_id, fields in entries if counts.get(entry_id, 0) > limit]

    def handle(self, entries: list[Entry]) -> Outcome:
        """Prediction fields per scored event, (id, fields, reason) per rejected one (in stream order), and the
        events whose sums the commit applies."""
        events, rejected = [], []
        for entry_id, raw in entries:
            event, reason = self.parse(entry_id, raw)
            if event:
                events.append(event)
            else:
                rejected.append((entry_id, _printable(raw), reason))
        if not events:
            return Outcome(rejected=rejected)
        loaded = self.live.current  # the version this batch is scored with, whatever is swapped in meanwhile
        rows, reasons, applied = self.decide(events)
        valid = [e for e in events if e.id not in reasons]
        rejected += [(e.id, {"applicant_id": e.applicant_id, "event": e.kind}, reasons[e.id])
                     for e in events if e.id in reasons]
        scored = self.predictions(valid, loaded.answer(self.routed(rows, valid), typed=True), loaded) if valid else []
        return Outcome(scored, sorted(rejected, key=lambda r: _order(r[0])), [e for e in valid if e.id not in applied])

    def predictions(self, events: list[Event], answer: pd.DataFrame, loaded: Any) -> list[dict[str, str]]:
        """Each scored event's prediction entry (the answer's rows, in the events' order)."""
        uris = {m.label: m.uri for m in loaded.members}
        scored_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        probability, decision, version = (answer[c].tolist() for c in ("probability", "decision", "model_version"))
        codes = _json_lists(answer["reason_codes"].tolist())
        statements = (_json_lists(answer["reason_statements"].tolist()) if "reason_statements" in answer
                      else ["[]"] * len(events))
        segment = answer["segment_model"].tolist() if "segment_model" in answer else None
        out = []
        for i, event in enumerate(events):
            fields = {"applicant_id": event.applicant_id, "event": event.kind, "event_id": event.id,
                      "probability": repr(float(probability[i])), "decision": str(decision[i]),
                      "reason_codes": codes[i], "reason_statements": statements[i],
                      "model_uri": uris[version[i]], "model_version": version[i]}
            if segment is not None:
                fields["segment_model"] = str(segment[i]).lower()
            fields["scored_at"] = scored_at
            out.append(fields)
        return out

    def parse(self, entry_id: str, raw: dict[Any, Any]) -> tuple[Event | None, str]:
        try:
            fields = {text(k): text(v) for k, v in raw.items()}
        except UnicodeDecodeError:
            return None, "a field is not UTF-8 text (kept as base64)"
        applicant, kind = fields.get("applicant_id", "").strip(), fields.get("event", "").strip()
        if not applicant:
            return None, "no applicant_id field"
        if kind not in self.config.events:
            return None, f"unknown event type '{kind}' (known: {', '.join(sorted(self.config.events))})"
        segment = (fields.get(self.config.segments.column, "").strip() or None) if self.config.segments else None
        return Event(entry_id, applicant, kind, segment), ""

    def decide(self, events: list[Event]) -> tuple[pd.DataFrame, dict[str, str], set[str]]:
        """The states of the events to score (the applicant right after each; the model's typed rows, in stream
        order), the reason of each rejected event, and the events applied already (their sums are stored).

        Events apply in stream order, per applicant. A rejected event changes nothing: the next event of
        that applicant starts from the state before it, so the applicant stays scorable. An event already
        applied (read again after a crash) is in the stored sums already and adds nothing more.
        """
        base, unknown, applied = self.lookup(events)
        reasons = {e.id: f"no precomputed features for applicant {e.applicant_id}"
                   for e in events if e.applicant_id in unknown}
        while True:  # each pass rejects the first rule-breaking event of some applicants; rarely more than one
            state = dict(base)
            states, ids = [], []
            for e in events:
                if e.id in reasons:
                    continue
                if e.id not in applied:
                    state[e.applicant_id] = _added(state[e.applicant_id], self.config.events[e.kind])
                states.append(state[e.applicant_id])
                ids.append(e.id)
            rows = self.frame(states)  # typed once per pass, for the rules and the model
            reasons_now = self.rules.reasons(applicant_matrix(rows, self.spec)).tolist() if ids else []
            broken = dict(zip(ids, reasons_now, strict=True))
            first: dict[str, str] = {}
            for e in events:
                if broken.get(e.id) and e.applicant_id not in first:
                    first[e.applicant_id] = e.id
            if not first:
                return rows, reasons, applied
            reasons.update({i: f"the applicant's features would break a value rule: {broken[i]}"
                            for i in first.values()})

    def frame(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        """Applicant rows as the model's typed raw columns."""
        return records_frame(rows, self.spec, origin="stream")

    def routed(self, rows: pd.DataFrame, events: list[Event]) -> pd.DataFrame | RoutedRows:
        """Typed rows, with each event's segment beside them for a segmented scorer."""
        return RoutedRows(rows, [e.segment for e in events]) if self.config.segments else rows

    def lookup(self, events: list[Event]) -> tuple[dict[str, dict[str, Any]], set[str], set[str]]:
        """In one round trip: batch features plus stored sums per applicant known to the store, the unknown
        applicants, and the events whose sums are stored already (a redelivery)."""
        ids = list(dict.fromkeys(e.applicant_id for e in events))
        pipe = self.redis.pipeline(transaction=False)
        pipe.mget([self.features.key(i) for i in ids])
        queue_sums(pipe, [self.sums_key(i) for i in ids])
        pipe.mget([self._marker(e) for e in events])
        found, stored, markers = self.features.call("read", pipe.execute)
        records = self.features.records(ids, found)
        base = {i: _added(record, added) for i, record, added in zip(ids, records, sums(stored), strict=True)
                if record is not None}
        applied = {e.id for e, marker in zip(events, markers, strict=True) if marker is not None}
        return base, {i for i, record in zip(ids, records, strict=True) if record is None}, applied

    def _marker(self, event: Event) -> str:
        return f"{SUMS_PREFIX}:applied:{self.config.events_stream}:{event.id}"

    def queue_apply(self, pipe: Any, events: list[Event]) -> None:
        """Queue adding each event's amounts to its applicant's sums, in order, each once (a marker per event)."""
        queue_apply(pipe, self.config.applied_ttl_days * 86400,
                    [(self._marker(e), self.sums_key(e.applicant_id), self.config.events[e.kind]) for e in events])

    def apply(self, events: list[Event]) -> None:
        """Apply events' sums alone, outside a commit (what a scorer that died after applying left behind)."""
        pipe = self.redis.pipeline(transaction=False)
        self.queue_apply(pipe, events)
        self.features.call("apply", pipe.execute)

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
    return [(text(i), dict(fields or {})) for i, fields in raw]


def _printable(raw: dict[Any, Any]) -> dict[str, str]:
    """An entry's fields as text for the rejected stream: what is not UTF-8 as "base64:..."."""
    def safe(value: Any) -> str:
        try:
            return text(value)
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(value).decode()
    return {safe(k): safe(v) for k, v in raw.items()}


def _json_lists(values: list[Any]) -> list[str]:
    """Each list as JSON text, encoded once per list object (rows with the same reasons share one list)."""
    done: dict[int, str] = {}
    return [done[id(v)] if id(v) in done else done.setdefault(id(v), json.dumps(list(v))) for v in values]


def _added(row: dict[str, Any], amounts: dict[str, float]) -> dict[str, Any]:
    """A copy of `row` with `amounts` added to its columns (a missing value counts as 0)."""
    out = dict(row)
    for column, amount in amounts.items():
        out[column] = (out.get(column) or 0.0) + amount
    return out


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
