"""Promotion and rollback: a version moves to @champion or @challenger through the gates, stages kept in step.

Aliases are the pointer (`models:/credit-default@champion`); the deprecated stages follow them for
tools that still read `models:/credit-default/Production`. A promotion to @champion writes in this
order, so that a process killed between any two calls leaves @champion on a version that passed its
gates, and the next promotion (which first runs `reconcile`) finishes the rest:

  lease ─► audit run opened ─► version tagged (gates passed, previous champion) ─► @champion moved
  (one call, the commit point; the alias is never deleted) ─► @challenger cleared if it was this version
  ─► version to Production, former ones Archived ─► audit run finished ─► lease released

Gate (e) reads the candidate's shadow evidence (registry/evidence.py); the report prints it whenever it exists.
Gate (f) checks the candidate's monotone behaviour (model/monotone.py); `--force` overrides every gate but (d).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from creditflow.errors import TrackingError, first_line
from creditflow.registry.audit import AUDIT_EXPERIMENT, TAG, close_stale_audits, open_audit, tag_decision
from creditflow.registry.client import (
    check_tracking_server,
    mlflow_errors,
    quoted,
    require_model,
    stages,
    version_uri,
)
from creditflow.registry.evidence import ShadowEvidence, shadow_evidence, shadow_gate
from creditflow.registry.gates import Evaluation, Gate, evaluate, loads_gate, signature_of
from creditflow.registry.lease import Lease, PromotionBusy, Step, lease_still_held, leased, no_step
from creditflow.registry.policy import PromotionPolicy, PromotionRequest
from creditflow.specs import GLOBAL_MODEL_TAG

STAGE_OF = {"champion": "Production", "challenger": "Staging"}
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """What a promotion command decided; `exit_code` is what the CLI returns."""

    outcome: str  # promoted | forced | rolled_back | repaired | unchanged | refused | kept_global | would_...
    name: str
    version: str | None
    alias: str
    reason: str
    previous: str | None = None
    gates: tuple[Gate, ...] = ()
    audit_run: str | None = None
    shadow: ShadowEvidence | None = None  # the candidate's shadow evidence, printed when there is some

    @property
    def exit_code(self) -> int:
        return 3 if self.outcome in ("refused", "kept_global", "would_refuse") else 0

    def figure(self, key: str) -> float | None:
        """A gate figure by its audit name (`a.roc_auc`, `b.champion_roc_auc`, ...), None when not computed."""
        gate, _, name = key.partition(".")
        return next((g.figures.get(name) for g in self.gates if g.key == gate), None)

    def report(self) -> str:
        target = f"{self.name} v{self.version}" if self.version else self.name
        lines = [f"promotion of {target} to @{self.alias}:"] + [g.line() for g in self.gates]
        if self.shadow:
            lines.append(f"  {self.shadow.line()}")
        lines.append(f"decision: {self.outcome.replace('_', ' ')}: {self.reason}")
        if self.audit_run:
            lines.append(f"audit: run {self.audit_run} in experiment '{AUDIT_EXPERIMENT}'")
        return "\n".join(lines)


def _stage(client: MlflowClient, name: str, version: str, stage: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated; we keep them in step on purpose
        client.transition_model_version_stage(name, version, stage, archive_existing_versions=False)


def reconcile(client: MlflowClient, name: str, on_step: Step = no_step) -> list[str]:
    """Make stages follow the aliases: champion alone in Production, challenger alone in Staging.

    Each version enters its stage before the others leave it, so a stage never goes empty while its alias
    points somewhere. Returns the changes made (empty when everything was already in step).
    """
    aliases = require_model(client, name)
    changes = []
    if aliases.get("challenger") and aliases.get("challenger") == aliases.get("champion"):
        client.delete_registered_model_alias(name, "challenger")
        changes.append(f"@challenger cleared (v{aliases.pop('challenger')} is the champion)")
        on_step("challenger")
    current = stages(client, name)
    for alias, stage in STAGE_OF.items():
        holder = aliases.get(alias)
        if holder and current.get(holder) != stage:
            _stage(client, name, holder, stage)
            current[holder] = stage
            changes.append(f"v{holder} -> {stage}")
            on_step(stage.lower())
        for version, now in current.items():
            if now == stage and version != holder:
                _stage(client, name, version, "Archived")
                current[version] = "Archived"
                changes.append(f"v{version} {stage} -> Archived")
                on_step("archived")
    return changes





def resolve_version(client: MlflowClient, req: PromotionRequest) -> str:
    """The version a request names, directly or through the training run that registered it."""
    if req.version:
        try:
            return str(client.get_model_version(req.name, req.version).version)
        except MlflowException:
            raise TrackingError(f"model '{req.name}' has no version {req.version}") from None
    found = client.search_model_versions(f"name = {quoted(req.name)} and run_id = {quoted(str(req.run_id))}")
    if not found:
        raise TrackingError(f"no version of '{req.name}' was registered from run {req.run_id}")
    return str(max(int(v.version) for v in found))


def promote(req: PromotionRequest, policy: PromotionPolicy, on_step: Step = no_step) -> Decision:
    """Carry out one promotion request; user mistakes raise CreditflowError, gate refusals return a Decision."""
    check_tracking_server()
    client = MlflowClient()
    with mlflow_errors(f"registry request for '{req.name}' failed"):
        require_model(client, req.name)
        if req.rollback:
            return _rollback(client, req, policy, on_step)
        version = resolve_version(client, req)
        signature_of(req.name, version)
        if req.dry_run:
            return _dry_run(client, req, version, policy)
        try:
            with leased(client, req.name, policy, f"{version} -> @{req.alias}", on_step) as lease:
                return _promote_leased(client, req, version, policy, lease, on_step)
        except PromotionBusy as busy:
            return Decision("refused", req.name, version, req.alias, str(busy))


def _dry_run(client: MlflowClient, req: PromotionRequest, version: str, policy: PromotionPolicy) -> Decision:
    aliases = require_model(client, req.name)
    if aliases.get(req.alias) == version:
        return Decision("unchanged", req.name, version, req.alias, f"v{version} already holds @{req.alias}")
    champion = aliases.get("champion")
    evaluation, shadow = _evaluate(client, req, version, champion, policy)
    ok = not evaluation.failed or (req.force and _loads(evaluation))
    reason = _gate_summary(evaluation) + " (dry run: nothing changed)"
    return Decision("would_promote" if ok else "would_refuse", req.name, version, req.alias, reason,
                    champion, evaluation.gates, shadow=shadow)


def global_model_of(client: MlflowClient, name: str) -> str | None:
    """The global model a segment's registered model falls back to (its `global_model` tag); None for others."""
    return client.get_registered_model(name).tags.get(GLOBAL_MODEL_TAG) or None


def _evaluate(client: MlflowClient, req: PromotionRequest, version: str, champion: str | None,
              policy: PromotionPolicy) -> tuple[Evaluation, ShadowEvidence | None]:
    """Gates (a)-(d) and (f), then (e) on the candidate's shadow evidence; the evidence too, for the report.

    A segment model's competitor for @champion is the global model's champion, on the segment's held-out rows:
    it must beat what would serve the segment without it. No global champion: nothing to fall back on, refused.
    """
    rival, rival_name = champion, None
    global_model = global_model_of(client, req.name) if req.alias == "champion" else None
    if global_model:
        rival_name = global_model
        rival = require_model(client, global_model).get("champion")
    evaluation = evaluate(client, req.name, version, req.alias, rival, policy, req.data, rival_name,
                          req.data_rows == "all")
    if global_model and not rival:
        missing = Gate("b", "beats champion", False, f"'{global_model}' has no @champion: a segment model must beat "
                                                     "the global champion, promote one first")
        evaluation = replace(evaluation, gates=tuple(missing if g.key == "b" else g for g in evaluation.gates))
    shadow = _shadow_evidence(client, f"{req.name}/{version}")
    gate = shadow_gate(shadow, policy, req.alias, champion)
    return replace(evaluation, gates=tuple(sorted(evaluation.gates + (gate,), key=lambda g: g.key))), shadow


def _refusal(client: MlflowClient, req: PromotionRequest, evaluation: Evaluation) -> str:
    """`kept_global` when a segment model failed only gate (b) against the global champion, else `refused`."""
    only_b = [g.key for g in evaluation.failed] == ["b"]
    return "kept_global" if only_b and req.alias == "champion" and global_model_of(client, req.name) else "refused"


def _shadow_evidence(client: MlflowClient, model_version: str) -> ShadowEvidence | None:
    """The evidence, or None when it cannot be read: evidence informs a promotion and must never break one."""
    try:
        return shadow_evidence(client, model_version)
    except Exception as exc:  # a failing search is "no evidence" (gate (e), when required, then fails)
        logger.warning("cannot read the shadow evidence of %s, taken as none: %s: %s", model_version,
                       type(exc).__name__, first_line(exc))
        return None


def _loads(evaluation: Evaluation) -> bool:
    return next(g for g in evaluation.gates if g.key == "d").passed is True


def _gate_summary(evaluation: Evaluation) -> str:
    failed = evaluation.failed
    if not failed:
        return "gates " + ", ".join(f"({g.key})" for g in evaluation.gates if g.passed) + " passed"
    return "failed " + "; ".join(f"gate ({g.key}) {g.title}: {g.detail}" for g in failed)


def _promote_leased(client: MlflowClient, req: PromotionRequest, version: str, policy: PromotionPolicy,
                    lease: Lease, on_step: Step) -> Decision:
    killed = close_stale_audits(client, req.name, lease.token)
    repairs = reconcile(client, req.name, on_step)
    aliases = require_model(client, req.name)
    champion = aliases.get("champion")
    if aliases.get(req.alias) == version:
        return _already(client, req, version, policy, lease, repairs, killed)
    if req.alias == "challenger" and champion == version:
        raise TrackingError(f"{req.name} v{version} is the champion; it cannot also be the challenger")
    evaluation, shadow = _evaluate(client, req, version, champion, policy)
    if evaluation.failed and not (req.force and _loads(evaluation)):
        reason = _gate_summary(evaluation) + (" (--force cannot override gate (d))" if req.force else "")
        outcome = _refusal(client, req, evaluation)
        audit = open_audit(client, req, version, outcome, reason, evaluation, policy, champion, lease.token)
        tag_decision(client, req.name, version, outcome, reason, audit)
        client.set_terminated(audit)
        return Decision(outcome, req.name, version, req.alias, reason, champion, evaluation.gates, audit, shadow)
    outcome = "forced" if evaluation.failed else "promoted"
    reason = _gate_summary(evaluation) + (f"; forced: {req.reason}" if evaluation.failed else "")
    if req.reason and not evaluation.failed:
        reason += f"; {req.reason}"
    audit = open_audit(client, req, version, outcome, reason, evaluation, policy, champion, lease.token)
    on_step("evaluated")
    gates = "forced" if evaluation.failed else "passed"
    tags = {f"{req.alias}_gates": gates, f"{req.alias}_audit_run": audit}
    if req.alias == "champion" and champion:
        tags["previous_champion"] = champion
    _commit(client, req.name, version, req.alias, tags, lease, audit, on_step)
    tag_decision(client, req.name, version, outcome, reason, audit)
    client.set_terminated(audit)
    on_step("audited")
    return Decision(outcome, req.name, version, req.alias, reason, champion, evaluation.gates, audit, shadow)


def _commit(client: MlflowClient, name: str, version: str, alias: str, tags: dict[str, str], lease: Lease,
            audit: str, on_step: Step) -> None:
    """Tag, re-check the lease, move the alias (the commit point), then bring the stages in step.

    A lease that expired (another promotion may have taken over) ends the attempt before the alias
    moves; its audit run is closed as `abandoned` (FAILED) so that history shows it.
    """
    for key, value in tags.items():
        client.set_model_version_tag(name, version, f"{TAG}{key}", value)
    on_step("tagged")
    if not lease_still_held(client, lease):
        reason = (f"the promotion lease of '{name}' expired before the alias moved; nothing was promoted "
                  "(raise lease_seconds in the promotion policy)")
        for key, value in (("decision", "abandoned"), ("reason", reason)):
            client.set_tag(audit, f"{TAG}{key}", value)
        client.set_terminated(audit, "FAILED")
        raise TrackingError(reason)
    client.set_registered_model_alias(name, alias, version)
    on_step("alias")
    reconcile(client, name, on_step)


def _already(client: MlflowClient, req: PromotionRequest, version: str, policy: PromotionPolicy, lease: Lease,
             repairs: list[str], killed: int) -> Decision:
    """The version already holds the alias: report, and audit the repair if an interrupted run left one."""
    if not repairs and not killed:
        return Decision("unchanged", req.name, version, req.alias, f"v{version} already holds @{req.alias}; in step")
    reason = f"v{version} already holds @{req.alias}; completed an interrupted promotion: " + \
        ", ".join(repairs + ([f"{killed} interrupted audit run(s) closed"] if killed else []))
    audit = open_audit(client, req, version, "repaired", reason, None, policy, None, lease.token)
    tag_decision(client, req.name, version, "repaired", reason, audit)
    client.set_terminated(audit)
    return Decision("repaired", req.name, version, req.alias, reason, audit_run=audit)


def _rollback(client: MlflowClient, req: PromotionRequest, policy: PromotionPolicy, on_step: Step) -> Decision:
    """Restore the champion before the current one (its `previous_champion` tag); only gate (d) applies."""
    champion = require_model(client, req.name).get("champion")
    if not champion:
        raise TrackingError(f"'{req.name}' has no @champion to roll back")
    previous = client.get_model_version(req.name, champion).tags.get(f"{TAG}previous_champion")
    if not previous:
        raise TrackingError(f"{req.name} v{champion} has no previous champion to roll back to")
    loads, _ = loads_gate(version_uri(req.name, previous))
    if req.dry_run:
        outcome = "would_promote" if loads.passed else "would_refuse"
        reason = f"rollback from v{champion} (dry run: nothing changed)"
        return Decision(outcome, req.name, previous, "champion", reason, champion, (loads,))
    evaluation = Evaluation((loads,), champion, "", 0)
    try:
        with leased(client, req.name, policy, f"rollback to {previous}", on_step) as lease:
            close_stale_audits(client, req.name, lease.token)
            if require_model(client, req.name).get("champion") != champion:
                raise PromotionBusy(f"@champion of '{req.name}' moved while the rollback started; nothing changed")
            if not loads.passed:
                reason = f"cannot roll back to v{previous}: {loads.detail}"
                audit = open_audit(client, req, previous, "refused", reason, evaluation, policy, champion, lease.token)
                client.set_terminated(audit)
                return Decision("refused", req.name, previous, "champion", reason, champion, (loads,), audit)
            reason = f"rolled back from v{champion} to v{previous}" + (f"; {req.reason}" if req.reason else "")
            audit = open_audit(client, req, previous, "rolled_back", reason, evaluation, policy, champion, lease.token)
            on_step("evaluated")
            _commit(client, req.name, previous, "champion", {"champion_audit_run": audit}, lease, audit, on_step)
            tag_decision(client, req.name, previous, "rolled_back", reason, audit)
            tag_decision(client, req.name, champion, "rolled_back_from", reason, audit)
            client.set_terminated(audit)
            on_step("audited")
    except PromotionBusy as busy:
        return Decision("refused", req.name, previous, "champion", str(busy))
    return Decision("rolled_back", req.name, previous, "champion", reason, champion, (loads,), audit)
