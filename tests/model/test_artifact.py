"""What the logged model carries: its config keys."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from creditflow.model.artifact import CONFIG_KEYS, RETIRED_KEYS, check_config_keys, model_config
from tests.conftest import small_experiment


def test_the_config_keys_are_what_model_config_writes(small_spec) -> None:
    assert set(model_config(small_experiment(), small_spec)) == CONFIG_KEYS


def test_keys_of_earlier_versions_are_accepted_and_unknown_ones_refused(small_spec) -> None:
    """Models logged before a special path was removed carry its key (e.g. "decision_as": "label")."""
    config = model_config(small_experiment(), small_spec)
    assert not RETIRED_KEYS & CONFIG_KEYS
    check_config_keys({**config, "decision_as": "label", "reason_codes_as_key": False, "freeze_gc_after_load": False})
    with pytest.raises(MlflowException, match="a_later_key"):
        check_config_keys({**config, "a_later_key": 1})
