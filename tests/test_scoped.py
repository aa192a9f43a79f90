"""Settings scoped to a block: set inside, as they were after."""

from __future__ import annotations

import os

import mlflow

from creditflow.scoped import tracking_uri


def test_a_tracking_uri_wins_over_what_an_earlier_task_set_and_is_undone_after(tmp_path) -> None:
    earlier, ours = f"sqlite:///{tmp_path / 'earlier.db'}", f"sqlite:///{tmp_path / 'ours.db'}"
    mlflow.set_tracking_uri(earlier)  # as MLflow's spark_udf leaves a reused Spark worker
    os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///elsewhere.db"
    try:
        with tracking_uri(ours):
            assert mlflow.get_tracking_uri() == ours and os.environ["MLFLOW_TRACKING_URI"] == ours
        assert mlflow.get_tracking_uri() == earlier
        assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db"
    finally:
        mlflow.set_tracking_uri(None)
