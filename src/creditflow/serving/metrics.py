"""The endpoint's Prometheus metrics (`GET /metrics`): requests, latency, rows, decisions, model loads, shadow.

One `Metrics` per worker, its collectors in a registry of its own (nothing registered at import).
With several uvicorn workers, `creditflow serve` runs prometheus_client's multiprocess mode: the
parent sets PROMETHEUS_MULTIPROC_DIR (a fresh directory per start) before the workers import
prometheus_client, every worker writes its values there, and any worker's /metrics adds them all up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 100)
DELTA_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class Metrics:
    """The collectors one worker updates; `exposition()` is what /metrics answers."""

    def __init__(self, multiprocess_dir: str = ""):
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("creditflow_requests", "Scoring requests by path and HTTP status",
                                ["path", "status"], registry=r)
        self.latency = Histogram("creditflow_request_seconds", "Scoring request latency (body read to answer)",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.coalesced = Histogram("creditflow_requests_per_call", "Small requests scored together in one model call",
                                   buckets=BATCH_BUCKETS, registry=r)
        self.rows = Counter("creditflow_rows_scored", "Applicants scored", ["model_version"], registry=r)
        self.decisions = Counter("creditflow_decisions", "Decisions by kind", ["model_version", "decision"],
                                 registry=r)
        self.loads = Counter("creditflow_model_loads", "Model versions loaded and warmed, by outcome",
                             ["role", "outcome"], registry=r)
        self.swaps = Counter("creditflow_model_swaps", "Served model changed to another version", ["role"], registry=r)
        self.poll_errors = Counter("creditflow_registry_poll_errors", "Registry polls that failed (nothing changed)",
                                   ["role"], registry=r)
        self.info = Gauge("creditflow_model_info", "1 for the model version a worker serves", ["role", "model_version"],
                          multiprocess_mode="liveall", registry=r)
        self.shadow_requests = Counter("creditflow_shadow_requests", "Requests scored by the shadow model",
                                       registry=r)
        self.shadow_rows = Counter("creditflow_shadow_rows", "Rows compared champion vs shadow", registry=r)
        self.shadow_flips = Counter("creditflow_shadow_flips", "Rows whose decision differs (approve/decline)",
                                    registry=r)
        self.shadow_reason_diffs = Counter("creditflow_shadow_top_reason_diffs",
                                           "Rows whose first reason code differs", registry=r)
        self.shadow_delta = Histogram("creditflow_shadow_abs_delta", "|P(default) shadow - champion| per row",
                                      buckets=DELTA_BUCKETS, registry=r)
        self.shadow_dropped = Counter("creditflow_shadow_dropped", "Requests not compared: the shadow queue was full",
                                      registry=r)
        self._children: dict[tuple, Any] = {}  # labelled children by their labels: `labels()` costs a lock and checks

    def child(self, collector: Counter | Histogram, *labels: str) -> Any:
        """`collector.labels(*labels)`, looked up once per label set."""
        key = (id(collector), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = collector.labels(*labels)
        return found

    def request(self, path: str, status: int, seconds: float) -> None:
        """A scoring request answered: counted by path and status, its latency observed."""
        self.child(self.requests, path, str(status)).inc()
        self.child(self.latency, path).observe(seconds)

    def served(self, role: str, old: str | None, new: str) -> None:
        """`role` ("champion" or "shadow") now answers with version `new` (`old` before, if any)."""
        if old is not None:
            self.info.labels(role, old).set(0)
            self.swaps.labels(role).inc()
        self.info.labels(role, new).set(1)

    def scored(self, model_version: str, decisions: Sequence[str]) -> None:
        if len(decisions) == 1:  # one applicant (a request alone)
            self.child(self.decisions, model_version, decisions[0]).inc()
            self.child(self.rows, model_version).inc()
            return
        counts: dict[str, int] = {}
        for decision in decisions:
            counts[decision] = counts.get(decision, 0) + 1
        for decision, n in counts.items():
            self.child(self.decisions, model_version, decision).inc(n)
        self.child(self.rows, model_version).inc(sum(counts.values()))

    def answered(self, answer: Mapping[str, Sequence[Any]]) -> None:
        """An answer's rows and decisions (its columns, or its frame), by each row's model_version (one model, or a
        segments' several)."""
        versions, decisions = answer["model_version"], answer["decision"]
        if not len(versions):
            return
        if len(versions) == 1 or list(versions).count(versions[0]) == len(versions):  # one model answered every row
            self.scored(str(versions[0]), decisions)
            return
        by_version: dict[str, list[str]] = {}
        for version, decision in zip(versions, decisions, strict=True):
            by_version.setdefault(str(version), []).append(decision)
        for version, listed in by_version.items():
            self.scored(version, listed)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of /metrics: this worker's collectors, or every worker's in multiprocess mode."""
        if not self.multiprocess_dir:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry), CONTENT_TYPE_LATEST

