"""Shadow evidence: how a challenger scored beside the champion on live traffic, kept as MLflow runs.

A serving worker that runs a shadow model (`creditflow serve --shadow URI`) keeps one run per
(champion version, shadow version) pair in the `model-promotions` experiment, tagged with both, and
logs its running totals there every window (`log_shadow_totals`). `shadow_evidence` adds the runs of
every worker up for one candidate version: what `creditflow promote` prints and its optional gate (e),
`shadow_gate`, reads. Serving writes and the registry reads through this one module, so the names are written once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import Metric

from creditflow.registry.audit import AUDIT_EXPERIMENT, TAG, audit_experiment
from creditflow.registry.client import quoted
from creditflow.registry.gates import Gate
from creditflow.registry.policy import PromotionPolicy

KIND = "shadow"
SHADOW_TAG = f"{TAG}shadow.model_version"  # "name/version" of the shadow model: what the evidence is about
CHAMPION_TAG = f"{TAG}shadow.champion"  # "name/version" of the champion it was compared with
COUNTS = ("requests", "rows", "flips", "top_reason_diffs", "dropped")  # summed over runs
PREFIX = "shadow."
TITLE = "shadow on live traffic"


@dataclass(frozen=True)
class ShadowTotals:
    """Running totals of one comparison: champion and shadow answers to the same rows."""

    requests: int = 0
    rows: int = 0
    flips: int = 0  # approve <-> decline
    top_reason_diffs: int = 0  # rows whose first reason code differs
    abs_delta_sum: float = 0.0  # sum of |P(default) shadow - champion|
    p99_abs_delta: float = 0.0
    dropped: int = 0  # requests not compared: the shadow queue was full

    @property
    def flip_rate(self) -> float:
        return self.flips / self.rows if self.rows else 0.0

    @property
    def mean_abs_delta(self) -> float:
        return self.abs_delta_sum / self.rows if self.rows else 0.0

    @property
    def top_reason_diff_rate(self) -> float:
        return self.top_reason_diffs / self.rows if self.rows else 0.0

    def figures(self) -> dict[str, float]:
        """The metrics of a shadow run (without prefix)."""
        return {"requests": self.requests, "rows": self.rows, "flips": self.flips,
                "top_reason_diffs": self.top_reason_diffs, "abs_delta_sum": self.abs_delta_sum,
                "p99_abs_delta": self.p99_abs_delta, "dropped": self.dropped, "flip_rate": self.flip_rate,
                "mean_abs_delta": self.mean_abs_delta, "top_reason_diff_rate": self.top_reason_diff_rate}


@dataclass(frozen=True)
class ShadowEvidence:
    """A candidate's shadow totals over every run (worker and champion) that compared it."""

    model_version: str
    champions: tuple[str, ...]
    runs: int
    totals: ShadowTotals

    def line(self) -> str:
        t = self.totals
        return (f"shadow evidence for {self.model_version} (vs {', '.join(self.champions)}; {self.runs} run(s)): "
                f"{t.rows:,} rows in {t.requests:,} requests, decision flips {t.flip_rate:.2%}, "
                f"mean |dP| {t.mean_abs_delta:.4f}, p99 |dP| {t.p99_abs_delta:.4f}, "
                f"top reason differs {t.top_reason_diff_rate:.2%}, {t.dropped:,} requests dropped")


def open_shadow_run(client: MlflowClient, champion: str, shadow: str) -> str:
    """A new run in `model-promotions` for one worker comparing `shadow` with `champion` ("name/version")."""
    tags = {f"{TAG}kind": KIND, SHADOW_TAG: shadow, CHAMPION_TAG: champion, f"{TAG}shadow.worker": str(os.getpid())}
    run = client.create_run(audit_experiment(client), run_name=f"shadow {shadow} vs {champion}", tags=tags)
    return run.info.run_id


def log_shadow_totals(client: MlflowClient, run_id: str, window: ShadowTotals, total: ShadowTotals,
                      step: int) -> None:
    """One window's figures (`shadow.window.*`) and the running totals (`shadow.*`) at step `step`."""
    now = int(time.time() * 1000)
    metrics = [Metric(f"{PREFIX}window.{k}", float(v), now, step) for k, v in window.figures().items()]
    metrics += [Metric(f"{PREFIX}{k}", float(v), now, step) for k, v in total.figures().items()]
    client.log_batch(run_id, metrics=metrics)


def shadow_evidence(client: MlflowClient, model_version: str) -> ShadowEvidence | None:
    """The summed shadow totals of `model_version` ("name/version"), or None when it never ran in shadow.

    Counts add up over runs; the p99 of |dP| is the largest of the runs' (a bound, not a pooled quantile).
    """
    found = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], f"tags.{quoted_key(SHADOW_TAG)} = {quoted(model_version)}",
                              max_results=1000)
    runs = [r for r in runs if f"{PREFIX}rows" in r.data.metrics]
    if not runs:
        return None
    sums = {k: sum(int(r.data.metrics.get(f"{PREFIX}{k}", 0)) for r in runs) for k in COUNTS}
    totals = ShadowTotals(**sums, abs_delta_sum=sum(r.data.metrics.get(f"{PREFIX}abs_delta_sum", 0.0) for r in runs),
                          p99_abs_delta=max(r.data.metrics.get(f"{PREFIX}p99_abs_delta", 0.0) for r in runs))
    champions = tuple(sorted({r.data.tags.get(CHAMPION_TAG, "") for r in runs}))
    return ShadowEvidence(model_version, champions, len(runs), totals)


def quoted_key(key: str) -> str:
    """A tag key for an MLflow search filter (backticks: the key holds dots)."""
    return f"`{key}`"


def shadow_gate(evidence: ShadowEvidence | None, policy: PromotionPolicy, alias: str, champion: str | None) -> Gate:
    """(e) the candidate agreed with the champion on live traffic, when the policy asks for shadow evidence."""
    figures = _gate_figures(evidence)
    min_rows, max_flips = policy.shadow_min_rows, policy.shadow_max_flip_rate
    if not min_rows and max_flips is None:
        return Gate("e", TITLE, None, "not required by the policy", figures)
    if alias == "challenger":
        return Gate("e", TITLE, None, "a challenger goes into shadow: checked when it is promoted to champion", figures)
    if not champion:
        return Gate("e", TITLE, None, "no champion to have been compared with", figures)
    if evidence is None or not evidence.totals.rows:  # a flip rate over no rows is no evidence
        return Gate("e", TITLE, False, "no shadow evidence: run the candidate with `creditflow serve --shadow` first")
    rows, flips = evidence.totals.rows, evidence.totals.flip_rate
    enough, calm = rows >= min_rows, max_flips is None or flips <= max_flips
    detail = f"{rows:,} rows compared" + (f" ({'>=' if enough else '<'} {min_rows:,} required)" if min_rows else "")
    detail += f", flips {flips:.2%}" + (f" {'<=' if calm else '>'} {max_flips:.2%}" if max_flips is not None else "")
    return Gate("e", TITLE, enough and calm, detail, figures)


def _gate_figures(evidence: ShadowEvidence | None) -> dict[str, float]:
    """What the audit run records of the evidence, whatever the verdict."""
    if evidence is None:
        return {}
    t = evidence.totals
    return {"rows": float(t.rows), "flip_rate": t.flip_rate, "mean_abs_delta": t.mean_abs_delta,
            "p99_abs_delta": t.p99_abs_delta, "runs": float(evidence.runs)}
