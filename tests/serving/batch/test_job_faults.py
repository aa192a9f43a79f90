"""Batch jobs that lose their model, fail midway or are killed: nothing partial is published, and a rerun repairs."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from creditflow.data.dataset import CreditData
from creditflow.errors import TrackingError
from creditflow.serving.batch import job as scoring
from creditflow.serving.batch import spark as batch_spark
from creditflow.serving.batch.job import run_batch, score_batch
from creditflow.serving.batch.partitions import parquet_rows
from creditflow.serving.batch.plan import plan_batch
from creditflow.serving.batch.spark import BatchError
from creditflow.serving.batch.table import (
    PredictionTable,
    TableError,
    default_table_url,
)
from creditflow.train.run import TrainingOutcome
from tests.conftest import CHAMPION, ROOT, VENV_BIN, subprocess_env
from tests.serving.batch import applicants, kill_session


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
