"""Batch scoring on a real Spark local[2] session: parity with the online model, quarantine, reruns, segments."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from creditflow.data.dataset import CreditData
from creditflow.data.rules import rule_violations
from creditflow.serving.batch.columns import batch_overrides
from creditflow.serving.batch.job import run_batch, score_batch
from creditflow.serving.batch.plan import plan_batch
from creditflow.serving.batch.table import (
    PredictionNotFound,
    PredictionTable,
    default_table_url,
)
from creditflow.specs import DatasetSpec
from creditflow.train.run import TrainingOutcome
from tests.conftest import CHAMPION
from tests.serving.batch import applicants, partition

# ---------------------------------------------------------------- scoring


@pytest.mark.spark
def test_batch_scores_equal_the_online_model(spark, model: TrainingOutcome, small_data: CreditData,
                                             tmp_path: Path) -> None:
    frame = applicants(small_data, 300)
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    result = score_batch(spark, CHAMPION, tmp_path / "in.parquet", tmp_path / "out", batch_id="parity",
                         progress_seconds=1)
    assert (result.rows_in, result.rows_scored, result.rows_quarantined) == (300, 300, 0)
    clean = partition(tmp_path / "out", "quarantine", "parity")  # no second pass, but the partition is there
    assert clean.empty and list(clean.columns) == [*frame.columns, "reason"]

    batch = partition(tmp_path / "out", "scored", "parity").set_index("applicant_id").loc[frame.Id.astype(str)]
    online_model = mlflow.pyfunc.load_model(CHAMPION)  # what `mlflow models serve` loads
    X = frame.drop(columns="Id")
    whole = online_model.predict(X)
    one_by_one = pd.concat([online_model.predict(X.iloc[[i]]) for i in range(0, 300, 15)], ignore_index=True)
    for online, rows in ((whole, slice(None)), (one_by_one, slice(0, 300, 15))):
        part = batch.iloc[rows]
        np.testing.assert_allclose(part.probability.to_numpy(), online.probability.to_numpy(), rtol=1e-12, atol=0)
        assert part.decision.tolist() == online.decision.tolist()
        declined = (online.decision == "decline").to_numpy()  # the batch default: reasons for declined applicants
        for field in ("reason_codes", "reason_statements"):
            assert [json.loads(c) for c in part[field][declined]] == [list(c) for c in online[field][declined]]
            assert all(json.loads(c) == [] for c in part[field][~declined])
    assert set(batch.decision) == {"approve", "decline"}  # both outcomes exercised
    assert sum(json.loads(c) != [] for c in batch.reason_codes) > 0

    assert set(batch.model_name) == {"credit-default"} and set(batch.model_version) == {model.registered_version}
    assert set(batch.run_id) == {model.run_id} and batch.scored_at.notna().all()
    part_file = max((tmp_path / "out" / "scored" / "batch_id=parity").glob("*.parquet"), key=lambda f: f.stat().st_size)
    written = pq.ParquetFile(part_file)
    assert written.schema_arrow.field("scored_at").type == pa.timestamp("us", tz="UTC")  # not INT96
    assert written.schema_arrow.field("reason_codes").type == pa.string()  # JSON text, as in the SQL table
    group = written.metadata.row_group(0)
    stats = {group.column(i).path_in_schema: group.column(i).statistics for i in range(group.num_columns)}
    ids = pq.read_table(part_file, columns=["applicant_id"])["applicant_id"]
    assert (stats["applicant_id"].min, stats["applicant_id"].max) == (min(ids.to_pylist()), max(ids.to_pylist()))
    assert stats["probability"] is None and stats["model_version"] is None  # no readers' filter: not kept
    dictionary = {group.column(i).path_in_schema: group.column(i).has_dictionary_page for i in range(group.num_columns)}
    assert not dictionary["applicant_id"] and not dictionary["probability"]  # distinct values: plain
    assert dictionary["decision"] and dictionary["reason_codes"] and dictionary["model_name"]
    stored = PredictionTable(result.table_url).get_latest("1007")
    assert stored["probability"] == pytest.approx(batch.loc["1007"].probability, rel=1e-15)
    assert stored["reason_codes"] == json.loads(batch.loc["1007"].reason_codes)
    assert stored["reason_statements"] == json.loads(batch.loc["1007"].reason_statements)
    assert (stored["batch_id"], stored["model_version"]) == ("parity", model.registered_version)


@pytest.mark.spark
def test_rule_breakers_go_to_quarantine_and_counts_add_up(spark, model: TrainingOutcome, small_data: CreditData,
                                                          tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frame = applicants(small_data, 60).astype(object)
    frame.loc[3, "age"] = "-4"
    frame.loc[7, "DebtRatio"] = "abc"
    frame.loc[9, "Id"] = ""
    frame.loc[11, "MonthlyIncome"] = "NA"  # missing allowed: scored
    frame.loc[13, "NumberOfTime30-59DaysPastDueNotWorse"] = "96"  # the sentinel: allowed, scored
    frame.loc[15, "NumberOfDependents"] = "2.5"
    frame.to_csv(tmp_path / "in.csv", index=False)

    with caplog.at_level(logging.INFO, logger="creditflow"):
        result = score_batch(spark, CHAMPION, tmp_path / "in.csv", tmp_path / "out", batch_id="csv")
    assert (result.rows_in, result.rows_scored, result.rows_quarantined) == (60, 56, 4)
    assert "rows in 60 = scored 56 + quarantined 4" in result.summary()
    assert "[quarantine] 4 rows broke" in caplog.text

    bad = partition(tmp_path / "out", "quarantine", "csv").set_index("reason")
    assert sorted(bad.index) == ["DebtRatio is not a number", "Id is missing",
                                 "NumberOfDependents is not a whole number", "age below 0"]
    assert bad.loc["DebtRatio is not a number", "DebtRatio"] == "abc"  # the row as it came, unchanged
    scored = partition(tmp_path / "out", "scored", "csv").set_index("applicant_id")
    assert {"1011", "1013"} <= set(scored.index) and not {"1003", "1007", "1015"} & set(scored.index)


@pytest.mark.spark
def test_a_row_breaking_two_rules_is_quarantined_under_the_rule_online_names(
        spark, model: TrainingOutcome, small_data: CreditData, small_spec: DatasetSpec, tmp_path: Path) -> None:
    frame = applicants(small_data, 3)
    frame.loc[0, ["age", "DebtRatio"]] = [-4.0, -1.0]  # age comes first in the spec, DebtRatio first alphabetically
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    online = rule_violations(frame.drop(columns="Id"), small_spec).iloc[0]
    assert online == "age below 0"
    score_batch(spark, CHAMPION, tmp_path / "in.parquet", tmp_path / "out", batch_id="two")
    assert list(partition(tmp_path / "out", "quarantine", "two").reason) == [online]


@pytest.mark.spark
def test_rerunning_a_batch_replaces_it(spark, model: TrainingOutcome, small_data: CreditData, tmp_path: Path) -> None:
    out = tmp_path / "out"
    applicants(small_data, 200).to_parquet(tmp_path / "a.parquet", index=False)
    applicants(small_data, 50, first_id=5000).to_parquet(tmp_path / "b.parquet", index=False)
    applicants(small_data, 120, first_id=1100, offset=100).to_parquet(tmp_path / "c.parquet", index=False)
    score_batch(spark, CHAMPION, tmp_path / "a.parquet", out, batch_id="daily")
    score_batch(spark, CHAMPION, tmp_path / "b.parquet", out, batch_id="other")
    score_batch(spark, CHAMPION, tmp_path / "c.parquet", out, batch_id="daily")

    readers_see = pads.dataset(out / "scored", partitioning="hive").to_table().to_pandas()
    assert readers_see.groupby("batch_id").size().to_dict() == {"daily": 120, "other": 50}
    assert readers_see.applicant_id.is_unique
    table = PredictionTable(default_table_url(out))
    assert (table.count("daily"), table.count("other")) == (120, 50)
    with pytest.raises(PredictionNotFound, match="applicant 1000"):
        table.get_latest("1000")  # only in the replaced version of "daily"
    assert not list((out / "_staging").iterdir())


@pytest.mark.spark
def test_models_logged_before_the_batch_config_keys_give_the_same_rows(spark, model: TrainingOutcome,
                                                                       small_data: CreditData, tmp_path: Path) -> None:
    """Before `reason_codes_as` the model returns lists, which Spark writes as JSON text: the same rows; a model
    logged before reason statements gets none (an empty list), the rest unchanged."""
    applicants(small_data, 60).to_parquet(tmp_path / "in.parquet", index=False)
    plan = plan_batch(CHAMPION, tmp_path / "in.parquet", tmp_path / "out", batch_id="text")
    assert "reason_codes_as" in batch_overrides(plan.model)
    run_batch(spark, plan)
    older = replace(plan.model, config_keys=plan.model.config_keys - {"reason_codes_as"})
    run_batch(spark, replace(plan, batch_id="lists", model=older))
    oldest = replace(older, outputs=tuple(o for o in plan.model.outputs if o != "reason_statements"))
    run_batch(spark, replace(plan, batch_id="codes", model=oldest))
    ids = applicants(small_data, 60).Id.astype(str)
    text, lists, codes = (partition(tmp_path / "out", "scored", b).set_index("applicant_id").loc[ids]
                          for b in ("text", "lists", "codes"))
    assert codes.reason_codes.tolist() == lists.reason_codes.tolist() and set(codes.reason_statements) == {"[]"}
    assert [json.loads(c) for c in text.reason_statements] == [json.loads(c) for c in lists.reason_statements]
    assert [json.loads(c) for c in text.reason_codes] == [json.loads(c) for c in lists.reason_codes]
    assert text.probability.tolist() == lists.probability.tolist()
    assert text.decision.tolist() == lists.decision.tolist() and set(text.decision) == {"approve", "decline"}
    assert any(json.loads(c) for c in lists.reason_codes)  # declined rows with codes among them


@pytest.mark.spark
@pytest.mark.integration
def test_the_production_profile_loads_postgresql(spark, model: TrainingOutcome, small_data: CreditData,
                                                 tmp_path: Path, postgres_db: str) -> None:
    applicants(small_data, 80).to_parquet(tmp_path / "in.parquet", index=False)
    for _ in range(2):  # a rerun replaces the batch in PostgreSQL too
        result = score_batch(spark, CHAMPION, tmp_path / "in.parquet", tmp_path / "out", batch_id="pg",
                             table=postgres_db)
    table = PredictionTable(postgres_db)
    assert result.rows_scored == 80 == table.count("pg") == table.count()
    stored = table.get_latest("1040")
    batch = partition(tmp_path / "out", "scored", "pg").set_index("applicant_id").loc["1040"]
    assert stored["probability"] == batch.probability and stored["reason_codes"] == json.loads(batch.reason_codes)
    assert not (tmp_path / "out" / "predictions.db").exists()


# ---------------------------------------------------------------- a segmented deployment


@pytest.mark.spark
@pytest.mark.integration
def test_a_segmented_batch_routes_every_row_to_its_model_in_one_spark_job(spark, segment_store, small_data: CreditData,
                                                                        tmp_path: Path) -> None:
    from creditflow.serving.segments import SegmentsConfig
    from tests.conftest import SEGMENT_COLUMN, tracking_at, with_regions

    frame = with_regions(applicants(small_data, 120))
    frame.loc[5, SEGMENT_COLUMN], frame.loc[9, SEGMENT_COLUMN] = "R99", None  # never seen, missing: the fallback
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    deployment = SegmentsConfig(column=SEGMENT_COLUMN, model="models:/credit-default-{segment}@champion",
                                values=("R01", "R02", "R03"))
    with tracking_at(segment_store.uri):
        result = score_batch(spark, "", tmp_path / "in.parquet", tmp_path / "out", batch_id="seg",
                             deployment=deployment)
        jobs = spark.sparkContext.statusTracker().getJobIdsForGroup("score-seg")
        models = {s: mlflow.pyfunc.load_model(f"models:/credit-default{s}@champion") for s in ("", "-R01")}
    assert len(jobs) == 1  # every model's rows scored and written by ONE Spark job
    assert (result.rows_in, result.rows_scored) == (120, 120) and "+ 1 segment models by Region" in result.model_uri
    batch = partition(tmp_path / "out", "scored", "seg").set_index("applicant_id").loc[frame.Id.astype(str)]
    own = (frame[SEGMENT_COLUMN] == "R01").to_numpy()  # R02 has no champion, R03 no model: both fall back
    assert batch.segment_model.tolist() == own.tolist()
    assert batch.segment.tolist() == frame[SEGMENT_COLUMN].tolist()
    r01, fallback = f"credit-default-R01/{segment_store.versions['R01']}", segment_store.fallback
    assert (batch.model_name + "/" + batch.model_version).tolist() == [r01 if o else fallback for o in own]
    X = frame.drop(columns=["Id", SEGMENT_COLUMN])
    expected = np.where(own, models["-R01"].predict(X).probability, models[""].predict(X).probability)
    np.testing.assert_allclose(batch.probability.to_numpy(), expected, rtol=1e-12, atol=0)
    table = PredictionTable(result.table_url)
    first_r01, first_fallback = frame.Id[own].iloc[0], frame.Id[~own].iloc[0]
    assert table.get_latest(str(first_r01))["model_version"] == segment_store.versions["R01"]
    assert table.get_latest(str(first_r01))["model_name"] == "credit-default-R01"
    assert table.get_latest(str(first_fallback))["model_name"] == "credit-default"
    assert table.get_latest(str(frame.Id[5]))["segment"] == "R99"
