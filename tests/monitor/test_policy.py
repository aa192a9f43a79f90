"""The monitoring policy: the shipped YAML loads; a bad or unknown field is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from creditflow.errors import SpecError
from creditflow.monitor.policy import MonitoringPolicy, load_monitoring_policy
from tests.conftest import EXPERIMENTS


def test_shipped_policy_loads_with_its_values() -> None:
    policy = load_monitoring_policy(EXPERIMENTS / "monitoring.yaml")
    assert (policy.auc_margin, policy.interval_level, policy.min_outcomes) == (0.02, 0.95, 500)
    assert (policy.retrain_psi, policy.cooldown_months) == (0.25, 3)


@pytest.mark.parametrize(("text", "message"), [
    ("interval_level: 1.5\n", "invalid field 'interval_level'"),
    ("min_outcome: 10\n", "invalid field 'min_outcome': Extra inputs are not permitted"),
])
def test_bad_policy_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "monitoring.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message) as caught:
        load_monitoring_policy(path)
    assert "\n" not in str(caught.value)


def test_missing_policy_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="monitoring policy not found"):
        load_monitoring_policy(tmp_path / "nope.yaml")


def test_empty_policy_takes_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    assert load_monitoring_policy(tmp_path / "empty.yaml") == MonitoringPolicy()
