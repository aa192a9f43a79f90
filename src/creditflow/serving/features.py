"""Precomputed applicant features in Redis: online prediction with batch features.

A batch job (`creditflow features load`) writes each applicant's raw columns, as the model reads
them, under `creditflow:features:<dataset>:<applicant id>` (one JSON object, null for missing).
The online endpoint (`creditflow serve --feature-store redis://...`) then scores applicants by id:
POST /invocations/by-id `{"applicant_ids": ["17", "42"]}` looks their features up and scores them
exactly as POST /invocations would score the same records. redis is imported where a store is opened.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from creditflow.data.dataset import read_applicants
from creditflow.data.rules import rule_violations
from creditflow.errors import CreditflowError, SpecError, first_line
from creditflow.serving.resp import RespClient, RespError
from creditflow.serving.settling import Settling
from creditflow.specs import DatasetSpec

KEY_PREFIX = "creditflow:features"
LOADED_AT = "_loaded_at"  # stored with each applicant's features; not a model column
CHUNK = 10_000  # applicants per Redis round trip
CONNECT_SECONDS, READ_SECONDS = 2, 5  # the store unreachable, or not answering: both clients


class FeatureStoreError(CreditflowError):
    """The feature store cannot be reached, or refused a command."""


class UnknownApplicants(CreditflowError):
    """Applicants the feature store holds no features for."""

    def __init__(self, ids: list[str]):
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        super().__init__(f"no precomputed features for applicant(s) {shown}")
        self.ids = ids


class UnreadableRecords(CreditflowError):
    """Stored records that are not a JSON object of features (written by something else, or damaged)."""

    def __init__(self, ids: list[str]):
        super().__init__(f"the stored features of applicant(s) {', '.join(ids[:5])} cannot be read")
        self.ids = ids


@dataclass(frozen=True)
class LoadResult:
    rows: int
    loaded: int
    skipped: int  # rows breaking a value rule: the endpoint would refuse them
    store: str
    removed: int = 0  # of the skipped, applicants whose earlier record was deleted (no stale features served)
    duplicated: int = 0  # ids on more than one row: the last row of each is kept

    def summary(self) -> str:
        duplicated = f"; {self.duplicated:,} ids on more than one row (the last kept)" if self.duplicated else ""
        return (f"features: {self.loaded:,} applicants loaded into {self.store}, {self.skipped:,} skipped "
                f"(they break a value rule; {self.removed:,} earlier records of them removed), of {self.rows:,} rows"
                f"{duplicated}")


class FeatureStore:
    """One dataset's applicant features in Redis, keyed by applicant id."""

    def __init__(self, url: str, dataset: str):
        import redis

        try:
            self.client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_SECONDS, socket_timeout=READ_SECONDS)
        except ValueError as exc:
            raise FeatureStoreError(f"feature store URL {url!r}: {exc}") from None
        self.url, self.dataset = url, dataset
        self._async: RespClient | None = None  # the endpoint's connection, made on first `get_async`
        self._queued: list[tuple[list[str], asyncio.Future]] = []  # lookups waiting for the next MGET
        self._settling = Settling(self._fetch_queued, CHUNK)

    def key(self, applicant_id: str) -> str:
        return f"{KEY_PREFIX}:{self.dataset}:{applicant_id}"

    def call(self, what: str, fn: Any, *args: Any) -> Any:
        """A Redis command with one-line errors."""
        import redis

        try:
            return fn(*args)
        except redis.RedisError as exc:
            raise self.failed(what, exc) from None

    def failed(self, what: str, exc: Exception) -> FeatureStoreError:
        return FeatureStoreError(f"feature store {self.url} {what} failed ({type(exc).__name__}: "
                                 f"{first_line(exc) if str(exc) else 'no detail'})")

    def put(self, frame: pd.DataFrame, id_column: str, ttl_seconds: int = 0) -> int:
        """Write each row's columns (all but the id) as one JSON object; returns the rows written."""
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        values = frame.drop(columns=[id_column]).assign(**{LOADED_AT: stamp})
        records = values.astype(object).where(values.notna(), None).to_dict("records")
        lines = [json.dumps(record) for record in records]  # exact doubles (pandas' to_json rounds), null for NaN
        for start in range(0, len(lines), CHUNK):
            pipe = self.client.pipeline(transaction=False)
            for applicant, line in zip(frame[id_column].iloc[start:start + CHUNK], lines[start:start + CHUNK],
                                       strict=True):
                pipe.set(self.key(applicant), line, ex=ttl_seconds or None)
            self.call("write", pipe.execute)
        return len(lines)

    def find(self, ids: list[str]) -> list[dict[str, Any] | None]:
        """The stored features of each id, in order (loaded-at stamp removed); None where there are none."""
        return self.records(ids, self.call("read", self.client.mget, [self.key(i) for i in ids]) if ids else [])

    def records(self, ids: list[str], found: list[bytes | None]) -> list[dict[str, Any] | None]:
        """The stored values of `ids` (an MGET of their keys, maybe in a caller's pipeline) as `find` returns them."""
        records, unreadable = [], []
        for applicant, value in zip(ids, found, strict=True):
            record = None if value is None else _record(value)
            if value is not None and record is None:
                unreadable.append(applicant)
            records.append(record)
        if unreadable:
            raise UnreadableRecords(unreadable)
        return records

    def get(self, ids: list[str]) -> list[dict[str, Any]]:
        """The stored features of each id, in order; UnknownApplicants if any is absent."""
        return _known(ids, self.find(ids))

    async def get_async(self, ids: list[str]) -> list[dict[str, Any]]:
        """`get` on the endpoint's own connection (`serving.resp`): its event loop answers other requests meanwhile, and
        the lookups of requests read together share one MGET, sent once the queue has settled (`serving.settling`;
        `_fetch_queued`; each request still gets its own records and its own errors)."""
        loop = asyncio.get_running_loop()
        self._settling.joined(loop, len(ids))
        future: asyncio.Future = loop.create_future()
        self._queued.append((ids, future))
        return _known(ids, self.records(ids, await future))

    def _fetch_queued(self) -> None:
        """One MGET for every lookup queued so far, its answer cut back per lookup (`_hand_out`)."""
        queued, self._queued = self._queued, []
        if self._async is None:  # made in the loop that uses it (its connection belongs to that loop)
            self._async = RespClient(self.url, connect_timeout=CONNECT_SECONDS, timeout=READ_SECONDS)
        try:
            reply = self._async.send("MGET", *[self.key(i) for ids, _ in queued for i in ids])
        except Exception as exc:  # handed to every waiting lookup below, as a failed read would be
            reply = asyncio.get_running_loop().create_future()
            reply.set_exception(exc)
        reply.add_done_callback(partial(self._hand_out, queued))

    def _hand_out(self, queued: list[tuple[list[str], asyncio.Future]], reply: asyncio.Future) -> None:
        """Each waiting lookup its part of the MGET's answer, or the failure: none is left waiting."""
        failure = RespError("the read was cancelled") if reply.cancelled() else reply.exception()
        start = 0
        if isinstance(failure, RespError):
            failure = self.failed("read", failure)
        for ids, future in queued:
            if not future.done():  # not a request cancelled meanwhile (client gone)
                if failure is None:
                    future.set_result(reply.result()[start:start + len(ids)])
                else:
                    future.set_exception(failure)
            start += len(ids)

    def delete(self, ids: list[str]) -> int:
        """Remove these applicants' records; how many there were."""
        deleted = 0
        for start in range(0, len(ids), CHUNK):
            keys = [self.key(i) for i in ids[start:start + CHUNK]]
            deleted += int(self.call("write", self.client.delete, *keys)) if keys else 0
        return deleted

    def ping(self) -> None:
        self.call("ping", self.client.ping)

    def ttl(self, applicant_id: str) -> int:
        """Seconds the applicant's features have left (-1: no expiry, -2: absent)."""
        return int(self.call("read", self.client.ttl, self.key(applicant_id)))


def load_features(path: str | Path, spec: DatasetSpec, store: FeatureStore, ttl_hours: float = 0) -> LoadResult:
    """Load a file of applicants into the store; rows breaking a value rule are skipped and counted, and
    their earlier records removed (a reload never leaves stale features served)."""
    ttl_seconds = round(ttl_hours * 3600)
    if ttl_hours < 0 or (ttl_hours > 0 and ttl_seconds < 1):
        raise SpecError(f"--ttl-hours {ttl_hours:g}: give 0 (no expiry) or at least one second "
                        f"({1 / 3600:.6f} hours)")
    id_column = spec.require_id_column("the feature store")
    frame = read_applicants(path, spec, ids=True)
    ok = (rule_violations(frame[spec.raw_columns], spec) == "").to_numpy()
    ids = frame[id_column].astype(str)
    loaded = store.put(frame[ok], id_column, ttl_seconds)
    removed = store.delete(sorted(set(ids[~ok]) - set(ids[ok])))
    duplicated = int(ids.duplicated(keep=False).groupby(ids).any().sum())
    return LoadResult(len(frame), loaded, int((~ok).sum()), store.url, removed, duplicated)


def _known(ids: list[str], records: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The records, or UnknownApplicants naming the ids that have none."""
    unknown = [i for i, record in zip(ids, records, strict=True) if record is None]
    if unknown:
        raise UnknownApplicants(unknown)
    return records  # type: ignore[return-value]


def _record(value: bytes | str) -> dict[str, Any] | None:
    """A stored value as its features (loaded-at stamp removed), or None when it is not a JSON object."""
    try:
        record = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    record.pop(LOADED_AT, None)
    return record
