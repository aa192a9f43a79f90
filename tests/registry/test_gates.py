"""The promotion gates' arithmetic: floors, the paired comparison with the champion, the signature check."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from creditflow.registry.gates import floors_gate, signature_gate, versus_champion_gate
from creditflow.registry.policy import PromotionPolicy

POLICY = PromotionPolicy()


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
    same = versus_champion_gate(y, good, good, policy)  # an exact copy of the champion: gain 0, interval [0, 0]
    assert same.figures["auc_gain"] == 0 and same.figures["auc_gain_ci_low"] == 0 and same.passed is False
    assert same.detail.startswith("not better than the champion by the margin +0.0050 (it scores every row as")
    assert versus_champion_gate(y, good, good, policy.model_copy(update={"min_auc_gain": 0.0})).passed is True
    nearly = versus_champion_gate(y, np.clip(good + 1e-3 * weak, 0, 1), good, policy)  # other scores, same quality
    assert abs(nearly.figures["auc_gain"]) < 0.005 and nearly.passed is False
    assert nearly.detail.startswith("not better than the champion by the margin +0.0050: auc_gain=")


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
