"""A segmented experiment's training: one parent run, a nested run for the global model and for each segment with
enough rows, each with its metrics, bounded explanations, model and signature, registered under the contract's names."""

from __future__ import annotations

import mlflow
import pytest

from creditflow.data.dataset import split_data
from creditflow.errors import SpecError
from creditflow.specs import load_experiment_spec
from creditflow.train.held_out import held_out
from creditflow.train.segments import segment_column, segmented_dataset, train_segments
from tests.conftest import EXPERIMENTS, SegmentedStore, segmented_experiment, small_regions, tracking_at


def test_one_parent_run_with_a_nested_run_per_segment_and_the_global_model(segmented_store: SegmentedStore) -> None:
    training = segmented_store.training
    with tracking_at(segmented_store.uri):
        client = mlflow.MlflowClient()
        parent = client.get_run(training.parent_run_id)
        children = client.search_runs([parent.info.experiment_id],
                                      f"tags.mlflow.parentRunId = '{training.parent_run_id}'")
        names = sorted(r.info.run_name for r in children)
        assert names == ["global", "segment-R01", "segment-R02", "segment-R03"]
        assert parent.info.status == "FINISHED" and parent.data.metrics["segments_trained"] == 3
        for run in children:
            assert run.data.metrics["test_roc_auc"] > 0.6 and "cv_roc_auc_mean" in run.data.metrics
        segment_run = next(r for r in children if r.info.run_name == "segment-R02")
        assert segment_run.data.tags["segment"] == "R02" and segment_run.data.tags["segment_column"] == "Region"
        assert segment_run.data.params["explain.shap_rows"] == "50"  # the segments' budget, not the global one
        assert {a.path for a in client.list_artifacts(segment_run.info.run_id)} >= {"model_card", "specs.json"}


def test_segment_models_are_registered_under_the_contract_names_with_the_global_signature(
        segmented_store: SegmentedStore) -> None:
    training = segmented_store.training
    with tracking_at(segmented_store.uri):
        client = mlflow.MlflowClient()
        global_info = mlflow.models.get_model_info(training.global_result.outcome.model_uri)
        for result in training.results[1:4]:
            model = client.get_registered_model(f"credit-default-{result.segment}")
            assert model.tags == {"segment": result.segment, "segment_column": "Region",
                                  "global_model": "credit-default"}
            info = mlflow.models.get_model_info(result.outcome.model_uri)
            assert info.signature == global_info.signature  # Region is a routing key, not a feature
            assert "Region" not in info.signature.inputs.input_names()
        assert client.search_registered_models("name = 'credit-default-R04'") == []


def test_a_segment_with_too_few_rows_trains_nothing_and_says_why(segmented_store: SegmentedStore) -> None:
    thin = segmented_store.training.results[-1]
    assert thin.segment == "R04" and thin.outcome is None
    assert thin.skipped.startswith(f"too few rows ({thin.rows:,} < min_rows 500)")
    assert thin.rows == int((segmented_store.data.segments == "R04").sum())


def test_a_segment_run_holds_out_its_rows_of_the_global_split(segmented_store: SegmentedStore) -> None:
    """The global model never trained on a segment model's held-out rows: they are the same rows of one split."""
    data, training = segmented_store.data, segmented_store.training
    whole = split_data(data, 0.2, 42)
    r02 = training.results[2]
    with tracking_at(segmented_store.uri):
        rows = held_out(r02.outcome.run_id, str(segmented_store.csv))
    assert set(rows.split.X_test.index) == set(whole.X_test.index[data.segments.loc[whole.X_test.index] == "R02"])
    assert set(rows.split.X_train.index).isdisjoint(whole.X_test.index)
    assert len(rows.split.X_train) + len(rows.split.X_test) == r02.rows


def test_a_spec_without_a_segment_column_or_data_without_one_is_one_line() -> None:
    exp, ds = load_experiment_spec(EXPERIMENTS / "logistic_baseline.yaml")
    with pytest.raises(SpecError, match="trains no segments: it needs `segments:`"):
        segment_column(exp, ds)
    with pytest.raises(SpecError, match=r"segments.column: invalid field '\(top level\)': segment column 'age'"):
        segmented_dataset(segmented_experiment(**{"segments.column": "age"}), ds)
    spec, data = small_regions(rows=600, segments=2)
    with pytest.raises(SpecError, match="loaded without its segment column 'Region'"):
        train_segments(segmented_experiment(), spec, data.__class__(**{**data.__dict__, "segments": None}))
