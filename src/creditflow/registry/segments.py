"""A segmented experiment's registry decisions: the global model through the usual gates, then each segment's model
against the global champion on its segment's held-out rows.

Naming: the global model is `credit-default` (the spec's `register_as`); segment S's model is `credit-default-S`
(`specs.segment_model_name`), tagged `segment`, `segment_column` and `global_model`. Each goes through
`registry.promote.promote`, so every decision has its gates, its audit run and its rollback; a segment model whose
only failed gate is (b) is `kept_global` (the segment goes on being served by the global champion).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from creditflow.errors import CreditflowError
from creditflow.registry.policy import PromotionPolicy, PromotionRequest
from creditflow.registry.promote import Decision, promote
from creditflow.specs import segment_model_name
from creditflow.train.segments import SegmentedTraining, SegmentResult

logger = logging.getLogger(__name__)
GLOBAL = "(global)"  # the global model's row in the table


@dataclass(frozen=True)
class SegmentDecision:
    """One row of the table: a segment (None: the global model), its rows, both AUCs on its held-out rows, the
    decision (promoted / kept global / refused) and why."""

    segment: str | None
    rows: int
    model: str  # "name/version" registered, or ""
    auc_segment: float | None  # the new model on the segment's held-out rows (gate (a))
    auc_global: float | None  # the global champion on the same rows (gate (b))
    decision: str
    reason: str

    def line(self) -> str:
        return (f"{self.segment or GLOBAL:<9} {self.rows:>8,}  {_auc(self.auc_segment):>8}  {_auc(self.auc_global):>8}"
                f"  {self.decision:<12} {self.reason}")


def _auc(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


HEADER = f"{'segment':<9} {'rows':>8}  {'auc_seg':>8}  {'auc_glob':>8}  {'decision':<12} reason"


def table(decisions: list[SegmentDecision]) -> str:
    """The command's one table: segment, rows, AUC of its model and of the global champion, decision, reason."""
    return "\n".join([HEADER] + [d.line() for d in decisions])


def _reason(decision: Decision) -> str:
    """Why, in a line: the margin missed for `kept_global`, the failed gates for a refusal, the gates for the rest."""
    if decision.outcome == "kept_global":
        return (f"gain {decision.figure('b.auc_gain'):+.4f} (CI low {decision.figure('b.auc_gain_ci_low'):+.4f}) "
                "below the policy's margin over the global champion")
    failed = [g for g in decision.gates if g.passed is False]
    if failed:
        return "; ".join(f"gate ({g.key}) {g.title}: {g.detail}" for g in failed)[:300]
    return decision.reason[:300]


def _decided(result: SegmentResult, name: str, policy: PromotionPolicy, data_path: str | None) -> SegmentDecision:
    outcome = result.outcome
    if outcome is None or not outcome.registered_version:
        kept = "kept global" if result.skipped.startswith("too few rows") else "refused"
        return SegmentDecision(result.segment, result.rows, "", None, None, kept, result.skipped or "not registered")
    model = f"{name}/{outcome.registered_version}"
    try:
        decision = promote(PromotionRequest(name=name, version=outcome.registered_version, data=data_path), policy)
    except CreditflowError as exc:  # one segment's registry trouble is its row, not the end of the others
        return SegmentDecision(result.segment, result.rows, model, outcome.test["test_roc_auc"], None, "refused",
                               str(exc))
    logger.debug("%s", decision.report())
    text = {"promoted": "promoted", "unchanged": "promoted", "kept_global": "kept global"}.get(decision.outcome,
                                                                                              decision.outcome)
    return SegmentDecision(result.segment, result.rows, model, decision.figure("a.roc_auc"),
                           decision.figure("b.champion_roc_auc"), text.replace("_", " "), _reason(decision))


def decide_segments(training: SegmentedTraining, global_name: str, policy: PromotionPolicy,
                    data_path: str | None = None) -> list[SegmentDecision]:
    """The global model to @champion through the gates, then each segment's model against the global champion."""
    decisions = [_decided(training.global_result, global_name, policy, data_path)]
    logger.info("global model %s: %s (%s)", decisions[0].model, decisions[0].decision, decisions[0].reason)
    for result in training.results[1:]:
        decisions.append(_decided(result, segment_model_name(global_name, str(result.segment)), policy, data_path))
        logger.info("segment %s: %s", result.segment, decisions[-1].decision)
    return decisions
