"""Shadow evidence: serving's runs summed for a candidate, gate (e) on them, and `creditflow promote` printing them.

The runs are written and read through a real SQLite tracking store; the end-to-end test promotes a second
version of the session champion's run, so gates (a)-(d) pass and gate (e) alone decides.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from creditflow.cli import main as cli
from creditflow.errors import SpecError
from creditflow.registry.audit import AUDIT_EXPERIMENT, TAG
from creditflow.registry.evidence import (
    SHADOW_TAG,
    ShadowEvidence,
    ShadowTotals,
    log_shadow_totals,
    open_shadow_run,
    shadow_evidence,
    shadow_gate,
)
from creditflow.registry.policy import PromotionPolicy, load_policy
from creditflow.registry.promote import Decision
from tests.conftest import EXPERIMENTS

CHAMPION, CANDIDATE = "credit-default/1", "credit-default/2"
SUMMED = ("400 rows in 75 requests, decision flips 2.00%, mean |dP| 0.0125, p99 |dP| 0.0900, "
          "top reason differs 3.50%, 3 requests dropped")


def two_workers(client: MlflowClient, champion: str, candidate: str) -> None:
    """What two serving workers leave: A logged twice (its totals grow), B once; together 400 rows, 8 flips."""
    a, b = open_shadow_run(client, champion, candidate), open_shadow_run(client, champion, candidate)
    first = ShadowTotals(requests=10, rows=40, flips=1, top_reason_diffs=2, abs_delta_sum=0.8, p99_abs_delta=0.05)
    log_shadow_totals(client, a, first, first, step=0)
    later = ShadowTotals(requests=15, rows=60, flips=1, top_reason_diffs=3, abs_delta_sum=1.2, p99_abs_delta=0.06,
                         dropped=1)
    log_shadow_totals(client, a, later, ShadowTotals(requests=25, rows=100, flips=2, top_reason_diffs=5,
                                                     abs_delta_sum=2.0, p99_abs_delta=0.06, dropped=1), step=1)
    b_totals = ShadowTotals(requests=50, rows=300, flips=6, top_reason_diffs=9, abs_delta_sum=3.0, p99_abs_delta=0.09,
                            dropped=2)
    log_shadow_totals(client, b, b_totals, b_totals, step=0)


def evidence(rows: int, flips: int) -> ShadowEvidence:
    return ShadowEvidence(CANDIDATE, (CHAMPION,), 1, ShadowTotals(requests=rows, rows=rows, flips=flips))


def test_shadow_evidence_sums_the_workers_of_one_version() -> None:
    client = MlflowClient()
    assert shadow_evidence(client, CANDIDATE) is None  # no model-promotions experiment yet
    two_workers(client, CHAMPION, CANDIDATE)
    other = open_shadow_run(client, CHAMPION, "credit-default/21")
    log_shadow_totals(client, other, ShadowTotals(rows=999, flips=999), ShadowTotals(rows=999, flips=999), step=0)
    open_shadow_run(client, CHAMPION, CANDIDATE)  # a worker that has compared nothing yet

    found = shadow_evidence(client, CANDIDATE)
    assert found is not None and (found.model_version, found.champions, found.runs) == (CANDIDATE, (CHAMPION,), 2)
    t = found.totals
    assert (t.requests, t.rows, t.flips, t.top_reason_diffs, t.dropped) == (75, 400, 8, 14, 3)
    assert (t.flip_rate, t.mean_abs_delta, t.p99_abs_delta) == pytest.approx((0.02, 0.0125, 0.09))
    assert found.line() == f"shadow evidence for {CANDIDATE} (vs {CHAMPION}; 2 run(s)): {SUMMED}"
    assert shadow_evidence(client, "credit-default/3") is None
    assert shadow_evidence(client, "credit-default/21").totals.rows == 999


def test_log_shadow_totals_keeps_each_window_beside_the_running_totals() -> None:
    client = MlflowClient()
    run = open_shadow_run(client, CHAMPION, CANDIDATE)
    log_shadow_totals(client, run, ShadowTotals(rows=60, flips=3), ShadowTotals(rows=100, flips=4), step=7)
    logged = client.get_run(run)
    assert logged.data.tags[SHADOW_TAG] == CANDIDATE and logged.data.tags[f"{TAG}kind"] == "shadow"
    assert client.get_experiment(logged.info.experiment_id).name == AUDIT_EXPERIMENT
    m = logged.data.metrics
    assert (m["shadow.window.rows"], m["shadow.window.flip_rate"], m["shadow.rows"], m["shadow.flip_rate"]) == \
        (60, 0.05, 100, 0.04)
    assert [x.step for x in client.get_metric_history(run, "shadow.rows")] == [7]


def test_the_shadow_gate_is_off_unless_the_policy_asks() -> None:
    off = shadow_gate(evidence(1234, 10), PromotionPolicy(), "champion", "1")
    assert off.passed is None and off.detail == "not required by the policy" and off.figures["rows"] == 1234
    assert shadow_gate(None, PromotionPolicy(), "champion", "1").passed is None
    strict = PromotionPolicy(shadow_min_rows=5000, shadow_max_flip_rate=0.001)
    challenger = shadow_gate(None, strict, "challenger", "1")
    assert challenger.passed is None and "promoted to champion" in challenger.detail
    assert shadow_gate(None, strict, "champion", None).passed is None  # the first champion: nothing to compare with


@pytest.mark.parametrize(("policy", "found", "passed", "detail"), [
    ({"shadow_min_rows": 2000}, evidence(1234, 10), False, "1,234 rows compared (< 2,000 required), flips 0.81%"),
    ({"shadow_max_flip_rate": 0.005}, evidence(1234, 10), False, "1,234 rows compared, flips 0.81% > 0.50%"),
    ({"shadow_min_rows": 1000, "shadow_max_flip_rate": 0.02}, evidence(1234, 10), True,
     "1,234 rows compared (>= 1,000 required), flips 0.81% <= 2.00%"),
    ({"shadow_min_rows": 1234}, evidence(1234, 10), True, "1,234 rows compared (>= 1,234 required), flips 0.81%"),
    ({"shadow_min_rows": 100, "shadow_max_flip_rate": 0.1}, evidence(100, 10), True,
     "100 rows compared (>= 100 required), flips 10.00% <= 10.00%"),
    ({"shadow_min_rows": 1}, None, False, "no shadow evidence"),
    ({"shadow_max_flip_rate": 0.02}, evidence(0, 0), False, "no shadow evidence"),
])
def test_the_shadow_gate_verdicts(policy: dict, found: ShadowEvidence | None, passed: bool, detail: str) -> None:
    gate = shadow_gate(found, PromotionPolicy(**policy), "champion", "1")
    assert (gate.key, gate.passed) == ("e", passed) and gate.detail.startswith(detail), gate.detail


def test_the_shipped_policy_asks_for_no_shadow_evidence(tmp_path: Path) -> None:
    shipped = load_policy(EXPERIMENTS / "promotion.yaml")
    assert (shipped.shadow_min_rows, shipped.shadow_max_flip_rate) == (0, None)
    (tmp_path / "p.yaml").write_text("shadow_max_flip_rate: 1.5\n")
    with pytest.raises(SpecError, match="'shadow_max_flip_rate'"):
        load_policy(tmp_path / "p.yaml")


def test_the_report_shows_the_evidence_line_only_when_there_is_some() -> None:
    found = evidence(1234, 10)
    decision = Decision("would_promote", "credit-default", "2", "champion", "gates passed", "1")
    assert "shadow evidence" not in decision.report()
    lines = Decision("would_promote", "credit-default", "2", "champion", "gates passed", "1",
                     shadow=found).report().splitlines()
    assert lines[1] == f"  {found.line()}" and lines[2].startswith("decision: would promote")


# ---------------------------------------------------------------- end to end: `creditflow promote`


def policy_file(path: Path, **shadow: object) -> str:
    """The shipped policy with floors and gate (b)'s margin out of the way (the candidate is a copy of the champion,
    which gains nothing: this module is about gate (e)) and a small bootstrap."""
    shipped = load_policy(EXPERIMENTS / "promotion.yaml").model_dump()
    policy = PromotionPolicy(**{**shipped, "min_roc_auc": 0.5, "max_calibration_error": 1.0, "bootstrap_samples": 50,
                                "min_auc_gain": 0.0, **shadow})
    path.write_text(yaml.safe_dump(policy.model_dump()))
    return str(path)


def promote_cli(policy: str, version: str, *args: str) -> int:
    return cli(["promote", "--name", "credit-default", "--version", version, "--policy", policy, *args])


def last_audit(client: MlflowClient) -> mlflow.entities.Run:
    experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT).experiment_id
    return client.search_runs([experiment], f"tags.`{TAG}kind` = 'audit'", order_by=["attributes.start_time DESC"],
                              max_results=1)[0]


def test_promote_prints_the_evidence_and_gate_e_refuses_too_few_shadow_rows(own_champion_store, tmp_path,
                                                                            capsys) -> None:
    """Off by default: printed, n/a. Asked for 401 rows with 400 compared: refused (exit 3), then forced."""
    _, outcome = own_champion_store
    client = MlflowClient()
    champion = outcome.registered_version
    candidate = str(mlflow.register_model(outcome.model_uri, "credit-default").version)  # same run: (a)-(d) pass
    two_workers(client, f"credit-default/{champion}", f"credit-default/{candidate}")
    line = f"  shadow evidence for credit-default/{candidate} (vs credit-default/{champion}; 2 run(s)): {SUMMED}"
    lenient, strict = policy_file(tmp_path / "off.yaml"), policy_file(tmp_path / "strict.yaml", shadow_min_rows=401,
                                                                      shadow_max_flip_rate=0.05)
    capsys.readouterr()

    assert promote_cli(lenient, candidate, "--dry-run") == 0
    out = capsys.readouterr().out
    assert line in out.splitlines() and "decision: would promote" in out
    assert "gate (e) shadow on live traffic n/a   not required by the policy" in out

    assert promote_cli(strict, candidate) == 3
    out = capsys.readouterr().out
    assert line in out.splitlines()
    assert "gate (e) shadow on live traffic FAIL  400 rows compared (< 401 required), flips 2.00% <= 5.00%" in out
    assert "decision: refused: failed gate (e) shadow on live traffic" in out
    assert str(client.get_model_version_by_alias("credit-default", "champion").version) == champion
    audit = last_audit(client)
    assert audit.data.tags[f"{TAG}decision"] == "refused" and audit.data.tags[f"{TAG}gate.e"] == "fail"
    assert (audit.data.metrics["e.rows"], audit.data.metrics["e.flip_rate"]) == (400, 0.02)
    assert audit.data.params["policy.shadow_min_rows"] == "401"

    assert promote_cli(strict, candidate, "--force", "--reason", "risk committee, ticket 16") == 0
    assert "decision: forced" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias("credit-default", "champion").version) == candidate
    assert client.get_model_version("credit-default", candidate).tags[f"{TAG}champion_gates"] == "forced"


def test_a_failing_evidence_search_never_breaks_a_promotion(own_champion_store, tmp_path, capsys,
                                                            monkeypatch) -> None:
    """The search fails: a warning, no evidence line, and the decision the offline gates make."""
    _, outcome = own_champion_store
    client = MlflowClient()
    candidate = str(mlflow.register_model(outcome.model_uri, "credit-default").version)
    two_workers(client, f"credit-default/{outcome.registered_version}", f"credit-default/{candidate}")
    search = MlflowClient.search_runs

    def failing(self: MlflowClient, experiment_ids: list[str], filter_string: str = "", *args, **kwargs):
        if SHADOW_TAG in filter_string:
            raise MlflowException("the tracking server is overloaded")
        return search(self, experiment_ids, filter_string, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "search_runs", failing)
    capsys.readouterr()
    assert promote_cli(policy_file(tmp_path / "off.yaml"), candidate, "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"cannot read the shadow evidence of credit-default/{candidate}, taken as none: MlflowException" in out
    assert "shadow evidence for" not in out and "decision: would promote" in out
