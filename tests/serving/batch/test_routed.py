"""The segmented batch's one pandas UDF: each row answered as its own model answers it, in local mode and on a
standalone cluster's executors."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from creditflow.data.dataset import CreditData
from creditflow.registry.client import ModelRef
from creditflow.serving.batch import routed
from creditflow.serving.batch.columns import batch_overrides
from creditflow.serving.batch.plan import BatchPlan, plan_batch
from creditflow.serving.batch.routed import routed_rows, ship
from creditflow.serving.segments import SegmentsConfig
from tests.conftest import ROOT, SEGMENT_COLUMN, VENV_BIN, subprocess_env, tracking_at, with_regions
from tests.serving.batch import applicants, partition

DEPLOYMENT = SegmentsConfig(column=SEGMENT_COLUMN, model="models:/credit-default-{segment}@champion",
                            values=("R01", "R02", "R03"))  # R01 has a champion; R02 none; R03 no model


def mixed_applicants(small_data: CreditData, rows: int) -> pd.DataFrame:
    """Applicants of R01, R02 and R03 in turn, one of a segment never listed (R99) and one without a segment."""
    frame = with_regions(applicants(small_data, rows))
    frame.loc[4, SEGMENT_COLUMN], frame.loc[7, SEGMENT_COLUMN] = "R99", None
    return frame


def own_answers(ref: ModelRef, X: pd.DataFrame) -> pd.DataFrame:
    """The model's own pyfunc predictions with the batch job's overrides (reasons for declined applicants)."""
    return mlflow.pyfunc.load_model(ref.uri, model_config=batch_overrides(ref)).predict(X)


def routed_frame(spark, plan: BatchPlan, path: Path) -> pd.DataFrame:
    """The routed UDF's rows for the file, read as ONE partition: every segment in the same Arrow batch."""
    from pyspark.sql import functions as F

    df = spark.read.parquet(str(path)).coalesce(1)
    assert df.rdd.getNumPartitions() == 1 and df.count() < int(spark.conf.get(
        "spark.sql.execution.arrow.maxRecordsPerBatch"))
    out = routed_rows(spark, df, plan, [F.col("Id").cast("string").alias("applicant_id")])
    return out.toPandas().set_index("applicant_id")


def assert_answers_of(ref: ModelRef, scored: pd.DataFrame, frame: pd.DataFrame, rows: np.ndarray) -> None:
    """`scored`'s rows `rows` are `ref`'s own answers to them, with its lineage."""
    X = frame.drop(columns=["Id", SEGMENT_COLUMN]).iloc[rows]
    own, got = own_answers(ref, X), scored.loc[frame.Id.iloc[rows].astype(str)]
    np.testing.assert_allclose(got.probability.to_numpy(), own.probability.to_numpy(), rtol=0, atol=1e-9)
    assert got.decision.tolist() == own.decision.tolist()
    for field in ("reason_codes", "reason_statements"):  # the batch copy's JSON text, as the model wrote it
        assert got[field].tolist() == own[field].tolist()
    assert set(zip(got.model_name, got.model_version, got.run_id, strict=True)) == {tuple(ref.lineage.values())}


@pytest.mark.spark
@pytest.mark.integration
def test_the_routed_udf_answers_each_row_as_its_own_model_does(spark, segment_store, small_data: CreditData,
                                                               tmp_path: Path) -> None:
    frame = mixed_applicants(small_data, 150)
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    with tracking_at(segment_store.uri):
        plan = plan_batch("", tmp_path / "in.parquet", tmp_path / "out", deployment=DEPLOYMENT)
        scored = routed_frame(spark, plan, tmp_path / "in.parquet")
        own = (frame[SEGMENT_COLUMN] == "R01").to_numpy()  # R02, R03, R99 and the missing one: the fallback
        assert_answers_of(plan.segment_models["R01"], scored, frame, np.flatnonzero(own))
        assert_answers_of(plan.model, scored, frame, np.flatnonzero(~own))
    scored = scored.loc[frame.Id.astype(str)]
    assert scored.segment_model.tolist() == own.tolist()
    assert scored.segment.tolist() == frame[SEGMENT_COLUMN].tolist()
    assert set(scored.decision) == {"approve", "decline"} and any(json.loads(c) for c in scored.reason_codes)
    assert list(scored.columns) == ["segment", "probability", "decision", "reason_codes", "reason_statements",
                                    "model_name", "model_version", "run_id", "segment_model"]


@pytest.mark.spark
@pytest.mark.integration
def test_models_logged_before_the_batch_config_keys_route_with_the_single_model_jobs_text(
        spark, segment_store, small_data: CreditData, tmp_path: Path) -> None:
    """A fallback answering lists (before reason_codes_as) gets Spark's to_json text, as the single-model job
    writes it; a segment model logged before reason statements gets none ("[]")."""
    from pyspark.sql import functions as F

    frame = mixed_applicants(small_data, 150)
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    with tracking_at(segment_store.uri):
        plan = plan_batch("", tmp_path / "in.parquet", tmp_path / "out", deployment=DEPLOYMENT)
        lists = replace(plan.model, config_keys=plan.model.config_keys - {"reason_codes_as"})
        r01 = plan.segment_models["R01"]
        codes_only = replace(r01, outputs=tuple(o for o in r01.outputs if o != "reason_statements"))
        scored = routed_frame(spark, replace(plan, model=lists, segment_models={"R01": codes_only}),
                              tmp_path / "in.parquet").loc[frame.Id.astype(str)]
        X = frame.drop(columns=["Id", SEGMENT_COLUMN])
        listed = mlflow.pyfunc.load_model(lists.uri, model_config=batch_overrides(lists)).predict(X)
    own = (frame[SEGMENT_COLUMN] == "R01").to_numpy()
    as_spark = spark.createDataFrame(pd.DataFrame({"c": list(listed.reason_codes[~own])}), "c array<string>")
    assert scored.reason_codes[~own].tolist() == [r[0] for r in as_spark.select(F.to_json("c")).collect()]
    assert any(json.loads(c) for c in scored.reason_codes[~own])  # declined rows with codes among them
    assert set(scored.reason_statements[own]) == {"[]"} and any(json.loads(c) for c in scored.reason_codes[own])


@pytest.mark.spark
@pytest.mark.integration
def test_a_model_is_shipped_once_per_session_by_its_content(spark, segment_store, small_data: CreditData,
                                                             tmp_path: Path) -> None:
    applicants(small_data, 5).assign(Region="R01").to_parquet(tmp_path / "in.parquet", index=False)
    with tracking_at(segment_store.uri):
        plan = plan_batch("", tmp_path / "in.parquet", tmp_path / "out", deployment=DEPLOYMENT)
        first, again = ship(spark, plan.model), ship(spark, plan.model)
        other = ship(spark, plan.segment_models["R01"])
        lists = ship(spark, replace(plan.model, config_keys=plan.model.config_keys - {"reason_codes_as"}))
    assert first == again and first.archive != other.archive  # the same files: one archive
    assert lists.archive != first.archive and not lists.as_json  # other overrides: another copy
    added = [f for f in spark.sparkContext.listFiles if f.endswith(first.archive)]
    assert len(added) == 1


@pytest.mark.spark
@pytest.mark.integration
def test_a_worker_loads_a_shipped_model_once_and_keeps_the_running_jobs_only(
        spark, segment_store, small_data: CreditData, tmp_path: Path) -> None:
    """`_load` run here, in the driver's process: local mode fetches the added files into the same directory."""
    applicants(small_data, 5).assign(Region="R01").to_parquet(tmp_path / "in.parquet", index=False)
    with tracking_at(segment_store.uri):
        plan = plan_batch("", tmp_path / "in.parquet", tmp_path / "out", deployment=DEPLOYMENT)
        shipped = ship(spark, plan.model)
        X = applicants(small_data, 5).drop(columns="Id")
        expected = own_answers(plan.model, X).probability
    spark.sparkContext.parallelize([0], 1).count()  # a task: the executor fetches the added files
    model = routed._load(shipped.archive)
    assert routed._load(shipped.archive) is model
    routed._keep_only(frozenset({shipped.archive, "another.zip"}))
    assert routed._load(shipped.archive) is model
    routed._keep_only(frozenset({"another.zip"}))  # a job of other models: this one dropped
    assert shipped.archive not in routed._loaded
    np.testing.assert_array_equal(model.predict(X).probability, expected)


@pytest.mark.spark
@pytest.mark.integration
def test_a_segmented_batch_on_a_spark_cluster_ships_its_models_to_the_executors(
        segment_store, small_data: CreditData, spark_cluster: str, tmp_path: Path) -> None:
    """A standalone cluster's executors see no driver files but the shipped archives: the CLI's job, end to end."""
    frame = mixed_applicants(small_data, 90)
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    (tmp_path / "segments.yaml").write_text(yaml.safe_dump({"segments": DEPLOYMENT.model_dump(mode="json")}))
    command = [str(VENV_BIN / "creditflow"), "score", "batch", "--deployment", str(tmp_path / "segments.yaml"),
               "--batch-id", "cluster", "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"),
               "--master", spark_cluster, "--config", str(ROOT / "serving" / "batch" / "job.yaml")]
    out = subprocess.run(command, env=subprocess_env(MLFLOW_TRACKING_URI=segment_store.uri), capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "rows in 90 = scored 90 + quarantined 0" in out.stdout
    scored = partition(tmp_path / "out", "scored", "cluster").set_index("applicant_id")
    own = (frame[SEGMENT_COLUMN] == "R01").to_numpy()
    with tracking_at(segment_store.uri):
        plan = plan_batch("", tmp_path / "in.parquet", tmp_path / "out", deployment=DEPLOYMENT)
        assert_answers_of(plan.segment_models["R01"], scored, frame, np.flatnonzero(own))
        assert_answers_of(plan.model, scored, frame, np.flatnonzero(~own))
    assert scored.loc[frame.Id.astype(str)].segment_model.tolist() == own.tolist()
