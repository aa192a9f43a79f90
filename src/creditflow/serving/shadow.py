"""The shadow challenger: scored on the champion's requests after the answer is sent, compared, reported.

`creditflow serve --shadow models:/credit-default@challenger` hands each answered request (its rows
and the champion's answers) to a bounded queue. One thread per worker takes whatever is queued,
scores it with the shadow model in one call and compares row by row: decision flips
(approve <-> decline), |dP| of P(default), and whether the first reason code differs. When the queue
is full the request is dropped from the comparison (counted): the champion never waits for it.
Figures go to /metrics as they come, and every `window_seconds` to an MLflow run in
`model-promotions` tagged with both versions (`registry.evidence`), where `creditflow promote`
finds them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from creditflow.errors import first_line
from creditflow.registry.evidence import ShadowTotals, log_shadow_totals, open_shadow_run
from creditflow.serving.live import LiveModel
from creditflow.serving.metrics import Metrics

logger = logging.getLogger(__name__)

DELTA_BINS = np.linspace(0.0, 1.0, 10_001)  # |dP| histogram: p99 to 1e-4, in constant memory
MAX_BATCH_ROWS = 5_000  # rows the shadow scores in one call


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
    answer: pd.DataFrame
    champion: str  # the champion's model_version that answered


class ShadowRunner:
    """The worker's shadow: a bounded queue, one scoring thread, per-window reports."""

    def __init__(self, shadow: LiveModel, metrics: Metrics, queue_size: int = 1_000, window_seconds: float = 60):
        self.shadow, self.metrics = shadow, metrics
        self.window_seconds = window_seconds
        self.queue: queue.Queue[Answered] = queue.Queue(maxsize=queue_size)
        self.dropped = 0
        self._begin("", "")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="creditflow-shadow", daemon=True)

    def start(self) -> ShadowRunner:
        self._thread.start()
        return self

    def offer(self, frame: pd.DataFrame, answer: pd.DataFrame, champion: str) -> None:
        """Queue an answered request for comparison, or drop it (counted) when the queue is full."""
        try:
            self.queue.put_nowait(Answered(frame, answer, champion))
        except queue.Full:
            self.dropped += 1
            self.metrics.shadow_dropped.inc()

    def _work(self) -> None:
        deadline = time.monotonic() + self.window_seconds
        while not self._stop.is_set():
            batch = self._take(max(0.0, deadline - time.monotonic()))
            try:
                self.compare(batch)
            except Exception:  # the shadow must never take the worker down
                logger.exception("shadow: %d request(s) could not be compared", len(batch))
            if time.monotonic() >= deadline:
                self.flush()
                deadline = time.monotonic() + self.window_seconds
        self.compare(self._take(0))
        self.flush()

    def _take(self, wait: float) -> list[Answered]:
        """What is queued (waiting up to `wait` s for the first), up to MAX_BATCH_ROWS rows."""
        try:
            batch = [self.queue.get(timeout=min(wait, 0.5)) if wait > 0 else self.queue.get_nowait()]
        except queue.Empty:
            return []
        rows = len(batch[0].frame)
        while rows < MAX_BATCH_ROWS:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
            rows += len(batch[-1].frame)
        return batch

    def compare(self, batch: list[Answered]) -> None:
        """Score the batch with the shadow in one call per champion version, and add up the differences."""
        for champion in dict.fromkeys(a.champion for a in batch):
            items = [a for a in batch if a.champion == champion]
            shadow = self.shadow.current
            if (champion, shadow.label) != self.pair:
                self.flush()
                self._begin(champion, shadow.label)
            frame = pd.concat([a.frame for a in items], ignore_index=True)
            answer = pd.concat([a.answer for a in items], ignore_index=True)
            c = compare(answer, shadow.model.predict(frame))
            self.window.add(c, len(items))
            self.total.add(c, len(items))
            self._count(c, len(items))

    def _begin(self, champion: str, shadow: str) -> None:
        """New tallies (and, at the first flush, a new MLflow run) for another pair of versions."""
        self.pair = (champion, shadow)
        self.window, self.total, self.run_id, self.step = ShadowTally(), ShadowTally(), "", 0

    def _count(self, c: Comparison, requests: int) -> None:
        m = self.metrics
        m.shadow_requests.inc(requests)
        m.shadow_rows.inc(c.rows)
        m.shadow_flips.inc(c.flips)
        m.shadow_reason_diffs.inc(c.top_reason_diffs)
        for delta in c.abs_delta:
            m.shadow_delta.observe(float(delta))

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

    def stop(self) -> None:
        """Compare what is still queued, report the last window, stop the thread."""
        self._stop.set()
        self._thread.join(timeout=60)
