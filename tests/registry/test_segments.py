"""The registry half of a segmented experiment: the global model through the usual gates, each segment's model
against the global champion on that segment's held-out rows; audited; rolled back per segment."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from creditflow.cli import main
from creditflow.registry.audit import AUDIT_EXPERIMENT
from creditflow.registry.policy import PromotionRequest, load_policy
from creditflow.registry.promote import promote
from creditflow.registry.segments import table
from creditflow.train.held_out import held_out
from tests.conftest import EXPERIMENTS, SegmentedStore, copy_store

POLICY = load_policy(EXPERIMENTS / "promotion.yaml")  # what `creditflow segments` decided with


@pytest.fixture
def decided(segmented_store: SegmentedStore, monkeypatch: pytest.MonkeyPatch) -> SegmentedStore:
    """The session's segmented store (decided by `creditflow segments`), this test pointed at it (read-only)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", segmented_store.uri)
    mlflow.set_tracking_uri(segmented_store.uri)
    return segmented_store


def _aliases(name: str) -> dict[str, str]:
    return {k: str(v) for k, v in mlflow.MlflowClient().get_registered_model(name).aliases.items()}


def _p(uri: str, X) -> np.ndarray:
    return np.asarray(mlflow.pyfunc.load_model(uri).predict(X)["probability"], dtype=float)


def test_each_segment_is_decided_against_the_global_champion_on_its_held_out_rows(decided: SegmentedStore) -> None:
    store, decisions = decided, decided.decisions
    client = mlflow.MlflowClient()
    assert decisions[0].segment is None and decisions[0].decision == "promoted"
    assert _aliases("credit-default") == {"champion": decisions[0].model.split("/")[1]}
    for d, result in zip(decisions[1:4], store.training.results[1:4], strict=True):
        rows = held_out(result.outcome.run_id, str(store.csv)).split
        assert d.auc_segment == pytest.approx(roc_auc_score(rows.y_test, _p(result.outcome.model_uri, rows.X_test)))
        assert d.auc_global == pytest.approx(roc_auc_score(rows.y_test, _p("models:/credit-default@champion",
                                                                           rows.X_test)))
        aliases = _aliases(f"credit-default-{d.segment}")
        assert d.decision in ("promoted", "kept global", "refused")
        assert (aliases == {"champion": result.outcome.registered_version}) == (d.decision == "promoted")
        if d.decision == "kept global":  # only the margin over the global champion was missed
            assert d.auc_segment - d.auc_global < POLICY.min_auc_gain or "CI low" in d.reason
        audit = client.search_runs([client.get_experiment_by_name(AUDIT_EXPERIMENT).experiment_id],
                                   f"tags.`creditflow.registered_model` = 'credit-default-{d.segment}'")
        assert [r.data.tags["creditflow.decision"] for r in audit] == [d.decision.replace(" ", "_")]


def test_the_table_names_every_segment_and_the_too_small_one_keeps_the_global_model(
        segmented_store: SegmentedStore) -> None:
    decisions = segmented_store.decisions
    thin = decisions[-1]
    assert (thin.segment, thin.decision, thin.model, thin.auc_segment) == ("R04", "kept global", "", None)
    lines = table(decisions).splitlines()
    assert lines[0].split() == ["segment", "rows", "auc_seg", "auc_glob", "decision", "reason"]
    assert [line.split()[0] for line in lines[1:]] == ["(global)", "R01", "R02", "R03", "R04"]
    assert "too few rows" in lines[-1] and f"{thin.rows:,}" in lines[-1]


def test_a_segment_model_is_rolled_back_on_its_own(segmented_store: SegmentedStore, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`creditflow promote --name credit-default-R01 --rollback true` restores that segment's previous champion."""
    store, uri = segmented_store, copy_store(segmented_store.root, tmp_path / "own")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    name, first = "credit-default-R01", store.training.results[1].outcome
    again = mlflow.register_model(first.model_uri, name).version  # a second version of the segment's model
    for version in (first.registered_version, str(again)):
        promote(PromotionRequest(name=name, version=version, force=True, reason="test"), POLICY)
    assert _aliases(name)["champion"] == str(again)
    assert main(["promote", "--name", name, "--rollback", "true", "--policy", str(EXPERIMENTS / "promotion.yaml")]) == 0
    assert _aliases(name)["champion"] == first.registered_version
    assert _aliases("credit-default")["champion"] == "1"  # the global one untouched
    assert "rolled back" in capsys.readouterr().out
