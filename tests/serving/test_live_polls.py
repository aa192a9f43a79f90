"""LiveModel's polls without a server: a pinned URI is never polled; an unreachable registry changes nothing; a
deployment's models poll in turn."""

from __future__ import annotations

import threading
import time

import mlflow
import pytest

from creditflow.serving.live import LiveModel, fetch
from creditflow.serving.metrics import Metrics
from creditflow.serving.segments import SegmentRouter
from creditflow.train.run import TrainingOutcome


def test_a_pinned_uri_is_never_followed(model: TrainingOutcome) -> None:
    uri = f"models:/credit-default/{model.registered_version}"
    live = LiveModel(uri, fetch(uri), reload_seconds=1).start()
    assert live.follows is False and live._thread is None and live.health()["reload_seconds"] == 0
    assert LiveModel("models:/credit-default@champion", live.current, reload_seconds=0).follows is False
    assert LiveModel("models:/credit-default/Production", live.current, reload_seconds=5).follows is True


def test_an_unreachable_registry_changes_nothing_and_is_counted(model: TrainingOutcome,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = Metrics()
    live = LiveModel("models:/credit-default@champion", fetch("models:/credit-default@champion"), 1, metrics=metrics)
    before = live.current
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    mlflow.set_tracking_uri("http://127.0.0.1:1")
    assert live.poll() is False and live.poll() is False
    assert live.current is before and live.status.poll_errors == 2
    assert "unreachable" in live.health()["last_poll_error"]
    assert metrics.registry.get_sample_value("creditflow_registry_poll_errors_total", {"role": "champion"}) == 2


class Clocked(LiveModel):
    """A follower whose polls only record when they happened (no registry)."""

    def __init__(self, role: str, reload_seconds: float, polls: list[tuple[str, float]], wanted: int,
                 done: threading.Event):
        super().__init__(f"models:/m-{role}@champion", None, reload_seconds, role)
        self.polls, self.wanted, self.done = polls, wanted, done

    def poll(self) -> bool:
        self.polls.append((self.role, time.monotonic()))
        if len(self.polls) >= self.wanted:
            self.done.set()
        return False


def test_a_deployments_models_poll_in_turn_not_all_at_once() -> None:
    polls: list[tuple[str, float]] = []
    done = threading.Event()
    fallback, *segments = [Clocked(role, 2.0, polls, 4, done) for role in ("fallback", "R01", "R02", "R03")]
    router = SegmentRouter("Region", fallback, {live.role: live for live in segments})
    started = time.monotonic()
    router.start()
    try:
        assert done.wait(20)
    finally:
        router.stop()
    first = {role: at - started for role, at in reversed(polls)}  # each follower's first poll
    assert sorted(first, key=first.get) == ["fallback", "R01", "R02", "R03"]
    at = [first[role] for role in ("fallback", "R01", "R02", "R03")]
    assert at[0] >= 2.0  # the first poll a period after the start, as before
    assert all(later - earlier >= 0.25 for earlier, later in zip(at, at[1:], strict=False))  # 0.5 s apart
