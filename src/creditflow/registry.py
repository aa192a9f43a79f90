"""Model registry promotion: gated champion/challenger aliases, stages kept in step, audit, rollback.

Aliases are the pointer (`models:/credit-default@champion`); the deprecated stages follow them for
tools that still read `models:/credit-default/Production`. A promotion to @champion writes in this
order, so that a process killed between any two calls leaves @champion on a version that passed its
gates, and the next promotion (which first runs `reconcile`) finishes the rest:

  lease ─► audit run opened ─► version tagged (gates passed, previous champion) ─► @champion moved
  (one call, the commit point; the alias is never deleted) ─► @challenger cleared if it was this version
  ─► version to Production, former ones Archived ─► audit run finished ─► lease released

MLflow has no locks, so the lease is a compare-and-set on something the store does make atomic:
a run parameter cannot change once logged. Each promotion of a model logs `lease.<model>.<n+1>`
with a unique token on one lease run; of two racing processes exactly one write succeeds.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import os
import re
import socket
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from creditflow.data import load_dataset, split_data
from creditflow.errors import CreditflowError, TrackingError
from creditflow.metrics import calibration_error, ks_statistic, paired_bootstrap_auc
from creditflow.promotion import PromotionPolicy, PromotionRequest, load_policy, request_from_args
from creditflow.specs import DatasetSpec, ExperimentSpec
from creditflow.tracking import SPEC_ARTIFACT, check_tracking_server

AUDIT_EXPERIMENT = "model-promotions"
TAG = "creditflow."
STAGE_OF = {"champion": "Production", "challenger": "Staging"}
Step = Callable[[str], None]  # called before the lease and after each registry write: the hook for fault tests


def _no_step(name: str) -> None:
    """Default step hook: nothing."""


class PromotionBusy(CreditflowError):
    """Another promotion of the same model holds the lease (a refusal: exit 3, nothing changed)."""

    exit_code = 3


# ---------------------------------------------------------------- decisions and gates


@dataclass(frozen=True)
class Gate:
    """One gate's verdict (None: not applicable) and the figures it was decided on."""

    key: str
    title: str
    passed: bool | None
    detail: str
    figures: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[self.passed]
        return f"  gate ({self.key}) {self.title:<22} {verdict}  {self.detail}"


@dataclass(frozen=True)
class Decision:
    """What a promotion command decided; `exit_code` is what the CLI returns."""

    outcome: str  # promoted | forced | rolled_back | repaired | unchanged | refused | would_promote | would_refuse
    name: str
    version: str | None
    alias: str
    reason: str
    previous: str | None = None
    gates: tuple[Gate, ...] = ()
    audit_run: str | None = None

    @property
    def exit_code(self) -> int:
        return 3 if self.outcome in ("refused", "would_refuse") else 0

    def report(self) -> str:
        target = f"{self.name} v{self.version}" if self.version else self.name
        lines = [f"promotion of {target} to @{self.alias}:"] + [g.line() for g in self.gates]
        lines.append(f"decision: {self.outcome.replace('_', ' ')}: {self.reason}")
        if self.audit_run:
            lines.append(f"audit: run {self.audit_run} in experiment '{AUDIT_EXPERIMENT}'")
        return "\n".join(lines)


@dataclass(frozen=True)
class Evaluation:
    gates: tuple[Gate, ...]
    champion: str | None
    data_source: str
    rows: int

    @property
    def failed(self) -> list[Gate]:
        return [g for g in self.gates if g.passed is False]

    def figures(self) -> dict[str, float]:
        return {f"{g.key}.{k}": v for g in self.gates for k, v in g.figures.items()}


def floors_gate(y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray | None, policy: PromotionPolicy) -> Gate:
    """(a) absolute floors on the evaluation data: ROC AUC, calibration error, KS drop versus the champion."""
    auc, cal, ks = float(roc_auc_score(y, p_new)), calibration_error(y, p_new), ks_statistic(y, p_new)
    figures = {"roc_auc": auc, "calibration_error": cal, "ks": ks}
    checks = [(auc >= policy.min_roc_auc, f"roc_auc={auc:.4f} (needs >= {policy.min_roc_auc})"),
              (cal <= policy.max_calibration_error,
               f"calibration_error={cal:.4f} (needs <= {policy.max_calibration_error})")]
    if p_old is not None:
        drop = ks_statistic(y, p_old) - ks
        figures["ks_drop"] = drop
        text = f"ks={ks:.3f}, drop vs champion={drop:+.3f} (needs <= {policy.max_ks_drop})"
        checks.append((drop <= policy.max_ks_drop, text))
    else:
        checks.append((True, f"ks={ks:.3f} (no champion: no KS drop)"))
    failed = [text for ok, text in checks if not ok]
    detail = "; ".join(text for _, text in checks) if not failed else "failed: " + "; ".join(failed)
    return Gate("a", "floors", not failed, detail, figures)


def versus_champion_gate(y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray, policy: PromotionPolicy) -> Gate:
    """(b) the challenger beats the champion on the same rows: AUC gain and its paired bootstrap interval."""
    diff, low, high = paired_bootstrap_auc(y, p_new, p_old, policy.bootstrap_samples, policy.bootstrap_seed,
                                           policy.bootstrap_level)
    figures = {"champion_roc_auc": float(roc_auc_score(y, p_old)), "auc_gain": diff,
               "auc_gain_ci_low": low, "auc_gain_ci_high": high}
    ok = diff >= policy.min_auc_gain and low >= policy.min_auc_gain_ci_low
    detail = (f"auc_gain={diff:+.4f} [{policy.bootstrap_level:.0%} CI {low:+.4f}, {high:+.4f}] "
              f"(needs gain >= {policy.min_auc_gain:+.4f} and CI low >= {policy.min_auc_gain_ci_low:+.4f}; "
              f"champion roc_auc={figures['champion_roc_auc']:.4f})")
    return Gate("b", "beats champion", ok, detail, figures)


def _columns(schema: object) -> dict[str, dict]:
    """Name → column spec without the name, for a column-based schema."""
    specs = schema.to_dict()  # type: ignore[attr-defined]
    return {s.get("name", str(i)): {k: v for k, v in s.items() if k != "name"} for i, s in enumerate(specs)}


def signature_gate(new: ModelSignature, old: ModelSignature | None) -> Gate:
    """(c) clients of the champion keep working: no new required input, no changed types, same outputs."""
    if old is None:
        return Gate("c", "signature compatible", None, "no champion: nothing to stay compatible with")
    problems = []
    new_in, old_in = _columns(new.inputs), _columns(old.inputs)
    for name, spec in new_in.items():
        if name not in old_in and spec.get("required", True):
            problems.append(f"requires input '{name}' that champion clients do not send")
        elif name in old_in and spec.get("type") != old_in[name].get("type"):
            problems.append(f"input '{name}' changes type {old_in[name].get('type')} -> {spec.get('type')}")
    if old.outputs is not None:
        new_out = _columns(new.outputs) if new.outputs is not None else {}
        for name, spec in _columns(old.outputs).items():
            if name not in new_out or new_out[name].get("type") != spec.get("type"):
                problems.append(f"output '{name}' missing or of another type")
    detail = "; ".join(problems) if problems else f"{len(new_in)} inputs, outputs unchanged"
    return Gate("c", "signature compatible", not problems, detail, {"incompatibilities": float(len(problems))})


def loads_gate(uri: str) -> tuple[Gate, mlflow.pyfunc.PyFuncModel | None]:
    """(d) the version loads from the registry and predicts probabilities on its own input example."""
    try:
        model = mlflow.pyfunc.load_model(uri)
        example = model.input_example
        if example is None:
            return Gate("d", "loads and predicts", False, f"{uri} has no input example"), None
        proba = np.asarray(model.predict(example)["probability"], dtype="float64")
    except Exception as exc:  # any failure to load or predict is this gate failing, with its reason
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return Gate("d", "loads and predicts", False, f"{uri}: {type(exc).__name__}: {first[:300]}"), None
    ok = len(proba) == len(example) and bool(np.all(np.isfinite(proba) & (proba >= 0) & (proba <= 1)))
    detail = f"{len(proba)} example rows scored, probability in [0, 1]" if ok else "predictions are not probabilities"
    return Gate("d", "loads and predicts", ok, detail, {"example_rows": float(len(proba))}), model


# ---------------------------------------------------------------- registry reads


@contextmanager
def registry_errors(what: str) -> Iterator[None]:
    """Registry and tracking failures as one line (exit 2) instead of a traceback."""
    try:
        yield
    except MlflowException as exc:
        raise TrackingError(f"{what}: {exc.message.splitlines()[0] if exc.message else exc}") from None


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def model_uri(name: str, version: str) -> str:
    return f"models:/{name}/{version}"


def require_model(client: MlflowClient, name: str) -> dict[str, str]:
    """The registered model's aliases; a one-line error when the model does not exist."""
    try:
        return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise TrackingError(f"no registered model named '{name}'") from None
        raise


def resolve_version(client: MlflowClient, req: PromotionRequest) -> str:
    """The version a request names, directly or through the training run that registered it."""
    if req.version:
        try:
            return str(client.get_model_version(req.name, req.version).version)
        except MlflowException:
            raise TrackingError(f"model '{req.name}' has no version {req.version}") from None
    found = client.search_model_versions(f"name = {_quoted(req.name)} and run_id = {_quoted(str(req.run_id))}")
    if not found:
        raise TrackingError(f"no version of '{req.name}' was registered from run {req.run_id}")
    return str(max(int(v.version) for v in found))


def signature_of(name: str, version: str) -> ModelSignature:
    """A version's signature; a version without one cannot be checked against its clients (exit 2)."""
    with registry_errors(f"cannot read the model of {name} v{version}"):
        signature = mlflow.models.get_model_info(model_uri(name, version)).signature
    if signature is None or signature.inputs is None:
        raise TrackingError(f"{name} v{version} has no signature: log it with one before promoting it")
    return signature


def evaluation_data(client: MlflowClient, run_id: str, data_path: str | None,
                    policy: PromotionPolicy) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The challenger's held-out split, rebuilt from its run's specs (at most `eval_rows`, stratified)."""
    try:
        specs = mlflow.artifacts.load_dict(f"runs:/{run_id}/{SPEC_ARTIFACT}")
    except (MlflowException, OSError):
        raise TrackingError(f"run {run_id} has no {SPEC_ARTIFACT}: not a creditflow training run") from None
    exp = ExperimentSpec.model_validate(specs["experiment"])
    data = load_dataset(DatasetSpec.model_validate(specs["dataset"]), data_path)
    split = split_data(data, exp.test_size, exp.seed)
    X, y = split.X_test, split.y_test
    if len(X) > policy.eval_rows:
        X, _, y, _ = train_test_split(X, y, train_size=policy.eval_rows, stratify=y, random_state=policy.eval_seed)
    return X, y.to_numpy(), data.source


def probabilities(model: mlflow.pyfunc.PyFuncModel, X: pd.DataFrame) -> np.ndarray:
    return np.asarray(model.predict(X)["probability"], dtype="float64")


def _signature_gate_against(name: str, version: str, champion: str | None) -> Gate:
    new = signature_of(name, version)
    if not champion:
        return signature_gate(new, None)
    try:
        old = signature_of(name, champion)
    except TrackingError as exc:
        return Gate("c", "signature compatible", None, f"champion cannot be compared ({exc})")
    return signature_gate(new, old)


def evaluate(client: MlflowClient, name: str, version: str, alias: str, champion: str | None,
             policy: PromotionPolicy, data_path: str | None) -> Evaluation:
    """All four gates for `version` against the current `champion` (None: the first champion)."""
    loads, model = loads_gate(model_uri(name, version))
    signature = _signature_gate_against(name, version, champion)
    run_id = client.get_model_version(name, version).run_id
    X, y, source = evaluation_data(client, run_id, data_path, policy)
    if model is None:
        skipped = "not evaluated: the model does not load"
        gates = (Gate("a", "floors", False, skipped), Gate("b", "beats champion", False, skipped), signature, loads)
        return Evaluation(gates, champion, source, len(X))
    p_new = probabilities(model, X)
    p_old, versus = None, Gate("b", "beats champion", None, "no champion to beat")
    if champion:
        try:
            p_old = probabilities(mlflow.pyfunc.load_model(model_uri(name, champion)), X)
        except Exception as exc:  # a champion that no longer scores cannot be compared against
            versus = Gate("b", "beats champion", False, f"champion v{champion} does not score: {str(exc)[:200]}")
    if alias == "challenger":
        versus = Gate("b", "beats champion", None, "checked when a challenger is promoted to champion")
    elif p_old is not None:
        versus = versus_champion_gate(y, p_new, p_old, policy)
    return Evaluation((floors_gate(y, p_new, p_old, policy), versus, signature, loads), champion, source, len(X))


# ---------------------------------------------------------------- the lease (compare-and-set on a run param)


@dataclass(frozen=True)
class Lease:
    run_id: str
    name: str
    epoch: int
    token: str
    expires: float


def _safe(name: str) -> str:
    """A model name as a param key part (MLflow keys allow letters, digits, _ - . / and space)."""
    safe = re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)
    return safe if safe == name else f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _lease_key(name: str, epoch: int, kind: str = "lease") -> str:
    return f"{kind}.{_safe(name)}.{epoch:06d}"


def audit_experiment(client: MlflowClient) -> str:
    """The id of the `model-promotions` experiment, created on first use (racing creators agree)."""
    found = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(AUDIT_EXPERIMENT)
    except MlflowException:
        return client.get_experiment_by_name(AUDIT_EXPERIMENT).experiment_id


def _lease_run(client: MlflowClient, settle: float = 1.0) -> str:
    """The one run whose params hold every lease: the earliest such run (created once, then found)."""
    exp_id = audit_experiment(client)
    query = f"tags.`{TAG}kind` = 'lease'"
    runs = client.search_runs([exp_id], query, max_results=50)
    if not runs:
        created = client.create_run(exp_id, run_name="promotion-leases", tags={
            f"{TAG}kind": "lease",
            "mlflow.note.content": "Promotion leases: each promotion logs lease.<model>.<n> (a param cannot "
                                   "change, so exactly one of two racing promotions gets epoch n).",
        })
        client.set_terminated(created.info.run_id)
        time.sleep(settle)  # let a concurrent first creator's run become visible, then all pick the same
        runs = client.search_runs([exp_id], query, max_results=50)
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id


def _epoch(params: dict[str, str], name: str) -> int:
    prefix = f"lease.{_safe(name)}."
    return max((int(k[len(prefix):]) for k in params if k.startswith(prefix)), default=0)


def _holder_alive(holder: dict) -> bool:
    """A lease counts until it expires, or until its process is gone (same host only)."""
    if time.time() > float(holder.get("expires", 0)):
        return False
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, KeyError):
            return True
    return True


def acquire_lease(client: MlflowClient, name: str, policy: PromotionPolicy, purpose: str) -> Lease:
    """Take the model's promotion lease, or raise PromotionBusy: a compare-and-set on lease.<model>.<n+1>."""
    run_id = _lease_run(client)
    params = client.get_run(run_id).data.params
    epoch = _epoch(params, name)
    if epoch and _lease_key(name, epoch, "release") not in params:
        holder = json.loads(params[_lease_key(name, epoch)])
        if _holder_alive(holder):
            raise PromotionBusy(
                f"another promotion of '{name}' is in progress ({holder.get('purpose')}, pid {holder.get('pid')} "
                f"on {holder.get('host')} since {_when(holder.get('since', 0))}); nothing changed, try again later")
    token = uuid.uuid4().hex
    now = time.time()
    mine = json.dumps({"token": token, "host": socket.gethostname(), "pid": os.getpid(), "since": now,
                       "expires": now + policy.lease_seconds, "purpose": purpose})
    key = _lease_key(name, epoch + 1)
    failure: MlflowException | None = None
    try:
        client.log_param(run_id, key, mine)
    except MlflowException as exc:  # "changing param values is not allowed": someone else took this epoch
        failure = exc
    taken = client.get_run(run_id).data.params.get(key)
    if taken is None and failure is not None:
        raise TrackingError(f"could not take the promotion lease: {failure.message.splitlines()[0]}")
    if taken != mine:
        other = json.loads(taken or "{}")
        raise PromotionBusy(f"another promotion of '{name}' ({other.get('purpose')}, pid {other.get('pid')}) "
                            "started at the same moment and won the lease; nothing changed")
    return Lease(run_id, name, epoch + 1, token, now + policy.lease_seconds)


def lease_still_held(client: MlflowClient, lease: Lease) -> bool:
    """Nobody took a later epoch (possible only after our lease expired) and it has not expired."""
    params = client.get_run(lease.run_id).data.params
    return _lease_key(lease.name, lease.epoch + 1) not in params and time.time() < lease.expires


def release_lease(client: MlflowClient, lease: Lease) -> None:
    try:
        client.log_param(lease.run_id, _lease_key(lease.name, lease.epoch, "release"), lease.token)
    except MlflowException as exc:  # the lease then lapses when it expires or its process is gone
        print(f"warning: could not release the promotion lease: {exc.message.splitlines()[0]}", flush=True)


def lease_is_free(client: MlflowClient, name: str) -> bool:
    """No live promotion holds the model's lease (for tests and `registry history`)."""
    params = client.get_run(_lease_run(client)).data.params
    epoch = _epoch(params, name)
    return not epoch or _lease_key(name, epoch, "release") in params or \
        not _holder_alive(json.loads(params[_lease_key(name, epoch)]))


@contextmanager
def leased(client: MlflowClient, name: str, policy: PromotionPolicy, purpose: str, on_step: Step) -> Iterator[Lease]:
    on_step("acquiring")
    lease = acquire_lease(client, name, policy, purpose)
    try:
        on_step("lease")
        yield lease
    finally:
        release_lease(client, lease)
        on_step("released")


# ---------------------------------------------------------------- registry writes


def _stage(client: MlflowClient, name: str, version: str, stage: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # stages are deprecated; we keep them in step on purpose
        client.transition_model_version_stage(name, version, stage, archive_existing_versions=False)


def _versions(client: MlflowClient, name: str) -> dict[str, str]:
    """Version → current stage."""
    return {str(v.version): v.current_stage for v in client.search_model_versions(f"name = {_quoted(name)}")}


def reconcile(client: MlflowClient, name: str, on_step: Step = _no_step) -> list[str]:
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
    stages = _versions(client, name)
    for alias, stage in STAGE_OF.items():
        holder = aliases.get(alias)
        if holder and stages.get(holder) != stage:
            _stage(client, name, holder, stage)
            stages[holder] = stage
            changes.append(f"v{holder} -> {stage}")
            on_step(stage.lower())
        for version, current in stages.items():
            if current == stage and version != holder:
                _stage(client, name, version, "Archived")
                stages[version] = "Archived"
                changes.append(f"v{version} {stage} -> Archived")
                on_step("archived")
    return changes


def _when(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(float(epoch_seconds), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def open_audit(client: MlflowClient, req: PromotionRequest, version: str | None, decision: str, reason: str,
               evaluation: Evaluation | None, policy: PromotionPolicy, previous: str | None,
               lease: Lease | None) -> str:
    """An MLflow run in `model-promotions` recording one decision: request, policy, gate figures, reason."""
    tags = {f"{TAG}kind": "audit", f"{TAG}registered_model": req.name, f"{TAG}version": version or "",
            f"{TAG}alias": req.alias, f"{TAG}decision": decision, f"{TAG}reason": reason[:4000],
            f"{TAG}previous_champion": previous or "", f"{TAG}lease": lease.token if lease else "",
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
        params.update({"eval.source": evaluation.data_source, "eval.rows": evaluation.rows})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                     metrics=[Metric(k, float(v), int(time.time() * 1000), 0)
                              for k, v in (evaluation.figures() if evaluation else {}).items()])
    return run.info.run_id


def tag_decision(client: MlflowClient, name: str, version: str, decision: str, reason: str, audit: str) -> None:
    for key, value in (("last_decision", decision), ("last_decision_reason", reason[:4000]), ("last_audit_run", audit)):
        client.set_model_version_tag(name, version, f"{TAG}{key}", value)


def close_stale_audits(client: MlflowClient, name: str, lease: Lease) -> int:
    """Audit runs left RUNNING by a promotion that was killed: mark them KILLED (we hold the lease now)."""
    runs = client.search_runs([audit_experiment(client)],
                              f"tags.`{TAG}kind` = 'audit' and tags.`{TAG}registered_model` = {_quoted(name)} "
                              "and attributes.status = 'RUNNING'")
    stale = [r for r in runs if r.data.tags.get(f"{TAG}lease") != lease.token]
    for run in stale:
        client.set_tag(run.info.run_id, f"{TAG}interrupted", "true")
        client.set_terminated(run.info.run_id, "KILLED")
    return len(stale)


# ---------------------------------------------------------------- the promotion


def promote(req: PromotionRequest, policy: PromotionPolicy, on_step: Step = _no_step) -> Decision:
    """Carry out one promotion request; user mistakes raise CreditflowError, gate refusals return a Decision."""
    check_tracking_server()
    client = MlflowClient()
    with registry_errors(f"registry request for '{req.name}' failed"):
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
    evaluation = evaluate(client, req.name, version, req.alias, champion, policy, req.data)
    ok = not evaluation.failed or (req.force and _loads(evaluation))
    reason = _gate_summary(evaluation) + " (dry run: nothing changed)"
    return Decision("would_promote" if ok else "would_refuse", req.name, version, req.alias, reason,
                    champion, evaluation.gates)


def _loads(evaluation: Evaluation) -> bool:
    return next(g for g in evaluation.gates if g.key == "d").passed is True


def _gate_summary(evaluation: Evaluation) -> str:
    failed = evaluation.failed
    if not failed:
        return "gates " + ", ".join(f"({g.key})" for g in evaluation.gates if g.passed) + " passed"
    return "failed " + "; ".join(f"gate ({g.key}) {g.title}: {g.detail}" for g in failed)


def _promote_leased(client: MlflowClient, req: PromotionRequest, version: str, policy: PromotionPolicy,
                    lease: Lease, on_step: Step) -> Decision:
    killed = close_stale_audits(client, req.name, lease)
    repairs = reconcile(client, req.name, on_step)
    aliases = require_model(client, req.name)
    champion = aliases.get("champion")
    if aliases.get(req.alias) == version:
        return _already(client, req, version, policy, lease, repairs, killed)
    if req.alias == "challenger" and champion == version:
        raise TrackingError(f"{req.name} v{version} is the champion; it cannot also be the challenger")
    evaluation = evaluate(client, req.name, version, req.alias, champion, policy, req.data)
    if evaluation.failed and not (req.force and _loads(evaluation)):
        reason = _gate_summary(evaluation) + (" (--force cannot override gate (d))" if req.force else "")
        audit = open_audit(client, req, version, "refused", reason, evaluation, policy, champion, lease)
        tag_decision(client, req.name, version, "refused", reason, audit)
        client.set_terminated(audit)
        return Decision("refused", req.name, version, req.alias, reason, champion, evaluation.gates, audit)
    outcome = "forced" if evaluation.failed else "promoted"
    reason = _gate_summary(evaluation) + (f"; forced: {req.reason}" if evaluation.failed else "")
    if req.reason and not evaluation.failed:
        reason += f"; {req.reason}"
    audit = open_audit(client, req, version, outcome, reason, evaluation, policy, champion, lease)
    on_step("evaluated")
    gates = "forced" if evaluation.failed else "passed"
    tags = {f"{req.alias}_gates": gates, f"{req.alias}_audit_run": audit}
    if req.alias == "champion" and champion:
        tags["previous_champion"] = champion
    _commit(client, req.name, version, req.alias, tags, lease, on_step)
    tag_decision(client, req.name, version, outcome, reason, audit)
    client.set_terminated(audit)
    on_step("audited")
    return Decision(outcome, req.name, version, req.alias, reason, champion, evaluation.gates, audit)


def _commit(client: MlflowClient, name: str, version: str, alias: str, tags: dict[str, str], lease: Lease,
            on_step: Step) -> None:
    """Tag, re-check the lease, move the alias (the commit point), then bring the stages in step."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, f"{TAG}{key}", value)
    on_step("tagged")
    if not lease_still_held(client, lease):
        raise TrackingError(f"the promotion lease of '{name}' expired before the alias moved; nothing was promoted "
                            "(raise lease_seconds in the promotion policy)")
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
    audit = open_audit(client, req, version, "repaired", reason, None, policy, None, lease)
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
    loads, _ = loads_gate(model_uri(req.name, previous))
    if req.dry_run:
        outcome = "would_promote" if loads.passed else "would_refuse"
        reason = f"rollback from v{champion} (dry run: nothing changed)"
        return Decision(outcome, req.name, previous, "champion", reason, champion, (loads,))
    evaluation = Evaluation((loads,), champion, "", 0)
    try:
        with leased(client, req.name, policy, f"rollback to {previous}", on_step) as lease:
            close_stale_audits(client, req.name, lease)
            if require_model(client, req.name).get("champion") != champion:
                raise PromotionBusy(f"@champion of '{req.name}' moved while the rollback started; nothing changed")
            if not loads.passed:
                reason = f"cannot roll back to v{previous}: {loads.detail}"
                audit = open_audit(client, req, previous, "refused", reason, evaluation, policy, champion, lease)
                client.set_terminated(audit)
                return Decision("refused", req.name, previous, "champion", reason, champion, (loads,), audit)
            reason = f"rolled back from v{champion} to v{previous}" + (f"; {req.reason}" if req.reason else "")
            audit = open_audit(client, req, previous, "rolled_back", reason, evaluation, policy, champion, lease)
            on_step("evaluated")
            _commit(client, req.name, previous, "champion", {"champion_audit_run": audit}, lease, on_step)
            tag_decision(client, req.name, previous, "rolled_back", reason, audit)
            tag_decision(client, req.name, champion, "rolled_back_from", reason, audit)
            client.set_terminated(audit)
            on_step("audited")
    except PromotionBusy as busy:
        return Decision("refused", req.name, previous, "champion", str(busy))
    return Decision("rolled_back", req.name, previous, "champion", reason, champion, (loads,), audit)


# ---------------------------------------------------------------- history and command-line handlers


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
        [found.experiment_id], f"tags.`{TAG}kind` = 'audit' and tags.`{TAG}registered_model` = {_quoted(name)}",
        order_by=["attributes.start_time ASC"], max_results=5000)
    moved = ("promoted", "forced", "rolled_back", "repaired")
    rows = []
    for run in runs:
        t = run.data.tags
        if not everything and not (t.get(f"{TAG}alias") == "champion" and t.get(f"{TAG}decision") in moved):
            continue
        rows.append(HistoryRow(_when(run.info.start_time / 1000), t.get(f"{TAG}decision", ""),
                               t.get(f"{TAG}version", ""), t.get(f"{TAG}alias", ""),
                               t.get(f"{TAG}previous_champion", "") or "-", t.get("mlflow.user", ""),
                               run.info.status, t.get(f"{TAG}reason", "")))
    return rows


def format_history(name: str, rows: list[HistoryRow]) -> str:
    client = MlflowClient()
    aliases = require_model(client, name)
    stages = _versions(client, name)
    lines = [f"champion history of '{name}' (oldest first)",
             f"{'when':<24} {'decision':<12} {'version':>7} {'alias':<10} {'previous':>8}  {'user':<10} reason"]
    for r in rows:
        note = "" if r.status == "FINISHED" else f" [{r.status.lower()}: interrupted]"
        lines.append(f"{r.when:<24} {r.decision:<12} {r.version:>7} {r.alias:<10} {r.previous:>8}  {r.user:<10} "
                     f"{r.reason[:100]}{note}")
    now = ", ".join(f"@{a} = v{v} ({stages.get(v, '?')})" for a, v in sorted(aliases.items())) or "no aliases"
    lines.append(f"now: {now}; stages {'in step with' if in_step(client, name) else 'NOT in step with'} aliases")
    return "\n".join(lines)


def promote_command(args: argparse.Namespace, on_step: Step = _no_step) -> int:
    """`creditflow promote` / `scripts/promote_model.py`: print the decision, return its exit code."""
    from creditflow.tracking import detach_project_run

    req = request_from_args(args)
    policy = load_policy(args.policy)
    detach_project_run()
    decision = promote(req, policy, on_step)
    print(decision.report(), flush=True)
    return decision.exit_code


def history_command(args: argparse.Namespace) -> int:
    check_tracking_server()
    with registry_errors(f"cannot read the history of '{args.name}'"):
        print(format_history(args.name, history(args.name, args.all)))
    return 0


def promote_best(name: str, versions: list[str], policy: PromotionPolicy, data_path: str | None) -> Decision:
    """The `main` pipeline's last step: the best version (first) to @champion through the gates.

    When the gates refuse it, the next best is tried; every decision is printed and audited, none raised.
    """
    for version in versions:
        decision = promote(PromotionRequest(name=name, version=version, data=data_path), policy)
        print(decision.report(), flush=True)
        if decision.exit_code == 0:
            return decision
    print(f"no new version of '{name}' passed the gates; @champion unchanged", flush=True)
    return decision


def in_step(client: MlflowClient, name: str) -> bool:
    """Aliases and stages agree: exactly the champion in Production, exactly the challenger (or none) in Staging."""
    aliases = require_model(client, name)
    stages = _versions(client, name)
    production = [v for v, s in stages.items() if s == "Production"]
    staging = [v for v, s in stages.items() if s == "Staging"]
    champion, challenger = aliases.get("champion"), aliases.get("challenger")
    return production == ([champion] if champion else []) and staging == ([challenger] if challenger else [])

