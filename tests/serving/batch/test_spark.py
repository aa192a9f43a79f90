"""The Spark session the batch job starts: input splits per core, the driver's heap and collector, start failures;
job groups that end only with their tasks."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from creditflow.data.dataset import CreditData
from creditflow.serving.batch import spark as batch_spark
from creditflow.serving.batch.spark import start_spark
from creditflow.train.run import TrainingOutcome
from tests.conftest import CHAMPION, VENV_BIN, spark_test_config, subprocess_env
from tests.serving.batch import applicants


@pytest.mark.spark
def test_input_splits_follow_the_core_count_not_a_fixed_size(spark, tmp_path: Path) -> None:
    """Each task loads the model again in local mode: splits_per_core tasks a core, whatever the input's size."""
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({"x": rng.random(3_000_000)}), tmp_path / "big.parquet", row_group_size=50_000)
    assert (tmp_path / "big.parquet").stat().st_size > 20 * 2**20  # ~24 MB, 60 row groups
    try:
        splits = {}
        for per_core in (1, 2, 3):
            start_spark(spark_test_config(splits_per_core=per_core))  # the running session, its SQL settings reset
            splits[per_core] = spark.read.parquet(str(tmp_path / "big.parquet")).rdd.getNumPartitions()
        assert splits == {1: 2, 2: 4, 3: 6}
    finally:
        start_spark(spark_test_config())


@pytest.mark.spark
def test_the_driver_jvm_takes_its_whole_heap_at_start_and_the_throughput_collector(spark) -> None:
    """Its footprint is the configured heap from the first second, whatever the input's size."""
    management = spark.sparkContext._jvm.java.lang.management.ManagementFactory
    args = list(management.getRuntimeMXBean().getInputArguments())
    assert {"-Xms1g", "-Xmx1g", "-XX:+AlwaysPreTouch"} <= set(args)
    collectors = {bean.getName() for bean in management.getGarbageCollectorMXBeans()}
    assert collectors == {"PS Scavenge", "PS MarkSweep"}  # Parallel GC; G1 would be G1 Young/Old Generation


@pytest.mark.spark
def test_a_spark_that_cannot_start_is_one_line(store: tuple[str, TrainingOutcome], small_data: CreditData,
                                              tmp_path: Path) -> None:
    """A heap the machine cannot give (it is taken whole at start): one error line, no traceback."""
    applicants(small_data, 10).to_parquet(tmp_path / "in.parquet", index=False)
    (tmp_path / "job.yaml").write_text("master: local[1]\ndriver_memory: 4000g\n")
    proc = subprocess.run(
        [str(VENV_BIN / "creditflow"), "score", "batch", "--model-uri", CHAMPION, "--input",
         str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out"), "--config", str(tmp_path / "job.yaml")],
        capture_output=True, text=True, cwd=tmp_path, env=subprocess_env(MLFLOW_TRACKING_URI=store[0]), timeout=120,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(errors) == 1 and "Spark could not start on local[1] with driver_memory 4000g" in errors[0]


@pytest.mark.spark
def test_a_cancelled_job_group_ends_only_once_the_scheduler_has_heard_each_task_end(spark) -> None:
    """A cancelled job fails at once, its killed tasks end later (a killed writer cleans up): the group waits for them.

    The status tracker alone once let the group end while Spark's scheduler still awaited two killed tasks."""
    sc, group, left = spark.sparkContext, "slow-tasks", []

    def job() -> None:
        with pytest.raises(Exception, match="cancel"), batch_spark.job_group(spark, group, "tasks that take 6 s"):
            sc.parallelize(range(2), 2).map(lambda x: time.sleep(6) or x).collect()
        left.append(batch_spark._scheduled_tasks(sc, group))

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.monotonic() + 60
    while batch_spark._scheduled_tasks(sc, group) < 2 and time.monotonic() < deadline:  # both tasks launched
        time.sleep(0.01)
    assert batch_spark._scheduled_tasks(sc, group) == 2
    sc.cancelJobGroup(group)
    thread.join(60)
    assert left == [0]
