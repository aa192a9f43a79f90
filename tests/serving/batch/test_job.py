"""Batch scoring on a real Spark local[2] session: parity with the online model, quarantine, reruns, kills."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from creditflow.data.dataset import CreditData
from creditflow.data.rules import rule_violations
from creditflow.errors import TrackingError
from creditflow.serving.batch import job as scoring
from creditflow.serving.batch import spark as batch_spark
from creditflow.serving.batch.columns import batch_overrides
from creditflow.serving.batch.job import run_batch, score_batch
from creditflow.serving.batch.partitions import parquet_rows
from creditflow.serving.batch.plan import plan_batch
from creditflow.serving.batch.spark import BatchError
from creditflow.serving.batch.table import (
    PredictionNotFound,
    PredictionTable,
    TableError,
    default_table_url,
)
from creditflow.specs import DatasetSpec
from creditflow.train.run import TrainingOutcome
from tests.conftest import CHAMPION, ROOT, VENV_BIN, subprocess_env
from tests.serving.batch import applicants, kill_session, partition

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
def test_a_model_whose_files_vanish_after_planning_fails_in_one_line(
        spark, own_champion_store: tuple[str, TrainingOutcome], small_data: CreditData, tmp_path: Path) -> None:
    """The batch copy fetches the model again when scoring starts: a store gone by then is one line, no traceback.

    It moves the model's files away for a while: on a private copy of the champion store, never the shared one."""
    applicants(small_data, 20).to_parquet(tmp_path / "in.parquet", index=False)
    plan = plan_batch(CHAMPION, tmp_path / "in.parquet", tmp_path / "out", batch_id="gone")
    uri = mlflow.MlflowClient().get_model_version_download_uri(plan.model.name, plan.model.version)
    files = Path(uri.removeprefix("file://"))
    files.rename(tmp_path / "moved")
    try:
        with pytest.raises(TrackingError, match=r"^cannot load model models:/credit-default/\d+: its files are gone"):
            run_batch(spark, plan)
    finally:
        (tmp_path / "moved").rename(files)
    assert not (tmp_path / "out" / "scored" / "batch_id=gone").exists()


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


@pytest.mark.spark
def test_table_loading_overlaps_scoring_and_either_failing_publishes_nothing(
        spark, model: TrainingOutcome, small_data: CreditData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    applicants(small_data, 80).to_parquet(tmp_path / "first.parquet", index=False)
    applicants(small_data, 3000, first_id=20_000).to_parquet(tmp_path / "second.parquet", index=False,
                                                              row_group_size=500)
    score_batch(spark, CHAMPION, tmp_path / "first.parquet", out, batch_id="b")
    loaded_while_scoring: list[bool] = []
    real_load, real_write = scoring._load_table, scoring._write_scored

    def spying_load(plan, files, *args):  # notes, for each file taken, whether Spark was still at work
        def watched():
            for file in files:
                loaded_while_scoring.append(not (file.parent / "_SUCCESS").exists())
                yield file
        return real_load(plan, watched(), *args)

    def failing_write(*args):  # Spark writes every file (the loader takes them all), then the job fails
        real_write(*args)
        raise BatchError("scoring failed: a worker died")

    spark.conf.set("spark.sql.files.maxPartitionBytes", "16k")  # several tasks, so several files to take
    try:
        monkeypatch.setattr(scoring, "_load_table", spying_load)
        monkeypatch.setattr(scoring, "POLL_SECONDS", 0.05)
        result = score_batch(spark, CHAMPION, tmp_path / "second.parquet", out, batch_id="overlap")
        assert result.rows_scored == PredictionTable(default_table_url(out)).count("overlap") == 3000
        assert len(loaded_while_scoring) > 1 and any(loaded_while_scoring), "the loader waited for the whole job"

        monkeypatch.setattr(scoring, "_write_scored", failing_write)
        with pytest.raises(BatchError, match="a worker died"):
            score_batch(spark, CHAMPION, tmp_path / "second.parquet", out, batch_id="b")
        monkeypatch.setattr(scoring, "_write_scored", real_write)
        with sqlite3.connect(tmp_path / "old.db") as old:  # the table refuses to load: Spark is stopped too
            old.execute("CREATE TABLE predictions (applicant_id TEXT)")
        with pytest.raises(TableError, match="old layout"):
            score_batch(spark, CHAMPION, tmp_path / "second.parquet", out, batch_id="b",
                        table=f"sqlite:///{tmp_path / 'old.db'}")
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    table = PredictionTable(default_table_url(out))
    assert table.count("b") == 80 and parquet_rows(out / "scored" / "batch_id=b") == 80  # the first batch, whole
    assert not list((out / "_staging").iterdir()), sorted(str(p) for p in (out / "_staging").rglob("*"))
    assert score_batch(spark, CHAMPION, tmp_path / "second.parquet", out, batch_id="b").rows_scored == 3000


@pytest.mark.spark
def test_a_batch_that_fails_mid_job_returns_after_its_tasks_stopped(
        spark, model: TrainingOutcome, small_data: CreditData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spark fails a cancelled job before its tasks end: one still finishing would commit into removed staging."""
    applicants(small_data, 12_000).to_parquet(tmp_path / "in.parquet", index=False, row_group_size=1000)
    tracker, group = spark.sparkContext.statusTracker(), "score-late"

    seen_running: list[bool] = []

    def failing_load(*args):  # the table fails while tasks are scoring
        deadline = time.monotonic() + 60
        while not seen_running and time.monotonic() < deadline:
            seen_running.extend(True for stage in batch_spark._group_stages(tracker, group) if stage.numActiveTasks)
            time.sleep(0.01)
        raise TableError("the table is unreachable")

    monkeypatch.setattr(scoring, "_load_table", failing_load)
    spark.conf.set("spark.sql.files.maxPartitionBytes", "16k")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "50")  # tasks that take a while
    try:
        with pytest.raises(TableError, match="unreachable"):
            score_batch(spark, CHAMPION, tmp_path / "in.parquet", tmp_path / "out", batch_id="late")
        running = batch_spark._tasks_running(spark.sparkContext, group)
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    assert seen_running, "the job ended before the table failed"
    assert not running, "score_batch returned while tasks of its job were still running"  # none can commit later
    assert not list((tmp_path / "out" / "_staging").iterdir())
    assert not (tmp_path / "out" / "scored").exists()


@pytest.mark.spark
@pytest.mark.slow
def test_a_job_killed_midway_leaves_no_partial_batch(spark, model: TrainingOutcome, small_data: CreditData,
                                                     store: tuple[str, TrainingOutcome], tmp_path: Path) -> None:
    out = tmp_path / "out"
    applicants(small_data, 100).to_parquet(tmp_path / "first.parquet", index=False)
    big = pd.concat([applicants(small_data, 6000, first_id=10_000 + 6000 * k) for k in range(2)], ignore_index=True)
    big.to_parquet(tmp_path / "second.parquet", index=False, row_group_size=2000)
    score_batch(spark, CHAMPION, tmp_path / "first.parquet", out, batch_id="k")

    (tmp_path / "job.yaml").write_text("master: local[1]\narrow_batch_rows: 100\nprogress_seconds: 0.5\n"
                                       "max_partition_bytes: 64k\ndriver_memory: 1g\n")
    proc = subprocess.Popen(
        [str(VENV_BIN / "creditflow"), "score", "batch", "--model-uri", CHAMPION, "--input",
         str(tmp_path / "second.parquet"), "--output", str(out), "--batch-id", "k",
         "--config", str(tmp_path / "job.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        env=subprocess_env(MLFLOW_TRACKING_URI=store[0]),
    )
    try:
        seen = []
        for line in proc.stdout:  # wait until it is scoring, then kill the job and its JVM and workers
            seen.append(line)
            if line.startswith("[score] ~"):
                break
    finally:
        kill_session(proc.pid)
        proc.wait(timeout=30)
    assert seen and seen[-1].startswith("[score] ~"), f"the job ended before it was killed: {seen}"

    assert parquet_rows(out / "scored" / "batch_id=k") == 100  # the earlier batch, whole
    table = PredictionTable(default_table_url(out))
    assert table.count("k") == 100 and table.get_latest("1050")["batch_id"] == "k"
    assert list((out / "_staging").iterdir()), "the killed attempt's staging area should be left behind"

    result = score_batch(spark, CHAMPION, tmp_path / "second.parquet", out, batch_id="k")
    assert result.rows_scored + result.rows_quarantined == 12_000
    assert parquet_rows(out / "scored" / "batch_id=k") == result.rows_scored == table.count("k") == table.count()
    assert not list((out / "_staging").iterdir())


BATCH_DRIVER = ROOT / "tests" / "batch_driver.py"
KILLED = 137  # the driver's exit code at its --die-at step
# step the job is killed at -> (which batch readers find in the SQL table, the scored and the quarantine
# partition: the one before or the killed job's; the partitions the killed job leaves in its staging area)
KILL_STEPS = {
    "committed": (("killed", "before", "before"), [("killed", "scored"), ("killed", "quarantine")]),
    "exchanged-scored": (("killed", "killed", "before"), [("before", "scored"), ("killed", "quarantine")]),
    "published-scored": (("killed", "killed", "before"), [("killed", "quarantine")]),
}  # "exchanged-quarantine" is "exchanged-scored" for the other partition: left out, each kill costs a Spark start


def readers_see(out: Path, batch_id: str) -> dict[str, tuple[set[str], set[pd.Timestamp]]]:
    """A batch as readers find it: (applicant ids, scored-at times) in the SQL view and in each Parquet dataset."""
    with closing(sqlite3.connect(out / "predictions.db")) as db:
        rows = db.execute("SELECT applicant_id, scored_at FROM predictions WHERE batch_id = ?", (batch_id,)).fetchall()
    seen = {"sql": ({a for a, _ in rows}, {pd.Timestamp(t) for _, t in rows})}
    for kind, id_column in (("scored", "applicant_id"), ("quarantine", "Id")):
        dataset = pads.dataset(out / kind, partitioning="hive")
        if "batch_id" not in dataset.schema.names:  # no partition at all
            seen[kind] = (set(), set())
            continue
        found = dataset.to_table(filter=pc.field("batch_id") == batch_id)
        times = set(found["scored_at"].to_pandas()) if "scored_at" in found.column_names else set()
        seen[kind] = ({str(i) for i in found[id_column].to_pylist()}, times)
    return seen


def whole_batch(where: str, ids: set[str], batches: dict[str, set[str]]) -> str:
    """Which batch a reader's rows are: all rows of one of them, or the test fails."""
    found = [name for name, rows in batches.items() if ids == rows]
    assert found, f"{where}: {len(ids)} rows, not a whole batch ({ {n: len(r) for n, r in batches.items()} })"
    return found[0]


@pytest.mark.spark
@pytest.mark.slow
def test_a_job_killed_while_publishing_leaves_whole_batches_and_its_rerun_repairs_them(
        spark, model: TrainingOutcome, small_data: CreditData, store: tuple[str, TrainingOutcome],
        tmp_path: Path) -> None:
    """Killed after the SQL commit, between a publish's exchange and its removal of the old partition, or between
    the scored and the quarantine publishes: the SQL table and each partition hold a whole batch, the one before
    or the killed job's, in that order; the rerun of the batch id makes them all its batch and removes what the
    killed job left. Batch k alternates between two inputs: each kill replaces the one the last rerun wrote."""
    out = tmp_path / "out"
    inputs = {"a": applicants(small_data, 100), "b": applicants(small_data, 200, first_id=20_000, offset=100)}
    broken = {"a": [3, 50, 77], "b": [10, 20, 30, 40, 50]}  # rule breakers: quarantine partitions of other sizes
    inputs["a"].loc[broken["a"], "age"] = -4.0
    inputs["b"].loc[broken["b"], "DebtRatio"] = -1.0
    batches: dict[str, dict[str, set[str]]] = {"scored": {}, "quarantine": {}}  # kind -> input -> applicant ids
    for name, frame in inputs.items():
        frame.to_parquet(tmp_path / f"{name}.parquet", index=False)
        batches["quarantine"][name] = set(frame.Id.iloc[broken[name]].astype(str))
        batches["scored"][name] = set(frame.Id.astype(str)) - batches["quarantine"][name]
    rows = {(name, kind): len(ids) for kind, named in batches.items() for name, ids in named.items()}
    (tmp_path / "job.yaml").write_text("master: local[1]\ndriver_memory: 1g\n")
    env, table = subprocess_env(MLFLOW_TRACKING_URI=store[0]), PredictionTable(default_table_url(out))
    steps, jobs = list(KILL_STEPS), []

    def job_at(step: str, name: str) -> tuple[subprocess.Popen, Path, Path]:
        """The job to kill at `step`, on input `name`: it starts Spark now, then waits at its gate (it reads nothing
        of the batch before): its start-up overlaps the test's work, the kill happens as the gate opens."""
        log, gate = tmp_path / f"{step}.log", tmp_path / f"{step}.go"
        with log.open("w") as sink:
            jobs.append(subprocess.Popen(
                [sys.executable, str(BATCH_DRIVER), "--die-at", step, "--go", str(gate), "--", "--model-uri",
                 CHAMPION, "--input", str(tmp_path / f"{name}.parquet"), "--output", str(out), "--batch-id", "k",
                 "--config", str(tmp_path / "job.yaml")],
                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=env))
        return jobs[-1], gate, log

    before, killed = "a", "b"
    job = job_at(steps[0], killed)
    try:
        score_batch(spark, CHAMPION, tmp_path / "a.parquet", out, batch_id="k")
        for n, (step, (expected, left)) in enumerate(KILL_STEPS.items()):
            (before_time,) = readers_see(out, "k")["sql"][1]
            proc, gate, log = job
            gate.touch()
            try:
                code = proc.wait(timeout=300)
            finally:
                kill_session(proc.pid)  # its JVM and Python workers outlive it
            assert code == KILLED, f"the job did not stop at {step} (exit {code}):\n{log.read_text()[-3000:]}"
            seen, named = readers_see(out, "k"), {"before": before, "killed": killed}
            role = {name: r for r, name in named.items()}
            readers = (("sql", "scored"), ("scored", "scored"), ("quarantine", "quarantine"))
            found = tuple(role[whole_batch(f"killed at {step}: {reader}", seen[reader][0], batches[kind])]
                          for reader, kind in readers)
            assert found == expected, f"killed at {step}: SQL, scored, quarantine hold {found}"
            (killed_time,) = seen["sql"][1]  # the killed job's: its SQL rows are committed at every step
            assert killed_time != before_time and table.count("k") == rows[killed, "scored"]
            assert seen["scored"][1] == {killed_time if found[1] == "killed" else before_time}  # that job's rows
            assert parquet_rows(out / "_staging") == sum(rows[named[batch], kind] for batch, kind in left), \
                f"killed at {step}: {sorted(str(f) for f in (out / '_staging').rglob('*.parquet'))}"
            if n + 1 < len(steps):  # the next kill's job (on the other input) starts up while this batch is rerun
                job = job_at(steps[n + 1], before)
            result = score_batch(spark, CHAMPION, tmp_path / f"{killed}.parquet", out, batch_id="k")  # the rerun
            seen = readers_see(out, "k")
            assert seen["sql"][0] == seen["scored"][0] == batches["scored"][killed], f"rerun after {step}"
            assert seen["quarantine"][0] == batches["quarantine"][killed], f"rerun after {step}"
            assert len(seen["sql"][1]) == 1 and seen["sql"][1] == seen["scored"][1] != {killed_time}  # the rerun's
            assert (result.rows_scored, result.rows_quarantined) == \
                (rows[killed, "scored"], rows[killed, "quarantine"])
            assert table.count("k") == table.count() == parquet_rows(out / "scored" / "batch_id=k") == \
                result.rows_scored
            assert parquet_rows(out / "quarantine" / "batch_id=k") == result.rows_quarantined
            assert not list((out / "_staging").iterdir()), f"rerun after {step}"
            before, killed = killed, before
    finally:
        for proc in jobs:
            kill_session(proc.pid)


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
