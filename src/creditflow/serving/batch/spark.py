"""The Spark side of the batch job: the session, job groups whose tasks are waited for, progress, errors.

pyspark and py4j are imported inside the functions that use them (start-up time of every other command).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from creditflow.errors import CreditflowError, first_line
from creditflow.scoped import environ
from creditflow.specs import CHAMPION_URI, load_config

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0  # a progress line at least this often, even when no task finished
TASK_STOP_SECONDS = 30.0  # at most this long for a failed job's tasks to stop (Python workers get 2 s to die)


class BatchError(CreditflowError):
    """A batch job that cannot run as asked (bad batch id, failed scoring, inconsistent counts)."""


class SparkConfig(BaseModel):
    """The Spark side of the job (serving/batch/job.yaml)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    master: str = "local[*]"
    arrow_batch_rows: int = Field(100_000, gt=0)
    max_partition_bytes: str = "128m"
    splits_per_core: int = Field(2, gt=0)
    driver_memory: str = "1g"
    python: str = ""
    progress_seconds: float = Field(5.0, gt=0)
    conf: dict[str, str] = {}

    def spark_conf(self) -> dict[str, str]:
        """Every Spark setting the session is built with."""
        return {
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",  # not the deprecated INT96
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(self.arrow_batch_rows),
            # batches are bounded by rows; at Int.MaxValue Spark stops measuring the batch after every row
            "spark.sql.execution.arrow.maxBytesPerBatch": str(2**31 - 1),
            # Spark 4 hands pandas UDFs the Parquet reader's 4,096-row batches unless this is off
            "spark.sql.execution.arrow.pythonUDF.columnarInput.enabled": "false",
            "spark.sql.files.maxPartitionBytes": self.max_partition_bytes,
            "spark.driver.memory": self.driver_memory,
            # the whole heap taken and touched at start: the JVM's footprint is set here, not by the input;
            # the throughput collector: a batch job has no pause target, and G1's bookkeeping costs CPU
            "spark.driver.extraJavaOptions": f"-Xms{self.driver_memory} -XX:+AlwaysPreTouch -XX:+UseParallelGC",
            # each task's output moves into place when the task ends: the table loader takes it from there
            "spark.hadoop.mapreduce.fileoutputcommitter.algorithm.version": "2",
            **self.conf,
        }


def add_batch_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `creditflow score batch` (the MLproject entry point `batch_score`)."""
    p.add_argument("--model-uri", default="", help=f"e.g. {CHAMPION_URI} (pinned to its version)")
    p.add_argument("--deployment", default="", help="instead of --model-uri: a segmented deployment, e.g. "
                                                    "serving/segments.yaml (each row scored by its segment's model)")
    p.add_argument("--input", required=True, help="a .csv or .parquet file, or a directory of them")
    p.add_argument("--output", required=True, help="directory for scored/, quarantine/ and predictions.db")
    p.add_argument("--batch-id", default="", help="replaces an earlier batch of that id (default: input name + date)")
    p.add_argument("--id-column", default="", help="applicant id column (default: the model's dataset spec's)")
    p.add_argument("--master", default="", help="Spark master, e.g. local[*] or spark://host:7077 (default: config)")
    p.add_argument("--table", default="", help="SQL table URL: sqlite:///file.db or postgresql://user@host/db "
                                               "(default: sqlite under --output)")
    p.add_argument("--config", default="", help="job config YAML, e.g. serving/batch/job.yaml")
    return p


def load_batch_config(path: str | Path | None, **overrides: Any) -> SparkConfig:
    """The job's YAML config (if any) with command-line overrides; one-line errors."""
    return load_config(SparkConfig, path, "batch config", **overrides)


@contextmanager
def no_pandas_notice() -> Iterator[None]:
    """PySpark's FutureWarning that it does not fully support pandas 3 off for the block: not the user's to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        yield


def start_spark(config: SparkConfig, app_name: str = "creditflow-batch") -> SparkSession:
    """A Spark session whose Python workers run this interpreter (so they import creditflow and mlflow)."""
    from pyspark.errors import PySparkRuntimeError
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(config.master).appName(app_name)
    for key, value in config.spark_conf().items():
        builder = builder.config(key, value)
    with no_pandas_notice():  # PySpark checks pandas once, when this module is first imported: now, quietly
        import pyspark.testing.utils  # noqa: F401
    try:
        with environ("PYSPARK_PYTHON", config.python or sys.executable):  # read once, when the context starts
            spark = builder.getOrCreate()
    except PySparkRuntimeError as exc:  # the JVM did not come up; it printed why just above
        raise BatchError(f"Spark could not start on {config.master} with driver_memory {config.driver_memory} "
                         f"(the heap is taken whole at start; is Java 17 installed?): {first_line(exc)}"
                         ) from None
    spark.sparkContext.setLogLevel("ERROR")
    if "spark.sql.files.minPartitionNum" not in config.conf:  # input splits: a few per core (job.yaml)
        splits = config.splits_per_core * spark.sparkContext.defaultParallelism
        spark.conf.set("spark.sql.files.minPartitionNum", str(splits))
    return spark


@contextmanager
def job_group(spark: SparkSession, group: str, description: str) -> Iterator[None]:
    """Spark jobs started in the block belong to `group`; the block ends only once all their tasks have.

    Spark fails a job (cancelled, or one task failed) before its other tasks have stopped: a task that
    was finishing would commit its file into the staging directory after run_batch had removed it.
    """
    sc = spark.sparkContext
    sc.setJobGroup(group, description)
    try:
        yield
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        deadline = time.monotonic() + TASK_STOP_SECONDS
        while _tasks_running(sc, group):
            if time.monotonic() > deadline:
                logger.warning("tasks of %s still running %.0f s after its job ended", group, TASK_STOP_SECONDS)
                break
            time.sleep(0.05)


def _group_jobs(tracker: Any, group: str) -> list[Any]:
    """The group's jobs, as Spark's status tracker knows them (SparkJobInfo)."""
    return [info for job in tracker.getJobIdsForGroup(group) if (info := tracker.getJobInfo(job))]


def _group_stages(tracker: Any, group: str) -> Iterator[Any]:
    """The stages of the group's jobs (SparkStageInfo)."""
    for job in _group_jobs(tracker, group):
        yield from filter(None, map(tracker.getStageInfo, job.stageIds))


def _tasks_running(sc: Any, group: str) -> bool:
    """Whether a job of the group is still running or any of its tasks has not ended.

    The status tracker learns of tasks from Spark's listener bus, asynchronously: on a busy machine it
    still knew nothing of a cancelled job's last tasks when the job's failure reached us (CI, twice).
    So the bus first processes what was posted so far, and the task scheduler is asked too: the tracker
    has reported a killed task ended while the scheduler still awaited it (its output not yet cleaned up).
    """
    from py4j.protocol import Py4JError

    with suppress(Py4JError):  # timed out (a very busy bus) or a Spark without it: the tracker may lag
        sc._jsc.sc().listenerBus().waitUntilEmpty(5000)
    tracker = sc.statusTracker()
    return (any(job.status == "RUNNING" for job in _group_jobs(tracker, group))
            or any(stage.numActiveTasks for stage in _group_stages(tracker, group))
            or _scheduled_tasks(sc, group) > 0)


def _scheduled_tasks(sc: Any, group: str) -> int:
    """Tasks of the group the task scheduler has launched and not yet heard end of (0 if it cannot say).

    An executor reports a task's end after the task has cleaned up (a killed writer removes its files),
    and the scheduler then forgets it: what the status tracker shows comes later or, for killed tasks,
    sooner. `taskIdToTaskSetManager` is internal to Spark's scheduler; a Spark without it leaves the tracker.
    """
    from py4j.protocol import Py4JError

    try:
        launched = sc._jsc.sc().taskScheduler().taskIdToTaskSetManager().entrySet()
        properties = [entry.getValue().taskSet().properties() for entry in launched]
        return sum(p is not None and p.getProperty("spark.jobGroup.id") == group for p in properties)
    except Py4JError:
        return 0


@contextmanager
def spark_errors(step: str) -> Iterator[None]:
    """A failed Spark job as one line (the Python worker's last error line), not a JVM stack trace."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        yield
    except (PySparkException, Py4JJavaError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith(("at ", "File "))]
        detail = next((ln for ln in reversed(lines) if "Error" in ln or "Exception" in ln), lines[-1] if lines else "")
        raise BatchError(f"{step} failed: {detail[:300]}") from None


@contextmanager
def progress(spark: SparkSession, group: str, expected: int, every: float) -> Iterator[None]:
    """Every `every` seconds, rows scored (from finished tasks of the job) and throughput, when they moved.

    Without news for HEARTBEAT_SECONDS, a line says the job is still at it.
    """
    sc = spark.sparkContext
    stop = threading.Event()
    start = time.perf_counter()

    def report() -> None:
        tracker = sc.statusTracker()
        shown, shown_at = -1, start
        while not stop.wait(every):
            stages = list(_group_stages(tracker, group))
            done, total = sum(s.numCompletedTasks for s in stages), sum(s.numTasks for s in stages)
            now = time.perf_counter()
            if total and (done != shown or now - shown_at >= HEARTBEAT_SECONDS):
                rows = expected * done // total
                logger.info("[score] ~%s of %s rows scored (%d/%d tasks), %s rows/s, %.0f s", f"{rows:,}",
                            f"{expected:,}", done, total, f"{rows / (now - start):,.0f}", now - start)
                shown, shown_at = done, now

    thread = threading.Thread(target=report, name="batch-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every + 5)


