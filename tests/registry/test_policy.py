"""Promotion without a server: the request and policy validation, the gates' arithmetic, the one-line errors."""

import subprocess
import sys

import pytest

from creditflow.cli import build_parser, main
from creditflow.errors import SpecError
from creditflow.registry.policy import load_policy, request_from_args
from tests.conftest import EXPERIMENTS, ROOT, free_port, subprocess_env


def request(*argv: str):
    return request_from_args(build_parser().parse_args(["promote", *argv]))


def test_flags_take_an_optional_value_for_mlproject() -> None:
    assert request("--version", "3", "--dry-run").dry_run is True
    assert request("--version", "3", "--dry-run", "false").dry_run is False
    req = request("--run-id", "abc", "--alias", "challenger", "--data", "")
    assert (req.run_id, req.version, req.alias, req.data) == ("abc", None, "challenger", None)
    assert request("--rollback", "--version", "").rollback is True


@pytest.mark.parametrize(("argv", "message"), [
    ([], "give exactly one of --version, --run-id or --rollback"),
    (["--version", "2", "--run-id", "r"], "(got --version, --run-id)"),
    (["--version", "two"], "version"),
    (["--version", "2", "--force"], '--force needs --reason'),
    (["--version", "2", "--force", "--reason", "  "], '--force needs --reason'),
    (["--rollback", "--alias", "challenger"], "takes no --alias challenger"),
    (["--version", "2", "--data-rows", "all"], "--data-rows all scores every row of --data: give --data FILE"),
])
def test_contradictory_requests_are_named(argv: list[str], message: str) -> None:
    with pytest.raises(SpecError, match="bad promotion request") as err:
        request(*argv)
    assert message in str(err.value)


def test_cli_usage_errors_are_one_line(capsys) -> None:
    assert main(["promote", "--version", "1", "--rollback"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give exactly one of" in err
    with pytest.raises(SystemExit) as exit_:
        main(["promote", "--version", "1", "--dry-run", "maybe"])
    assert exit_.value.code == 2


def test_shipped_policy_loads_and_bad_fields_are_named(tmp_path) -> None:
    policy = load_policy(EXPERIMENTS / "promotion.yaml")
    assert 0.5 < policy.min_roc_auc < 1 and policy.max_calibration_error > 0 and policy.bootstrap_samples >= 50
    assert policy.min_auc_gain > 0  # "beats the champion" means better: an exact copy gains 0
    (tmp_path / "p.yaml").write_text("min_roc_auc: 1.5\n")
    with pytest.raises(SpecError, match="'min_roc_auc'"):
        load_policy(tmp_path / "p.yaml")
    (tmp_path / "q.yaml").write_text("min_roc_acu: 0.7\n")
    with pytest.raises(SpecError, match="'min_roc_acu'"):
        load_policy(tmp_path / "q.yaml")


@pytest.mark.integration
def test_script_with_the_tracking_server_down_is_one_line() -> None:
    down = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "promote_model.py"), "--version", "1"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=subprocess_env(MLFLOW_TRACKING_URI=down))
    assert proc.returncode == 2
    assert proc.stderr == f"error: tracking server {down} is unreachable (ConnectionError)\n"
    assert proc.stdout == ""
