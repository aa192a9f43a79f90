"""Fixtures shared by the serving tests."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from creditflow.data.dataset import split_data
from creditflow.serving.live import Loaded
from tests.conftest import ChampionStore, tracking_at


@pytest.fixture(scope="module")
def champion(champion_store: ChampionStore, small_data) -> tuple[Loaded, pd.DataFrame]:
    """The session's champion as the endpoint loads it, and its held-out applicants (raw columns)."""
    with tracking_at(champion_store.uri):
        model = mlflow.pyfunc.load_model(champion_store.outcome.model_uri)
    version = champion_store.outcome.registered_version
    loaded = Loaded(model, f"models:/credit-default/{version}", f"credit-default/{version}", str(version))
    exp = champion_store.exp
    return loaded, split_data(small_data, exp.test_size, exp.seed).X_test[loaded.spec.raw_columns]
