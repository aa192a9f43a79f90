"""LiveModel's polls without a server: a pinned URI is never polled; an unreachable registry changes nothing."""

from __future__ import annotations

import mlflow
import pytest

from creditflow.serving.live import LiveModel, fetch
from creditflow.serving.metrics import Metrics
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
