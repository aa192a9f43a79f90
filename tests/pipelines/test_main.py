"""The main pipeline's last steps: the champion (or the best version) batch-scores the demo sample."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from creditflow.pipelines.main import champion_or_best, score_sample
from creditflow.serving.batch.table import (
    PredictionTable,
    default_table_url,
)
from creditflow.train.run import TrainingOutcome
from tests.conftest import CHAMPION


def test_champion_or_best_falls_back_to_the_best_version(own_champion_store: tuple[str, TrainingOutcome]) -> None:
    """It removes the alias for a while: on a private copy of the champion store, never the shared one."""
    _, model = own_champion_store
    client = mlflow.MlflowClient()
    assert champion_or_best([model]) == CHAMPION
    client.delete_registered_model_alias("credit-default", "champion")
    try:
        assert champion_or_best([model]) == f"models:/credit-default/{model.registered_version}"
    finally:
        client.set_registered_model_alias("credit-default", "champion", model.registered_version)


@pytest.mark.spark
def test_the_demo_sample_is_scored_with_the_champion(spark, model: TrainingOutcome, tmp_path: Path) -> None:
    result = score_sample([model], 2000, output=tmp_path / "predictions", spark=spark)
    assert result.rows_in == 2000 == result.rows_scored + result.rows_quarantined
    assert result.model_uri == f"models:/credit-default/{model.registered_version}"  # @champion, pinned
    assert PredictionTable(default_table_url(tmp_path / "predictions")).count() == result.rows_scored
