"""Segments trained on Spark (`--master local[2]`): one applyInPandas over the segment column, each task logging its
nested run and registering its model on the same tracking server as the driver."""

from __future__ import annotations

import mlflow
import pytest

from creditflow.train.segments import train_segments
from creditflow.train.segments_spark import spark_trainer
from tests.conftest import segmented_experiment, small_regions, tracking_at


@pytest.mark.spark
@pytest.mark.integration
@pytest.mark.slow
def test_segments_train_as_spark_tasks_logging_to_the_tracking_server(spark, mlflow_server: str) -> None:
    spec, data = small_regions(rows=2_400, segments=3, thin="R03")
    exp = segmented_experiment(name="segmented-spark", **{"segments.min_rows": 300})
    with tracking_at(mlflow_server):
        training = train_segments(exp, spec, data, spark_trainer(spark))
        client = mlflow.MlflowClient()
        children = client.search_runs([client.get_experiment_by_name("segmented-spark").experiment_id],
                                      f"tags.mlflow.parentRunId = '{training.parent_run_id}'")
        assert sorted(r.info.run_name for r in children) == ["global", "segment-R01", "segment-R02"]
        for result in training.results[1:3]:
            run = client.get_run(result.outcome.run_id)
            assert run.data.params["data.rows"] == str(result.rows)  # the group's rows reached its task
            assert run.data.tags["segment"] == result.segment and run.info.status == "FINISHED"
            assert client.get_registered_model(f"credit-default-{result.segment}").tags["global_model"] == \
                "credit-default"
        assert training.results[3].outcome is None and training.results[3].skipped.startswith("too few rows")
