"""Promotion without a server: the request and policy validation, the gates' arithmetic, the one-line errors."""

import subprocess
import sys

import numpy as np
import pytest
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from creditflow.cli import build_parser, main
from creditflow.errors import SpecError
from creditflow.promotion import PromotionPolicy, load_policy, request_from_args
from creditflow.registry import floors_gate, signature_gate, versus_champion_gate
from tests.conftest import EXPERIMENTS, ROOT, free_port, subprocess_env

POLICY = PromotionPolicy()


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
    (tmp_path / "p.yaml").write_text("min_roc_auc: 1.5\n")
    with pytest.raises(SpecError, match="'min_roc_auc'"):
        load_policy(tmp_path / "p.yaml")
    (tmp_path / "q.yaml").write_text("min_roc_acu: 0.7\n")
    with pytest.raises(SpecError, match="'min_roc_acu'"):
        load_policy(tmp_path / "q.yaml")


@pytest.fixture(scope="module")
def scores() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, a calibrated informative score, and a barely informative one (same rows)."""
    rng = np.random.default_rng(3)
    truth = 1 / (1 + np.exp(-(rng.normal(size=4000) * 1.5 - 3)))
    y = (rng.random(4000) < truth).astype(int)
    weak = np.clip(truth + rng.normal(scale=0.3, size=4000), 0.001, 0.999)
    return y, truth, weak


def test_floors_gate_passes_a_calibrated_model_and_names_what_fails(scores) -> None:
    y, good, weak = scores
    first = floors_gate(y, good, None, POLICY)
    assert first.passed is True and "no champion" in first.detail and "ks_drop" not in first.figures
    assert first.figures["roc_auc"] > 0.75 and first.figures["calibration_error"] < 0.05
    worse = floors_gate(y, weak, good, POLICY)
    assert worse.passed is False
    assert worse.figures["ks_drop"] > POLICY.max_ks_drop and "calibration_error=" in worse.detail
    strict = floors_gate(y, good, None, POLICY.model_copy(update={"min_roc_auc": 0.99}))
    assert strict.passed is False and strict.detail.startswith("failed: roc_auc=")


def test_versus_champion_gate_uses_the_paired_interval(scores) -> None:
    y, good, weak = scores
    policy = POLICY.model_copy(update={"bootstrap_samples": 100})
    better = versus_champion_gate(y, good, weak, policy)
    assert better.passed is True and better.figures["auc_gain_ci_low"] > 0
    assert better.figures["auc_gain_ci_low"] < better.figures["auc_gain"] < better.figures["auc_gain_ci_high"]
    assert versus_champion_gate(y, weak, good, policy).passed is False
    same = versus_champion_gate(y, good, good, policy)
    assert same.figures["auc_gain"] == 0 and same.passed is True  # no gain demanded by default
    assert versus_champion_gate(y, good, good, policy.model_copy(update={"min_auc_gain": 0.001})).passed is False


def _signature(inputs: list[ColSpec], outputs: list[ColSpec] | None = None) -> ModelSignature:
    out = outputs if outputs is not None else [ColSpec("double", "probability"), ColSpec("string", "decision")]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(out))


def test_signature_gate_keeps_champion_clients_working() -> None:
    champion = _signature([ColSpec("double", "age"), ColSpec("double", "income")])
    assert signature_gate(champion, None).passed is None
    assert signature_gate(champion, champion).passed is True
    fewer = _signature([ColSpec("double", "age")])
    assert signature_gate(fewer, champion).passed is True  # extra columns from old clients are ignored
    optional = _signature([ColSpec("double", "age"), ColSpec("double", "income"),
                           ColSpec("double", "debt", required=False)])
    assert signature_gate(optional, champion).passed is True
    needs_more = _signature([ColSpec("double", "age"), ColSpec("double", "income"), ColSpec("double", "debt")])
    gate = signature_gate(needs_more, champion)
    assert gate.passed is False and "requires input 'debt'" in gate.detail
    retyped = _signature([ColSpec("double", "age"), ColSpec("string", "income")])
    assert "input 'income' changes type double -> string" in signature_gate(retyped, champion).detail
    no_decision = _signature([ColSpec("double", "age"), ColSpec("double", "income")],
                             [ColSpec("double", "probability")])
    assert "output 'decision'" in signature_gate(no_decision, champion).detail


@pytest.mark.integration
def test_script_with_the_tracking_server_down_is_one_line() -> None:
    down = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "promote_model.py"), "--version", "1"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=subprocess_env(MLFLOW_TRACKING_URI=down))
    assert proc.returncode == 2
    assert proc.stderr == f"error: tracking server {down} is unreachable (ConnectionError)\n"
    assert proc.stdout == ""
