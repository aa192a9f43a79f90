"""The audit trail: every promotion decision is a run in the MLflow experiment `model-promotions`.

A decision's run holds the request and policy as parameters, the gate figures as metrics, and the
decision, reason and user as tags; `history` reads them back as the champion's history.
"""

from __future__ import annotations

import getpass
import time
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run

from creditflow.registry.client import experiment_id, in_step, quoted, require_model, stages, when
from creditflow.registry.gates import Evaluation
from creditflow.registry.policy import PromotionPolicy, PromotionRequest

AUDIT_EXPERIMENT = "model-promotions"
TAG = "creditflow."


def audit_experiment(client: MlflowClient) -> str:
    """The id of the `model-promotions` experiment, created on first use (racing creators agree)."""
    return experiment_id(client, AUDIT_EXPERIMENT)



def open_audit(client: MlflowClient, req: PromotionRequest, version: str | None, decision: str, reason: str,
               evaluation: Evaluation | None, policy: PromotionPolicy, previous: str | None,
               lease_token: str = "") -> str:
    """An MLflow run in `model-promotions` recording one decision: request, policy, gate figures, reason."""
    tags = {f"{TAG}kind": "audit", f"{TAG}registered_model": req.name, f"{TAG}version": version or "",
            f"{TAG}alias": req.alias, f"{TAG}decision": decision, f"{TAG}reason": reason[:4000],
            f"{TAG}previous_champion": previous or "", f"{TAG}lease": lease_token,
            "mlflow.user": getpass.getuser(), "mlflow.note.content": reason[:4000]}
    if evaluation is not None:
        tags.update({f"{TAG}gate.{g.key}": {True: "pass", False: "fail", None: "n/a"}[g.passed]
                     for g in evaluation.gates})
        tags.update({f"{TAG}gate.{g.key}.detail": g.detail[:4000] for g in evaluation.gates})
    run = client.create_run(audit_experiment(client), run_name=f"{decision} {req.name} v{version} @{req.alias}",
                            tags=tags)
    params = {"name": req.name, "version": version or "", "alias": req.alias, "force": req.force,
              "rollback": req.rollback, "reason": req.reason, "previous_champion": previous or "",
              **{f"policy.{k}": v for k, v in policy.model_dump().items()}}
    if evaluation is not None:
        params.update({"eval.source": evaluation.data_source, "eval.rows": evaluation.rows,
                       "eval.data_rows": req.data_rows})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                     metrics=[Metric(k, float(v), int(time.time() * 1000), 0)
                              for k, v in (evaluation.figures() if evaluation else {}).items()])
    return run.info.run_id


def tag_decision(client: MlflowClient, name: str, version: str, decision: str, reason: str, audit: str) -> None:
    for key, value in (("last_decision", decision), ("last_decision_reason", reason[:4000]), ("last_audit_run", audit)):
        client.set_model_version_tag(name, version, f"{TAG}{key}", value)


def close_stale_audits(client: MlflowClient, name: str, lease_token: str) -> int:
    """Audit runs left RUNNING by a promotion that was killed: mark them KILLED (we hold the lease now)."""
    runs = client.search_runs([audit_experiment(client)],
                              f"tags.`{TAG}kind` = 'audit' and tags.`{TAG}registered_model` = {quoted(name)} "
                              "and attributes.status = 'RUNNING'")
    stale = [r for r in runs if r.data.tags.get(f"{TAG}lease") != lease_token]
    for run in stale:
        client.set_tag(run.info.run_id, f"{TAG}interrupted", "true")
        client.set_terminated(run.info.run_id, "KILLED")
    return len(stale)





@dataclass(frozen=True)
class HistoryRow:
    when: str
    decision: str
    version: str
    alias: str
    previous: str
    user: str
    status: str
    reason: str


def history(name: str, everything: bool = False) -> list[HistoryRow]:
    """Audited decisions on the model, oldest first: champion moves only, or every decision."""
    client = MlflowClient()
    require_model(client, name)
    found = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if found is None:
        return []
    runs: list[Run] = client.search_runs(
        [found.experiment_id], f"tags.`{TAG}kind` = 'audit' and tags.`{TAG}registered_model` = {quoted(name)}",
        order_by=["attributes.start_time ASC"], max_results=5000)
    moved = ("promoted", "forced", "rolled_back", "repaired")
    rows = []
    for run in runs:
        t = run.data.tags
        if not everything and not (t.get(f"{TAG}alias") == "champion" and t.get(f"{TAG}decision") in moved):
            continue
        rows.append(HistoryRow(when(run.info.start_time / 1000), t.get(f"{TAG}decision", ""),
                               t.get(f"{TAG}version", ""), t.get(f"{TAG}alias", ""),
                               t.get(f"{TAG}previous_champion", "") or "-", t.get("mlflow.user", ""),
                               run.info.status, t.get(f"{TAG}reason", "")))
    return rows


def format_history(name: str, rows: list[HistoryRow]) -> str:
    client = MlflowClient()
    aliases = require_model(client, name)
    current = stages(client, name)
    lines = [f"champion history of '{name}' (oldest first)",
             f"{'when':<24} {'decision':<12} {'version':>7} {'alias':<10} {'previous':>8}  {'user':<10} reason"]
    for r in rows:
        note = "" if r.status == "FINISHED" else f" [{r.status.lower()}: interrupted]"
        lines.append(f"{r.when:<24} {r.decision:<12} {r.version:>7} {r.alias:<10} {r.previous:>8}  {r.user:<10} "
                     f"{r.reason[:100]}{note}")
    now = ", ".join(f"@{a} = v{v} ({current.get(v, '?')})" for a, v in sorted(aliases.items())) or "no aliases"
    lines.append(f"now: {now}; stages {'in step with' if in_step(client, name) else 'NOT in step with'} aliases")
    return "\n".join(lines)


