"""Registry promotion against real tracking servers, with SQLite and with PostgreSQL as the backend store.

Gates with real models (a good one and a deliberately weak one), aliases and stages in step, audit runs,
forced promotion, rollback, dry run, a kill between any two registry calls, and two promotions racing.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from creditflow.cli import main as cli
from creditflow.pipelines.main import promote_best
from creditflow.registry import client as registry_client
from creditflow.registry import lease
from creditflow.registry.audit import AUDIT_EXPERIMENT
from creditflow.registry.audit import TAG as AUDIT_TAG
from creditflow.registry.policy import PromotionPolicy, PromotionRequest, load_policy
from creditflow.registry.promote import promote, reconcile
from creditflow.train.run import train_and_log
from tests.conftest import EXPERIMENTS, REGISTRY_DRIVER, ROOT, small_experiment, subprocess_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DRIVER = REGISTRY_DRIVER
TAG = AUDIT_TAG


@dataclass(frozen=True)
class Models:
    url: str
    name: str
    weak: str  # a one-split XGBoost stump: deliberately weak, yet enough for a first champion
    better: str  # XGBoost with 60 trees: far higher AUC on the same rows


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def models(request: pytest.FixtureRequest, small_spec, small_data) -> Models:
    """Two versions of a model registered by real training runs on a server with each backend store."""
    url = request.getfixturevalue("mlflow_server" if request.param == "sqlite" else "mlflow_server_on_postgres")
    name = f"registry-test-{uuid.uuid4().hex[:8]}"
    mlflow.set_tracking_uri(url)
    try:
        def train(spec: str, **changes: object) -> str:
            exp = small_experiment(spec, **{"explain.enabled": False, "cv_folds": 2, "register_as": name, **changes})
            return train_and_log(exp, small_spec, small_data).registered_version

        fixed = {"search.type": "none"}
        weak = train("xgboost_bayes.yaml", **fixed, params={"model__n_estimators": 1, "model__max_depth": 1})
        better = train("xgboost_bayes.yaml", **fixed, params={"model__n_estimators": 60, "model__max_depth": 3})
    finally:
        mlflow.set_tracking_uri(None)
    return Models(url, name, weak, better)


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> tuple[PromotionPolicy, Path]:
    """The shipped policy with floors a one-split stump meets (so it can be the first champion), smaller bootstrap."""
    shipped = load_policy(EXPERIMENTS / "promotion.yaml").model_dump()
    policy = PromotionPolicy(**{**shipped, "min_roc_auc": 0.70, "max_calibration_error": 0.06,
                                "bootstrap_samples": 200})
    path = tmp_path_factory.mktemp("policy") / "promotion.yaml"
    path.write_text(yaml.safe_dump(policy.model_dump()))
    return policy, path


@pytest.fixture
def client(models: Models, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """Point this test (library and CLI) at the module's server."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", models.url)
    mlflow.set_tracking_uri(models.url)
    return MlflowClient(models.url)


def promote_cli(models: Models, policy: tuple[PromotionPolicy, Path], *args: str) -> int:
    return cli(["promote", "--name", models.name, "--policy", str(policy[1]), *args])


def snapshot(client: MlflowClient, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """(aliases, version → stage)."""
    return registry_client.require_model(client, name), registry_client.stages(client, name)


def audits(client: MlflowClient, name: str) -> list[Run]:
    found = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if found is None:
        return []
    return client.search_runs([found.experiment_id],
                              f"tags.`{TAG}kind` = 'audit' and tags.`{TAG}registered_model` = '{name}'",
                              order_by=["attributes.start_time ASC"])


def reset(client: MlflowClient, models: Models, champion: str, challenger: str | None = None) -> None:
    """Test set-up: a champion that passed its gates, an optional challenger, stages in step, no other marks."""
    aliases = registry_client.require_model(client, models.name)
    if "challenger" in aliases:
        client.delete_registered_model_alias(models.name, "challenger")
    for version in (models.weak, models.better):
        for key in ("previous_champion", "champion_gates"):
            client.delete_model_version_tag(models.name, version, f"{TAG}{key}")
    client.set_model_version_tag(models.name, champion, f"{TAG}champion_gates", "passed")
    client.set_registered_model_alias(models.name, "champion", champion)
    if challenger:
        client.set_registered_model_alias(models.name, "challenger", challenger)
    reconcile(client, models.name)


def assert_safe(client: MlflowClient, name: str, allowed: set[str]) -> None:
    """@champion points at a version, one of `allowed`, that passed its champion gates."""
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) in allowed
    assert champion.tags.get(f"{TAG}champion_gates") == "passed"


def assert_in_step(client: MlflowClient, name: str, champion: str) -> None:
    """The end state of any promotion: aliases, stages, URIs, lease and audit runs all agree."""
    aliases, stages = snapshot(client, name)
    assert aliases == {"champion": champion}
    assert [v for v, s in stages.items() if s == "Production"] == [champion]
    assert [v for v, s in stages.items() if s == "Staging"] == []
    run_id = client.get_model_version(name, champion).run_id
    assert mlflow.models.get_model_info(f"models:/{name}@champion").run_id == run_id
    assert mlflow.models.get_model_info(f"models:/{name}/Production").run_id == run_id
    assert lease.lease_is_free(client, name)
    assert [r.info.status for r in audits(client, name) if r.info.status == "RUNNING"] == []


def test_promotion_story(client, models, policy, capsys) -> None:
    """Dry run, first champion, challenger, better champion, weaker refused, forced, rolled back, history."""
    name = models.name
    assert promote_cli(models, policy, "--version", models.weak, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "decision: would promote" in out and "no champion to beat" in out
    assert snapshot(client, name)[0] == {} and audits(client, name) == []

    assert promote_cli(models, policy, "--version", models.weak) == 0
    assert "decision: promoted" in capsys.readouterr().out
    assert_in_step(client, name, models.weak)

    run_id = client.get_model_version(name, models.better).run_id
    assert promote_cli(models, policy, "--run-id", run_id, "--alias", "challenger") == 0
    aliases, stages = snapshot(client, name)
    assert aliases == {"champion": models.weak, "challenger": models.better}
    assert (stages[models.weak], stages[models.better]) == ("Production", "Staging")

    capsys.readouterr()
    assert promote_cli(models, policy, "--version", models.better) == 0
    out = capsys.readouterr().out
    assert "gate (b) beats champion         PASS" in out and "decision: promoted" in out
    audit = audits(client, name)[-1]
    assert audit.data.tags[f"{TAG}decision"] == "promoted" and audit.data.tags[f"{TAG}gate.b"] == "pass"
    figures = audit.data.metrics
    assert 0 < figures["b.auc_gain_ci_low"] < figures["b.auc_gain"] < figures["b.auc_gain_ci_high"]
    assert figures["a.roc_auc"] == pytest.approx(figures["b.champion_roc_auc"] + figures["b.auc_gain"])
    assert_in_step(client, name, models.better)
    tags = client.get_model_version(name, models.better).tags
    assert tags[f"{TAG}previous_champion"] == models.weak and tags[f"{TAG}champion_gates"] == "passed"
    assert snapshot(client, name)[1][models.weak] == "Archived"

    before = snapshot(client, name)
    assert promote_cli(models, policy, "--version", models.weak) == 3
    out = capsys.readouterr().out
    assert "gate (a) floors                 FAIL" in out and "gate (b) beats champion         FAIL" in out
    assert "decision: refused" in out
    audit = audits(client, name)[-1]
    assert audit.data.tags[f"{TAG}decision"] == "refused"
    assert audit.data.metrics["a.ks_drop"] > policy[0].max_ks_drop
    assert audit.data.metrics["b.auc_gain_ci_high"] < 0
    assert snapshot(client, name) == before
    assert client.get_model_version(name, models.weak).tags[f"{TAG}last_decision"] == "refused"

    assert promote_cli(models, policy, "--version", models.weak, "--force", "--reason", "risk committee, ticket 7") == 0
    assert "decision: forced" in capsys.readouterr().out
    assert_in_step(client, name, models.weak)
    assert client.get_model_version(name, models.weak).tags[f"{TAG}champion_gates"] == "forced"
    assert "ticket 7" in audits(client, name)[-1].data.tags[f"{TAG}reason"]

    assert promote_cli(models, policy, "--rollback") == 0
    assert "decision: rolled back" in capsys.readouterr().out
    assert_in_step(client, name, models.better)
    assert snapshot(client, name)[1][models.weak] == "Archived"

    assert cli(["registry", "history", "--name", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    moves = [(line.split()[3], line.split()[4]) for line in lines if " UTC " in line]
    assert moves == [("promoted", models.weak), ("promoted", models.better), ("forced", models.weak),
                     ("rolled_back", models.better)]
    assert lines[-1] == f"now: @champion = v{models.better} (Production); stages in step with aliases"


@pytest.mark.parametrize("models", ["sqlite"], indirect=True)  # the script is the CLI; the backend is not the point
def test_refusal_through_the_script(client, models, policy) -> None:
    """scripts/promote_model.py: exit 3 and the failed gates with their figures; a dry run changes nothing."""
    reset(client, models, champion=models.better)
    before, n_audits = snapshot(client, models.name), len(audits(client, models.name))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "promote_model.py"), "--name", models.name, "--version", models.weak,
         "--policy", str(policy[1]), "--dry-run"],
        capture_output=True, text=True, timeout=120, env=subprocess_env(MLFLOW_TRACKING_URI=models.url))
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "gate (b) beats champion         FAIL  auc_gain=-0." in proc.stdout
    assert "decision: would refuse" in proc.stdout
    assert snapshot(client, models.name) == before and len(audits(client, models.name)) == n_audits


class Killed(BaseException):
    """Raised by the step hook: the process 'dies' between two registry calls."""


def kill_at(step: str):
    def on_step(name: str) -> None:
        if name == step:
            raise Killed(step)

    return on_step


@pytest.mark.parametrize("models", ["postgresql"], indirect=True)  # both backends get the real kills below
def test_a_kill_between_any_two_registry_calls_is_safe_and_repaired(client, models, policy) -> None:
    """At every step: @champion stays on a gate-passing version; the next promotion completes the work."""
    req = PromotionRequest(name=models.name, version=models.better)
    reset(client, models, champion=models.weak, challenger=models.better)
    steps: list[str] = []
    assert promote(req, policy[0], steps.append).outcome == "promoted"
    assert steps[:4] == ["acquiring", "lease", "evaluated", "tagged"] and steps[-2:] == ["audited", "released"]
    assert {"alias", "challenger", "production", "archived"} <= set(steps)
    committed = steps.index("alias")
    for i, step in enumerate(steps):
        reset(client, models, champion=models.weak, challenger=models.better)
        with pytest.raises(Killed):
            promote(req, policy[0], kill_at(step))
        assert_safe(client, models.name, {models.weak, models.better})
        if i < committed:
            assert client.get_model_version_by_alias(models.name, "champion").version == models.weak
        rerun = promote(req, policy[0])
        expected = "promoted" if i < committed else "repaired" if step not in ("audited", "released") else "unchanged"
        assert rerun.outcome == expected, step
        assert_in_step(client, models.name, models.better)


def kill_process_at(models: Models, policy: tuple[PromotionPolicy, Path], step: str) -> None:
    """Promote `better` in a subprocess that a real os._exit ends at `step`."""
    proc = subprocess.run(
        [sys.executable, str(DRIVER), "--die-at", step, "--", "--name", models.name, "--version", models.better,
         "--policy", str(policy[1])],
        capture_output=True, text=True, timeout=120, env=subprocess_env(MLFLOW_TRACKING_URI=models.url))
    assert proc.returncode == 137, proc.stderr[-2000:]


@pytest.mark.parametrize("models", ["sqlite"], indirect=True)
def test_a_process_killed_holding_the_lease_is_taken_over(client, models, policy) -> None:
    """The lease of a process that is gone is broken at once; the promotion then goes through."""
    reset(client, models, champion=models.weak, challenger=models.better)
    kill_process_at(models, policy, "lease")
    assert_safe(client, models.name, {models.weak})
    assert promote_cli(models, policy, "--version", models.better) == 0
    assert_in_step(client, models.name, models.better)


@pytest.mark.parametrize("models", ["postgresql"], indirect=True)
def test_a_process_killed_after_the_alias_moved_is_repaired(client, models, policy, capsys) -> None:
    """Committed but left out of step (stages, @challenger, audit run): the next promotion completes it."""
    reset(client, models, champion=models.weak, challenger=models.better)
    kill_process_at(models, policy, "alias")
    assert_safe(client, models.name, {models.better})
    assert not registry_client.in_step(client, models.name)
    assert promote_cli(models, policy, "--version", models.better) == 0
    assert "decision: repaired" in capsys.readouterr().out
    assert_in_step(client, models.name, models.better)


def test_two_promotions_race_and_exactly_one_wins(client, models, policy, tmp_path) -> None:
    """Two processes released together at the lease: one promotes, the other is refused; one Production."""
    reset(client, models, champion=models.weak)
    n_audits = len(audits(client, models.name))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    command = [sys.executable, str(DRIVER), "--barrier", str(barrier), "--", "--name", models.name,
               "--version", models.better, "--policy", str(policy[1])]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=subprocess_env(MLFLOW_TRACKING_URI=models.url)) for _ in range(2)]
    results = [(*p.communicate(timeout=180), p.returncode) for p in procs]
    assert sorted(code for _, _, code in results) == [0, 3], [(out[-1500:], err[-1500:]) for out, err, _ in results]
    winner_out = next(out for out, _, code in results if code == 0)
    loser_out = next(out for out, _, code in results if code == 3)
    assert "decision: promoted" in winner_out
    assert f"decision: refused: another promotion of '{models.name}'" in loser_out and "nothing changed" in loser_out
    assert_in_step(client, models.name, models.better)
    new = [r.data.tags for r in audits(client, models.name)[n_audits:]]  # the refused racer changed nothing
    assert [(t[f"{TAG}decision"], t[f"{TAG}version"]) for t in new] == [("promoted", models.better)]


@pytest.mark.parametrize("models", ["sqlite"], indirect=True)
def test_main_pipeline_promotes_the_best_version_that_passes(client, models, policy, caplog) -> None:
    """`creditflow main` ends with promote_best: a refused best is shown, then the next best is tried."""
    reset(client, models, champion=models.better)
    with caplog.at_level(logging.INFO, logger="creditflow"):
        decision = promote_best(models.name, [models.weak, models.better], policy[0], None)
    out = caplog.text
    assert f"promotion of {models.name} v{models.weak} to @champion:" in out and "decision: refused" in out
    assert (decision.outcome, decision.version) == ("unchanged", models.better)
    assert_in_step(client, models.name, models.better)


class _NoSignature(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def test_bad_input_is_one_line_and_changes_nothing(client, models, policy, capsys) -> None:
    reset(client, models, champion=models.better)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=_NoSignature(), pip_requirements=[])
    unsigned = mlflow.register_model(info.model_uri, models.name).version
    before, n_audits = snapshot(client, models.name), len(audits(client, models.name))
    capsys.readouterr()
    cases = [
        (["--version", "999"], f"model '{models.name}' has no version 999"),
        (["--run-id", "0" * 32], f"no version of '{models.name}' was registered from run"),
        (["--version", str(unsigned)], "has no signature"),
        (["--version", models.weak, "--force"], "--force needs --reason"),
        (["--version", models.weak, "--rollback"], "give exactly one of --version, --run-id or --rollback"),
    ]
    for args, message in cases:
        assert promote_cli(models, policy, *args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, repr(err)
    assert cli(["promote", "--name", "no-such-model", "--version", "1", "--policy", str(policy[1])]) == 2
    assert "no registered model named 'no-such-model'" in capsys.readouterr().err
    assert snapshot(client, models.name) == before and len(audits(client, models.name)) == n_audits
