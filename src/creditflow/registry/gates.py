"""The five offline promotion gates, each a verdict with the figures it was decided on.

(a) floors (ROC AUC, calibration, KS drop), (b) beats the champion by a paired bootstrap interval,
(c) signature compatible with the champion's clients, (d) loads from the registry and predicts,
(f) monotone in the columns its dataset spec declares (`model.monotone`), on that same loaded model.
Gate (e), the shadow evidence from live traffic, is `registry.evidence.shadow_gate`.
Both models are loaded from the registry and scored on the same rows: the challenger's held-out split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from creditflow.data.dataset import load_dataset
from creditflow.errors import TrackingError, first_line
from creditflow.model.monotone import ColumnCheck, monotone_violations
from creditflow.registry.client import mlflow_errors, version_uri
from creditflow.registry.policy import PromotionPolicy
from creditflow.specs import DatasetSpec, spec_from_config
from creditflow.train.held_out import held_out, run_specs
from creditflow.train.metrics import calibration_error, ks_statistic, paired_bootstrap_auc


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
    if diff < policy.min_auc_gain:
        same = " (it scores every row as the champion does)" if np.array_equal(p_new, p_old) else ""
        detail = f"not better than the champion by the margin {policy.min_auc_gain:+.4f}{same}: {detail}"
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
        return Gate("d", "loads and predicts", False, f"{uri}: {type(exc).__name__}: {first_line(exc)[:300]}"), None
    ok = len(proba) == len(example) and bool(np.all(np.isfinite(proba) & (proba >= 0) & (proba <= 1)))
    detail = f"{len(proba)} example rows scored, probability in [0, 1]" if ok else "predictions are not probabilities"
    return Gate("d", "loads and predicts", ok, detail, {"example_rows": float(len(proba))}), model


MONOTONE = "monotone"  # gate (f)'s title


def _against(check: ColumnCheck) -> str:
    """One column's failure: how many applicants, and the worst move with its row and values."""
    w = check.worst
    return (f"{check.column} ({check.direction}): P(default) moves against it for {check.violations} of "
            f"{check.applicants} applicants; worst: row {w.row}, {w.before:g} -> {w.after:g} moves it by {w.size:+.4g}")


def monotone_gate(p_default: Callable[[pd.DataFrame], np.ndarray], X: pd.DataFrame, spec: DatasetSpec | None,
                  policy: PromotionPolicy) -> Gate:
    """(f) P(default) never moves against a declared direction as each declared column alone is varied."""
    if spec is None or not spec.monotone_columns():
        return Gate("f", MONOTONE, None, "the dataset spec declares no monotone column")
    rows = X.sample(n=min(policy.monotone_rows, len(X)), random_state=policy.eval_seed)
    checks = monotone_violations(p_default, rows, spec, policy.monotone_grid, policy.monotone_tolerance)
    figures = {f"violations.{c.column}": float(c.violations) for c in checks}
    figures["worst_move"] = max((abs(c.worst.size) for c in checks if c.worst), default=0.0)
    failed = [_against(c) for c in checks if c.violations]
    values = max((len(c.grid) for c in checks), default=0)
    detail = "; ".join(failed) if failed else (
        f"{len(checks)} declared column(s), each varied over up to {values} values for {len(rows)} applicants: "
        "P(default) never moves against the declared direction")
    return Gate("f", MONOTONE, not failed, detail, figures)


def signature_of(name: str, version: str) -> ModelSignature:
    """A version's signature; a version without one cannot be checked against its clients (exit 2)."""
    with mlflow_errors(f"cannot read the model of {name} v{version}"):
        signature = mlflow.models.get_model_info(version_uri(name, version)).signature
    if signature is None or signature.inputs is None:
        raise TrackingError(f"{name} v{version} has no signature: log it with one before promoting it")
    return signature


def evaluation_data(run_id: str, data_path: str | None, policy: PromotionPolicy,
                    all_rows: bool = False) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The challenger's held-out split, rebuilt from its run's specs, or with `all_rows` every row of `data_path`
    (data neither model trained on); at most `eval_rows`, stratified."""
    if all_rows:
        data = load_dataset(run_specs(run_id)[1], data_path)
        X, y, source = data.X, data.y, data.source
    else:
        rows = held_out(run_id, data_path)
        X, y, source = rows.split.X_test, rows.split.y_test, rows.source
    if len(X) > policy.eval_rows:
        X, _, y, _ = train_test_split(X, y, train_size=policy.eval_rows, stratify=y, random_state=policy.eval_seed)
    return X, y.to_numpy(), source


def probabilities(model: mlflow.pyfunc.PyFuncModel, X: pd.DataFrame) -> np.ndarray:
    return np.asarray(model.predict(X)["probability"], dtype="float64")


def served_probability(model: mlflow.pyfunc.PyFuncModel) -> Callable[[pd.DataFrame], np.ndarray]:
    """The artifact's own P(default) without reason codes where it has that path (a creditflow model), else predict."""
    try:
        scoring = getattr(model.unwrap_python_model(), "scoring", None)
    except MlflowException:  # not a PythonModel at all
        scoring = None
    return scoring.probability if scoring is not None else partial(probabilities, model)


def declared_spec(model: mlflow.pyfunc.PyFuncModel) -> DatasetSpec | None:
    """The dataset spec the artifact carries (its monotone declarations); None for a model without one."""
    config = model.model_config or {}
    return spec_from_config(config) if "dataset_spec" in config else None


def _signature_gate_against(name: str, version: str, champion: str | None, champion_name: str) -> Gate:
    new = signature_of(name, version)
    if not champion:
        return signature_gate(new, None)
    try:
        old = signature_of(champion_name, champion)
    except TrackingError as exc:
        return Gate("c", "signature compatible", None, f"champion cannot be compared ({exc})")
    return signature_gate(new, old)


def evaluate(client: MlflowClient, name: str, version: str, alias: str, champion: str | None,
             policy: PromotionPolicy, data_path: str | None, champion_name: str | None = None,
             all_rows: bool = False) -> Evaluation:
    """Gates (a)-(d) and (f) for `version` against the current `champion` (None: the first champion).

    The champion is a version of `champion_name` (default: the same registered model; a segment model's is the
    global model's champion, scored on the segment's held-out rows). `all_rows`: every row of `data_path`.
    """
    champion_name = champion_name or name
    loads, model = loads_gate(version_uri(name, version))
    signature = _signature_gate_against(name, version, champion, champion_name)
    run_id = client.get_model_version(name, version).run_id
    X, y, source = evaluation_data(run_id, data_path, policy, all_rows)
    if model is None:
        skipped = "not evaluated: the model does not load"
        gates = (Gate("a", "floors", False, skipped), Gate("b", "beats champion", False, skipped), signature, loads,
                 Gate("f", MONOTONE, False, skipped))
        return Evaluation(gates, champion, source, len(X))
    p_new = probabilities(model, X)
    p_old, versus = None, Gate("b", "beats champion", None, "no champion to beat")
    if champion:
        try:
            p_old = probabilities(mlflow.pyfunc.load_model(version_uri(champion_name, champion)), X)
        except Exception as exc:  # a champion that no longer scores cannot be compared against
            versus = Gate("b", "beats champion", False,
                          f"champion {champion_name} v{champion} does not score: {str(exc)[:200]}")
    if alias == "challenger":
        versus = Gate("b", "beats champion", None, "checked when a challenger is promoted to champion")
    elif p_old is not None:
        versus = versus_champion_gate(y, p_new, p_old, policy)
    monotone = monotone_gate(served_probability(model), X, declared_spec(model), policy)
    gates = (floors_gate(y, p_new, p_old, policy), versus, signature, loads, monotone)
    return Evaluation(gates, champion, source, len(X))


