"""The shadow challenger: scored on the champion's requests after the answer is sent, compared, reported.

`creditflow serve --shadow models:/credit-default@challenger` hands each answered request (its rows
and the champion's answers) to a bounded queue. A separate process per worker, at a lower CPU
priority (`nice`), takes whatever is queued, scores it with the shadow model in one call and
compares row by row: decision flips (approve <-> decline), |dP| of P(default), and whether the
first reason code differs. Being another process it never holds the worker's GIL, and being
niced it gets the CPU the champion leaves idle: when the machine is saturated the queue fills and
requests are dropped from the comparison (counted), so the champion's latency does not move.
The comparisons come back to the worker for /metrics; every `window_seconds` the shadow process
writes them to an MLflow run in `model-promotions` tagged with both versions (`registry.evidence`),
where `creditflow promote` finds them. The shadow model follows its alias like the champion.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from creditflow.errors import first_line
from creditflow.registry.evidence import ShadowTotals, log_shadow_totals, open_shadow_run
from creditflow.scoped import environ
from creditflow.serving.live import LiveModel, load_local
from creditflow.serving.metrics import MULTIPROC_ENV, Metrics

logger = logging.getLogger(__name__)

DELTA_BINS = np.linspace(0.0, 1.0, 10_001)  # |dP| histogram: p99 to 1e-4, in constant memory
MAX_BATCH_ROWS = 5_000  # rows the shadow scores in one call
NICENESS = 19  # the shadow process's CPU priority below the worker's (0 = same, 19 = lowest)


@dataclass(frozen=True)
class Comparison:
    """Champion and shadow answers to the same rows, compared row by row."""

    rows: int
    flips: int
    top_reason_diffs: int
    abs_delta: np.ndarray


def first_reason(codes: object) -> str:
    return str(codes[0]) if isinstance(codes, list | tuple | np.ndarray) and len(codes) else ""


def compare(champion: pd.DataFrame, shadow: pd.DataFrame) -> Comparison:
    """Row-by-row differences of two answers (probability, decision, reason_codes) to the same rows."""
    delta = np.abs(shadow["probability"].to_numpy(float) - champion["probability"].to_numpy(float))
    flips = int((shadow["decision"].to_numpy() != champion["decision"].to_numpy()).sum())
    reasons = sum(first_reason(a) != first_reason(b) for a, b in zip(champion["reason_codes"], shadow["reason_codes"],
                                                                      strict=True))
    return Comparison(len(champion), flips, int(reasons), delta)


NOTHING = Comparison(0, 0, 0, np.empty(0))


@dataclass
class ShadowTally:
    """Comparisons added up: counts, sum of |dP| and a histogram of it (for the p99)."""

    requests: int = 0
    rows: int = 0
    flips: int = 0
    top_reason_diffs: int = 0
    abs_delta_sum: float = 0.0
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(len(DELTA_BINS) - 1, dtype=np.int64))

    def add(self, c: Comparison, requests: int) -> None:
        self.requests += requests
        self.rows += c.rows
        self.flips += c.flips
        self.top_reason_diffs += c.top_reason_diffs
        self.abs_delta_sum += float(c.abs_delta.sum())
        self.histogram += np.histogram(np.clip(c.abs_delta, 0, 1), DELTA_BINS)[0]

    def p99(self) -> float:
        """The upper edge of the bin holding the 99th percentile of |dP| (0 with no rows)."""
        if not self.rows:
            return 0.0
        return float(DELTA_BINS[1:][np.searchsorted(np.cumsum(self.histogram), 0.99 * self.rows)])

    def totals(self, dropped: int = 0) -> ShadowTotals:
        return ShadowTotals(self.requests, self.rows, self.flips, self.top_reason_diffs, self.abs_delta_sum,
                            self.p99(), dropped)


@dataclass(frozen=True)
class Answered:
    """One answered request, queued for the shadow."""

    frame: pd.DataFrame
    answer: Mapping[str, list] | pd.DataFrame  # the champion's answer: its columns (the endpoint's), or its frame
    champion: str  # the champion's model_version that answered
    dropped: int  # requests the worker had dropped so far (the queue was full)


@dataclass(frozen=True)
class Report:
    """What the shadow process sends back after each batch: the comparison and the shadow's state."""

    requests: int
    comparison: Comparison
    health: dict[str, Any]


class ShadowScorer:
    """The shadow process's work: score what the worker queued, compare, add up, write MLflow runs."""

    def __init__(self, shadow: LiveModel, window_seconds: float = 60):
        self.shadow, self.window_seconds = shadow, window_seconds
        self.dropped = 0
        self._begin("", "")

    def serve(self, inbox: Any, outbox: Any) -> None:
        """Compare until the worker's stop sentinel (None) or the worker is gone; then the last window."""
        parent, deadline, told = os.getppid(), time.monotonic() + self.window_seconds, {}
        while os.getppid() == parent:
            if (state := self.shadow.health()) != told:  # a swap or a failed load: the worker's /health shows it
                outbox.put(Report(0, NOTHING, state))
                told = state
            batch, stopped = take(inbox, max(0.0, deadline - time.monotonic()))
            try:
                for report in self.compare(batch):
                    outbox.put(report)
            except Exception:  # one bad batch must not end the comparison
                logger.exception("shadow: %d request(s) could not be compared", len(batch))
            if stopped:
                break
            if time.monotonic() >= deadline:
                self.flush()
                deadline = time.monotonic() + self.window_seconds
        self.flush()

    def compare(self, batch: list[Answered]) -> list[Report]:
        """Score the batch with the shadow in one call per champion version, and add up the differences."""
        reports = []
        for champion in dict.fromkeys(a.champion for a in batch):
            items = [a for a in batch if a.champion == champion]
            shadow = self.shadow.current
            if (champion, shadow.label) != self.pair:
                self.flush()
                self._begin(champion, shadow.label)
            frame = pd.concat([a.frame for a in items], ignore_index=True)
            answer = pd.concat([pd.DataFrame(a.answer) for a in items], ignore_index=True)
            c = compare(answer, shadow.model.predict(frame))
            self.window.add(c, len(items))
            self.total.add(c, len(items))
            self.dropped = max(self.dropped, *(a.dropped for a in items))
            reports.append(Report(len(items), c, self.shadow.health()))
        return reports

    def _begin(self, champion: str, shadow: str) -> None:
        """New tallies (and, at the first flush, a new MLflow run) for another pair of versions."""
        self.pair = (champion, shadow)
        self.window, self.total, self.run_id, self.step = ShadowTally(), ShadowTally(), "", 0

    def flush(self) -> None:
        """Log the window and the running totals to this pair's MLflow run (opened on first use)."""
        if not self.window.rows:
            return
        window, total = self.window.totals(), self.total.totals(self.dropped)
        self.window = ShadowTally()
        try:
            client = MlflowClient()
            self.run_id = self.run_id or open_shadow_run(client, *self.pair)
            log_shadow_totals(client, self.run_id, window, total, self.step)
            self.step += 1
        except Exception as exc:  # the tracking server being down must not stop the comparison
            logger.warning("shadow: figures not recorded in MLflow this window: %s", first_line(exc))
        logger.info("shadow %s vs %s: %d rows, flips %.2f%%, mean |dP| %.4f", self.pair[1], self.pair[0],
                    total.rows, 100 * total.flip_rate, total.mean_abs_delta)


def take(inbox: Any, wait: float) -> tuple[list[Answered], bool]:
    """What is queued (waiting up to `wait` s for the first), up to MAX_BATCH_ROWS rows; and whether the
    stop sentinel came."""
    try:
        first = inbox.get(timeout=min(wait, 0.5)) if wait > 0 else inbox.get_nowait()
    except queue.Empty:
        return [], False
    if first is None:
        return [], True
    batch, rows = [first], len(first.frame)
    while rows < MAX_BATCH_ROWS:
        try:
            item = inbox.get_nowait()
        except queue.Empty:
            break
        if item is None:
            return batch, True
        batch.append(item)
        rows += len(item.frame)
    return batch, False


def shadow_main(settings: dict[str, Any], inbox: Any, outbox: Any) -> None:
    """The shadow process: load the shadow model, follow its alias, compare until told to stop."""
    os.nice(NICENESS)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("creditflow").addHandler(handler)  # this process's own: nothing else logs here
    logging.getLogger("creditflow").setLevel(logging.INFO)
    try:
        live = LiveModel(settings["uri"], load_local(Path(settings["path"]), **settings["ref"]),
                         settings["reload_seconds"], "shadow").start()
    except Exception as exc:  # the champion keeps serving; /health shows the shadow stopped
        logger.error("shadow: %s cannot be served: %s", settings["uri"], first_line(exc))
        outbox.put(None)
        return
    try:
        ShadowScorer(live, settings["window_seconds"]).serve(inbox, outbox)
    finally:
        live.stop()
        outbox.put(None)


class ShadowRunner:
    """The worker's side: the bounded queue to the shadow process, and its reports into /metrics and /health."""

    def __init__(self, settings: dict[str, Any], metrics: Metrics, queue_size: int = 1_000):
        context = multiprocessing.get_context("spawn")
        self.settings, self.metrics = settings, metrics
        self.inbox, self.outbox = context.Queue(maxsize=queue_size), context.Queue()
        self.process = context.Process(target=shadow_main, args=(settings, self.inbox, self.outbox),
                                       name="creditflow-shadow", daemon=True)
        self.reader = threading.Thread(target=self._read, name="creditflow-shadow-reports", daemon=True)
        self.dropped = 0
        self.health: dict[str, Any] = {"model_version": None, "requested": settings["uri"], "state": "loading"}

    def start(self) -> ShadowRunner:
        with environ(MULTIPROC_ENV, None):  # the process reports to this worker; it writes no metrics files
            self.process.start()
        self.reader.start()
        return self

    def offer(self, frame: pd.DataFrame, answer: Mapping[str, list] | pd.DataFrame, champion: str) -> None:
        """Queue an answered request for comparison, or drop it (counted) when the queue is full."""
        try:
            self.inbox.put_nowait(Answered(frame, answer, champion, self.dropped))
        except queue.Full:
            self.dropped += 1
            self.metrics.shadow_dropped.inc()

    def _read(self) -> None:
        """The shadow process's reports, into /metrics and /health, until it ends."""
        while (report := self.outbox.get()) is not None:
            old, new = self.health.get("model_version"), report.health["model_version"]
            if new != old:
                self.metrics.served("shadow", old, new)
            if report.health["failed_version"] and report.health["failed_version"] != self.health.get("failed_version"):
                self.metrics.loads.labels("shadow", "failed").inc()
            self.health = {**report.health, "state": "running"}
            c, m = report.comparison, self.metrics
            m.shadow_requests.inc(report.requests)
            m.shadow_rows.inc(c.rows)
            m.shadow_flips.inc(c.flips)
            m.shadow_reason_diffs.inc(c.top_reason_diffs)
            for delta in c.abs_delta:
                m.shadow_delta.observe(float(delta))
        self.health = {**self.health, "state": "stopped"}

    def stop(self) -> None:
        """Let the shadow process compare what is queued and write its last window; then wait for it."""
        try:
            self.inbox.put(None, timeout=5)
        except queue.Full:
            self.process.terminate()
        self.process.join(timeout=60)
        self.reader.join(timeout=10)
        for channel in (self.inbox, self.outbox):  # their semaphores go now, not as "leaked" at exit
            channel.close()
            channel.join_thread()
        self.inbox = self.outbox = None
