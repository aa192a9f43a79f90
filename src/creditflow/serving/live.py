"""The served model, following the registry: a new version behind the alias is loaded, warmed and swapped in.

`creditflow serve` and `creditflow stream score` hold their model in a `LiveModel`. When the served
URI names an alias or a stage (`models:/credit-default@champion`), a background thread asks the
registry every `reload_seconds` which version it names now. A new version is downloaded, loaded
and warmed (the compiled scoring path is built when the model loads; one prediction with reason
codes on the model's own input example) off the serving path, then swapped in with one reference
assignment: a request reads `live.current` once and finishes on that version. A version that
fails to load or warm is never served (the old one stays; the failure is logged in one line, shown
in /health and counted in /metrics) and is tried again at the next poll. An unreachable registry
changes nothing. Pinned URIs (`models:/NAME/7`, `runs:/...`) are never polled. A segment's model may start
with no version at all (`first=None`: its alias does not exist yet); it serves nothing until the alias appears.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from creditflow.errors import CreditflowError, first_line
from creditflow.registry.client import (
    alias_target,
    check_server_for,
    download_model,
    follows_registry,
    mlflow_errors,
    model_label,
    registry_version,
    resolve_model,
    version_uri,
)
from creditflow.scoped import sys_path
from creditflow.serving.metrics import Metrics
from creditflow.serving.typed import Applicants, frame_of
from creditflow.specs import DatasetSpec

logger = logging.getLogger(__name__)

ANSWER_COLUMNS = ("probability", "decision", "reason_codes")


@dataclass(frozen=True)
class Loaded:
    """One loaded, warmed model version."""

    model: Any  # mlflow.pyfunc.PyFuncModel of a CreditModel
    uri: str  # pinned
    label: str  # "name/version", what every answer carries as model_version
    version: str  # "" outside the registry

    @property
    def spec(self) -> DatasetSpec:
        return self.model.unwrap_python_model().dataset

    @property
    def members(self) -> tuple[Loaded, ...]:
        """The loaded models that may answer (a segments' `Routing` has several)."""
        return (self,)

    def answer(self, frame: Any, typed: bool = False) -> Any:
        """The model's answer frame, each prediction with the model_version that made it.

        `typed`: the frame (or `Applicants`) already holds the signature's columns and types (`parse_body` built it),
        so MLflow's signature check, a second pass over it, is skipped; the model's own input checks still run.
        """
        model, frame = self.model.unwrap_python_model() if typed else None, frame_of(frame)
        answer = self.model.predict(frame) if model is None else model.predict(None, frame)  # labelled in place
        answer["model_version"] = self.label
        return answer

    def columns(self, frame: Any) -> dict[str, list]:
        """The answer to rows `parse_body` typed (a frame, or `Applicants`: their raw matrix straight to the model),
        as lists of plain values (what the JSON body and /metrics read), each row with its model_version: no
        signature check (`answer(typed=True)`), no answer frame."""
        model = self.model.unwrap_python_model()
        is_matrix = isinstance(frame, Applicants)
        columns = model.answer_matrix(frame.matrix) if is_matrix else model.answer_columns(frame)
        out = {name: values.tolist() if isinstance(values, np.ndarray) else values for name, values in columns.items()}
        out["model_version"] = [self.label] * len(out["probability"])
        return out


class WarmUpFailed(CreditflowError):
    pass


def load_local(path: Path, uri: str, name: str = "", version: str = "") -> Loaded:
    """Load the model in `path` and warm it: one prediction on its input example, checked."""
    from mlflow.models import Model
    from mlflow.pyfunc import load_model

    with sys_path():  # MLflow prepends the model's code folder; the package is already imported
        model = load_model(str(path))
    example = Model.load(str(path)).load_input_example(str(path))
    if example is None:
        raise WarmUpFailed(f"model {uri} has no input example to warm up with")
    answer = model.predict(example)
    missing = [c for c in ANSWER_COLUMNS if c not in answer.columns]
    if missing or not answer["probability"].between(0, 1).all():
        raise WarmUpFailed(f"model {uri} answered its own input example wrongly (missing {missing} or P outside 0-1)")
    return Loaded(model, uri, model_label(name, version, uri), version)


def fetch(uri: str) -> Loaded:
    """Resolve, download, load and warm one version; the downloaded files go once it is in memory."""
    ref = resolve_model(uri)
    with tempfile.TemporaryDirectory(prefix="creditflow-live-") as tmp:
        return load_local(download_model(ref, Path(tmp)), ref.uri, ref.name, ref.version)


@dataclass
class FollowStatus:
    """What /health reports about following the registry."""

    polls: int = 0
    poll_errors: int = 0
    last_poll_error: str = ""
    failed_version: str = ""  # the newest version that could not be served, and why
    failed_reason: str = ""
    swapped_at: float = field(default_factory=time.time)


class LiveModel:
    """The model a worker answers with now, and (for an alias) the thread that keeps it current."""

    def __init__(self, requested: str, first: Loaded | None, reload_seconds: float = 0, role: str = "champion",
                 metrics: Metrics | None = None):
        self.requested, self.current, self.role = requested, first, role
        self.reload_seconds = reload_seconds
        self.follows = reload_seconds > 0 and follows_registry(requested)
        self.metrics = metrics or Metrics()
        self.status = FollowStatus()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if first is not None:
            self.metrics.served(role, None, first.label)

    def poll(self) -> bool:
        """Ask the registry once; load, warm and swap in a new version. True when the version changed."""
        self.status.polls += 1
        try:
            check_server_for(self.requested)
            with mlflow_errors(f"cannot resolve {self.requested}"):  # no version yet: waiting for the alias
                name, version = registry_version(self.requested) if self.current else alias_target(self.requested)
        except CreditflowError as exc:
            self.status.poll_errors += 1
            self.status.last_poll_error = str(exc)
            self.metrics.poll_errors.labels(self.role).inc()
            logger.warning("%s: registry poll failed, still serving %s: %s", self.role, self.label, exc)
            return False
        if not version or (self.current is not None and version == self.current.version):
            return False
        return self.swap_to(name, version)

    def swap_to(self, name: str, version: str) -> bool:
        """Load and warm `name` v`version` off the serving path; serve it only if that worked."""
        label = model_label(name, version, "")
        try:
            # in a thread that ends: OpenMP keeps a thread team per calling thread, and one left behind by a
            # long-lived thread slowed every later request (docs/performance.md, "Following the registry")
            with ThreadPoolExecutor(1, thread_name_prefix="creditflow-load") as pool:
                loaded = pool.submit(fetch, version_uri(name, version)).result()
        except Exception as exc:  # whatever a broken artifact raises, the old version keeps serving
            self.status.failed_version, self.status.failed_reason = label, first_line(exc)
            self.metrics.loads.labels(self.role, "failed").inc()
            logger.error("%s: %s cannot be served, still serving %s: %s", self.role, label, self.label,
                         first_line(exc))
            return False
        old, self.current = self.current, loaded  # the swap: one reference assignment
        self.status.failed_version = self.status.failed_reason = ""
        self.status.swapped_at = time.time()
        self.metrics.loads.labels(self.role, "loaded").inc()
        self.metrics.served(self.role, old and old.label, loaded.label)
        logger.info("%s: now serving %s (was %s)", self.role, loaded.label, old.label if old else "none")
        return True

    def start(self, offset: float = 0) -> LiveModel:
        """Poll in a background thread when the URI can move, every reload_seconds from `offset` seconds on (the
        models of a deployment poll in turn, not all at once); a pinned URI is never polled."""
        if self.follows and self._thread is None:
            self._thread = threading.Thread(target=self._follow, args=(offset,), name=f"creditflow-follow-{self.role}",
                                            daemon=True)
            self._thread.start()
        return self

    def _follow(self, offset: float) -> None:
        if self._stop.wait(offset):
            return
        while not self._stop.wait(self.reload_seconds):
            self.poll()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    @property
    def label(self) -> str:
        return self.current.label if self.current else "none"

    def models(self) -> list[dict[str, Any]]:
        """GET /models: the one model served, as the fallback entry of a segmented deployment."""
        return [{"segment": None, "model_version": self.label}]

    def health(self) -> dict[str, Any]:
        s = self.status
        return {"model_version": self.current and self.current.label, "model_uri": self.current and self.current.uri,
                "requested": self.requested,
                "follows_registry": self.follows, "reload_seconds": self.reload_seconds if self.follows else 0,
                "polls": s.polls, "poll_errors": s.poll_errors, "last_poll_error": s.last_poll_error or None,
                "failed_version": s.failed_version or None, "failed_reason": s.failed_reason or None}
