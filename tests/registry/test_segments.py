"""The registry half of a segmented experiment: the global model through the usual gates, each segment's model
against the global champion on that segment's held-out rows; audited; rolled back per segment."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from creditflow.cli import main
from creditflow.registry.audit import AUDIT_EXPERIMENT
from creditflow.registry.policy import PromotionPolicy, PromotionRequest
from creditflow.registry.promote import promote
from creditflow.registry.segments import SegmentDecision, decide_segments, table
from creditflow.train.held_out import held_out
from tests.conftest import EXPERIMENTS, SegmentedStore, copy_store, tracking_at

POLICY = PromotionPolicy(bootstrap_samples=100, monotone_rows=20)


@dataclass(frozen=True)
class Decided:
    store: SegmentedStore
    root: Path  # the decided copy of the segmented store
    uri: str
    decisions: list[SegmentDecision]


@pytest.fixture(scope="module")
def decided(segmented_store: SegmentedStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Decided]:
    """A copy of the segmented store, its models decided (read-only: a test that changes it copies it again);
    held-out rows rebuilt from the store's data, the test pointed at the copy."""
    root = tmp_path_factory.mktemp("decided") / "store"
    uri = copy_store(segmented_store.root, root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("creditflow.train.held_out.load_dataset", lambda ds, path=None: segmented_store.data)
        with tracking_at(uri, cwd=root):
            decisions = decide_segments(segmented_store.training, "credit-default", POLICY)
        yield Decided(segmented_store, root, uri, decisions)


@pytest.fixture
def at_decided(decided: Decided, monkeypatch: pytest.MonkeyPatch) -> Decided:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", decided.uri)
    mlflow.set_tracking_uri(decided.uri)
    return decided


def _aliases(name: str) -> dict[str, str]:
    return {k: str(v) for k, v in mlflow.MlflowClient().get_registered_model(name).aliases.items()}


def _p(uri: str, X) -> np.ndarray:
    return np.asarray(mlflow.pyfunc.load_model(uri).predict(X)["probability"], dtype=float)


def test_each_segment_is_decided_against_the_global_champion_on_its_held_out_rows(at_decided: Decided) -> None:
    store, decisions = at_decided.store, at_decided.decisions
    client = mlflow.MlflowClient()
    assert decisions[0].segment is None and decisions[0].decision == "promoted"
    assert _aliases("credit-default") == {"champion": decisions[0].model.split("/")[1]}
    for d, result in zip(decisions[1:4], store.training.results[1:4], strict=True):
        rows = held_out(result.outcome.run_id).split
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


def test_the_table_names_every_segment_and_the_too_small_one_keeps_the_global_model(decided: Decided) -> None:
    decisions = decided.decisions
    thin = decisions[-1]
    assert (thin.segment, thin.decision, thin.model, thin.auc_segment) == ("R04", "kept global", "", None)
    lines = table(decisions).splitlines()
    assert lines[0].split() == ["segment", "rows", "auc_seg", "auc_glob", "decision", "reason"]
    assert [line.split()[0] for line in lines[1:]] == ["(global)", "R01", "R02", "R03", "R04"]
    assert "too few rows" in lines[-1] and f"{thin.rows:,}" in lines[-1]


def test_a_segment_model_is_rolled_back_on_its_own(decided: Decided, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`creditflow promote --name credit-default-R01 --rollback true` restores that segment's previous champion."""
    store, uri = decided.store, copy_store(decided.root, tmp_path / "own")
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
