"""Registry promotion against real tracking servers, with SQLite and with PostgreSQL as the backend store.

Gates with real models (a good one and a deliberately weak one), aliases and stages in step, audit runs,
forced promotion, rollback, dry run; real processes killed (os._exit) at every step of a promotion and of a
rollback, a lease that expires under a stalled holder, two promotions racing and a rollback racing one.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
LEASE_SECONDS = 12  # the short lease of the expiry test: long enough to be refused by it first
# each backend's tests on one pytest-xdist worker: the module's `models` (a server and two trainings) set up once
SQLITE = pytest.param("sqlite", marks=pytest.mark.xdist_group("promote-sqlite"))
POSTGRESQL = pytest.param("postgresql", marks=pytest.mark.xdist_group("promote-postgresql"))

SQLITE_ONLY = pytest.mark.parametrize("models", [SQLITE], indirect=True)


@dataclass(frozen=True)
class Models:
    url: str
    name: str
    weak: str  # a one-split XGBoost stump: deliberately weak, yet enough for a first champion
    better: str  # XGBoost with 60 trees: far higher AUC on the same rows


@pytest.fixture(scope="module", params=[SQLITE, POSTGRESQL])
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
    """The shipped policy with floors a one-split stump meets (so it can be the first champion), smaller bootstrap
    and monotone sample (every promotion of the kill loops runs the gates: tests/registry/test_monotone.py owns (f))."""
    shipped = load_policy(EXPERIMENTS / "promotion.yaml").model_dump()
    policy = PromotionPolicy(**{**shipped, "min_roc_auc": 0.70, "max_calibration_error": 0.06,
                                "bootstrap_samples": 200, "monotone_rows": 40})
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


def reset(client: MlflowClient, models: Models, champion: str, challenger: str | None = None,
          previous: str | None = None) -> None:
    """Test set-up: a champion that passed its gates, an optional challenger, an optional previous champion
    (which passed its gates too), stages in step, no other marks."""
    aliases = registry_client.require_model(client, models.name)
    if "challenger" in aliases:
        client.delete_registered_model_alias(models.name, "challenger")
    for version in (models.weak, models.better):
        for key in ("previous_champion", "champion_gates"):
            client.delete_model_version_tag(models.name, version, f"{TAG}{key}")
    for version in filter(None, (champion, previous)):
        client.set_model_version_tag(models.name, version, f"{TAG}champion_gates", "passed")
    if previous:
        client.set_model_version_tag(models.name, champion, f"{TAG}previous_champion", previous)
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
    assert figures["b.auc_gain"] >= policy[0].min_auc_gain > 0  # better by the shipped margin, which is above zero
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


@SQLITE_ONLY  # the script is the CLI; the backend is not the point
def test_refusal_through_the_script(client, models, policy) -> None:
    """scripts/promote_model.py: exit 3 and the failed gates with their figures; a dry run changes nothing."""
    reset(client, models, champion=models.better)
    before, n_audits = snapshot(client, models.name), len(audits(client, models.name))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "promote_model.py"), "--name", models.name, "--version", models.weak,
         "--policy", str(policy[1]), "--dry-run"],
        capture_output=True, text=True, timeout=120, env=subprocess_env(MLFLOW_TRACKING_URI=models.url))
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "gate (b) beats champion         FAIL  not better than the champion by the margin +0.0050: auc_gain=-0." \
        in proc.stdout
    assert "decision: would refuse" in proc.stdout
    assert snapshot(client, models.name) == before and len(audits(client, models.name)) == n_audits


@SQLITE_ONLY  # gate (b)'s margin; the backend is not the point
def test_an_exact_copy_of_the_champion_is_refused(client, models, policy, capsys) -> None:
    """The champion's own model registered again gains nothing: refused (exit 3), audited, @champion unchanged."""
    reset(client, models, champion=models.better)
    source = client.get_model_version(models.name, models.better).source
    copy = str(mlflow.register_model(source, models.name).version)
    before = snapshot(client, models.name)
    assert promote_cli(models, policy, "--version", copy) == 3
    out = capsys.readouterr().out
    assert "gate (b) beats champion         FAIL  not better than the champion by the margin +0.0050 " \
           "(it scores every row as the champion does): auc_gain=+0.0000 [95% CI +0.0000, +0.0000]" in out
    assert "decision: refused" in out
    audit = audits(client, models.name)[-1]
    assert audit.data.tags[f"{TAG}decision"] == "refused" and audit.data.tags[f"{TAG}gate.b"] == "fail"
    assert audit.data.metrics["b.auc_gain"] == 0
    assert snapshot(client, models.name) == before
    client.delete_model_version(models.name, copy)


def driver(models: Models, policy_path: Path, *args: str, own: tuple[str, ...] = ()) -> list[str]:
    """The command of a `creditflow promote` process with the step hook (tests/registry_driver.py)."""
    return [sys.executable, str(DRIVER), *own, "--", "--name", models.name, "--policy", str(policy_path), *args]


@contextmanager
def killer(models: Models, policy: tuple[PromotionPolicy, Path]) -> Iterator[Callable[..., None]]:
    """`kill_at(step, *args)`: a promotion (or rollback) in a process of its own that a real os._exit ends at
    `step`, forked by one driver process (`--serve`) that paid the imports once."""
    server = subprocess.Popen([sys.executable, str(DRIVER), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=subprocess_env(MLFLOW_TRACKING_URI=models.url))

    def kill_at(step: str, *args: str) -> None:
        server.stdin.write(json.dumps(driver(models, policy[1], *args, own=("--die-at", step))[2:]) + "\n")
        server.stdin.flush()
        answer = json.loads(server.stdout.readline() or '{"code": null, "output": "the driver ended"}')
        assert answer["code"] == 137, (step, answer["output"][-3000:])

    try:
        yield kill_at
    finally:
        server.stdin.close()
        server.wait(timeout=60)


def steps_of(req: PromotionRequest, policy: PromotionPolicy) -> list[str]:
    """The steps one promotion passes, in order, each once (the driver dies at the first of a name)."""
    steps: list[str] = []
    assert promote(req, policy, steps.append).outcome in ("promoted", "rolled_back")
    assert steps[:4] == ["acquiring", "lease", "evaluated", "tagged"] and steps[-2:] == ["audited", "released"]
    return list(dict.fromkeys(steps))


# The kill loops run on the SQLite server only: a kill falls between two registry calls, each one a whole request the
# server has committed, so what is left and what repairs it is the same with either backend store; PostgreSQL's
# part (atomic lease, search and history queries) is test_promotion_story's, the races' and bad input's.
@SQLITE_ONLY
def test_a_promotion_killed_at_any_step_is_safe_and_the_next_one_repairs_it(client, models, policy, capsys) -> None:
    """A real kill (no `finally` runs: the lease stays taken, the audit run RUNNING) at every step."""
    reset(client, models, champion=models.weak, challenger=models.better)
    steps = steps_of(PromotionRequest(name=models.name, version=models.better), policy[0])
    assert {"alias", "challenger", "production", "archived"} <= set(steps)
    committed = steps.index("alias")
    with killer(models, policy) as kill_at:
        for i, step in enumerate(steps):
            reset(client, models, champion=models.weak, challenger=models.better)
            kill_at(step, "--version", models.better)
            assert_safe(client, models.name, {models.better if i >= committed else models.weak})
            if step == "alias":
                assert not registry_client.in_step(client, models.name)
            capsys.readouterr()
            assert promote_cli(models, policy, "--version", models.better) == 0
            expected = "promoted" if i < committed else "repaired" if step not in ("audited", "released") \
                else "unchanged"
            assert f"decision: {expected}" in capsys.readouterr().out, step
            assert_in_step(client, models.name, models.better)


@SQLITE_ONLY  # as the promotion's kill loop
def test_a_rollback_killed_at_any_step_is_safe_and_the_next_promotion_repairs_it(client, models, policy,
                                                                                  capsys) -> None:
    """Before the alias moves, rerunning the rollback completes it; after, promoting its target repairs."""
    reset(client, models, champion=models.better, previous=models.weak)
    steps = steps_of(PromotionRequest(name=models.name, rollback=True), policy[0])
    committed = steps.index("alias")
    with killer(models, policy) as kill_at:
        for i, step in enumerate(steps):
            reset(client, models, champion=models.better, previous=models.weak)
            kill_at(step, "--rollback")
            assert_safe(client, models.name, {models.weak if i >= committed else models.better})
            capsys.readouterr()
            again = ["--version", models.weak] if i >= committed else ["--rollback"]
            assert promote_cli(models, policy, *again) == 0
            expected = "rolled back" if i < committed else "repaired" if step not in ("audited", "released") \
                else "unchanged"
            assert f"decision: {expected}" in capsys.readouterr().out, step
            assert_in_step(client, models.name, models.weak)


def wait_for(condition, what: str, timeout: float = 120) -> None:
    """Poll until `condition` holds (the barrier)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


@SQLITE_ONLY
def test_an_expired_lease_is_taken_over_and_its_stalled_holder_moves_nothing(client, models, policy,
                                                                             tmp_path, capsys) -> None:
    """A live holder blocks others until its lease expires by time; then it is taken over, and the holder,
    when it goes on, finds the lease lost before its alias move: it promotes nothing and says so."""
    reset(client, models, champion=models.weak)
    short = tmp_path / "short-lease.yaml"
    short.write_text(yaml.safe_dump({**policy[0].model_dump(), "lease_seconds": LEASE_SECONDS}))
    gate = tmp_path / "gate"
    gate.mkdir()
    holder = subprocess.Popen(driver(models, short, "--version", models.better, own=("--pause-at", "lease",
                                                                                      "--gate", str(gate))),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=subprocess_env(MLFLOW_TRACKING_URI=models.url))
    try:
        wait_for(lambda: (gate / "reached").exists() or holder.poll() is not None, "the holder taking the lease")
        assert holder.poll() is None, holder.communicate()
        capsys.readouterr()
        args = ("--version", models.better, "--alias", "challenger")
        assert cli(["promote", "--name", models.name, "--policy", str(short), *args]) == 3
        assert f"another promotion of '{models.name}' is in progress" in capsys.readouterr().out
        wait_for(lambda: lease.lease_is_free(client, models.name), "the lease to expire", LEASE_SECONDS + 60)
        assert holder.poll() is None  # it expired by time: the holder is alive
        assert cli(["promote", "--name", models.name, "--policy", str(short), *args]) == 0
    finally:
        (gate / "go").touch()
    out, err = holder.communicate(timeout=180)
    assert holder.returncode == 2, (out, err)
    assert "expired before the alias moved; nothing was promoted" in err
    assert snapshot(client, models.name)[0] == {"champion": models.weak, "challenger": models.better}
    runs = [(r.data.tags[f"{TAG}decision"], r.data.tags[f"{TAG}alias"], r.info.status)
            for r in audits(client, models.name)]
    assert runs[-2:] == [("promoted", "challenger", "FINISHED"), ("abandoned", "champion", "FAILED")], runs


def test_two_promotions_race_and_exactly_one_wins(client, models, policy, tmp_path) -> None:
    """Two processes released together at the lease: one promotes, the other is refused; one Production."""
    reset(client, models, champion=models.weak)
    n_audits = len(audits(client, models.name))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    command = driver(models, policy[1], "--version", models.better, own=("--barrier", str(barrier)))
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


def test_a_rollback_racing_a_promotion_one_wins_the_other_changes_nothing(client, models, policy,
                                                                          tmp_path) -> None:
    """A forced promotion of a third version (a stump: its gates fail) and a rollback, released together."""
    third = mlflow.register_model(client.get_model_version(models.name, models.weak).source, models.name).version
    reset(client, models, champion=models.better, previous=models.weak)
    n_audits = len(audits(client, models.name))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    own = ("--barrier", str(barrier))
    commands = [driver(models, policy[1], "--version", third, "--force", "--reason", "race", own=own),
                driver(models, policy[1], "--rollback", own=own)]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=subprocess_env(MLFLOW_TRACKING_URI=models.url)) for c in commands]
    results = [(*p.communicate(timeout=180), p.returncode) for p in procs]
    codes = [code for _, _, code in results]
    assert sorted(codes) == [0, 3], [(out[-1500:], err[-1500:]) for out, err, _ in results]
    winner = {0: third, 1: models.weak}[codes.index(0)]
    assert "decision: refused: another promotion" in results[codes.index(3)][0]
    assert_in_step(client, models.name, winner)
    new = [r.data.tags for r in audits(client, models.name)[n_audits:]]
    assert [(t[f"{TAG}decision"], t[f"{TAG}version"]) for t in new] == \
        [("forced" if winner == third else "rolled_back", winner)]


@SQLITE_ONLY
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
