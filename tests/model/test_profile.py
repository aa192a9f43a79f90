"""The training profile logged inside the model: PSI, decile bins with a bin for missing, categories, JSON."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from creditflow.data.dataset import CreditData
from creditflow.model.profile import ColumnProfile, ReferenceProfile, profile_column, psi, reference_profile
from creditflow.specs import DatasetSpec


def test_psi_of_a_known_shift() -> None:
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert psi([0.1, 0.2, 0.7], [0.1, 0.2, 0.7]) == 0.0


def test_an_empty_reference_bin_is_floored_not_infinite() -> None:
    expected = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.1 - 1e-4) * math.log(0.1 / 1e-4)
    assert psi([0.5, 0.5, 0.0], [0.5, 0.4, 0.1]) == pytest.approx(expected)


def test_numeric_bins_are_the_training_deciles_and_missing_has_its_own(small_data: CreditData) -> None:
    debt = profile_column(small_data.X["DebtRatio"], categorical=False)
    assert len(debt.edges) == 9 and len(debt.shares) == 11
    assert debt.shares[:10] == pytest.approx([0.1] * 10, abs=0.002) and debt.shares[10] == 0.0

    income = small_data.X["MonthlyIncome"]
    profile = profile_column(income, categorical=False)
    assert profile.shares[-1] == pytest.approx(income.isna().mean())
    assert 0.15 < profile.shares[-1] < 0.25  # the data set's ~20% unreported incomes
    assert sum(profile.shares) == pytest.approx(1.0)


def test_categorical_bins_put_unseen_categories_in_other() -> None:
    profile = profile_column(pd.Series(["rent", "own", "rent", None], dtype=object), categorical=True)
    assert profile.categories == ["own", "rent"] and profile.shares == [0.25, 0.5, 0.0, 0.25]
    assert profile.counts(pd.Series(["mortgage", "rent", None, None], dtype=object)).tolist() == [0, 1, 1, 2]


def test_every_bin_has_a_label_for_the_chart() -> None:
    numeric = profile_column(pd.Series([0.5, 1.0, 1.0, 2.0, 3.0, None]), categorical=False)
    assert len(numeric.bin_labels()) == len(numeric.shares)
    assert numeric.bin_labels()[0].startswith("< ") and numeric.bin_labels()[-2:] == [f">= {numeric.edges[-1]:.3g}",
                                                                                      "missing"]
    categorical = profile_column(pd.Series(["rent", "own"], dtype=object), categorical=True)
    assert categorical.bin_labels() == ["own", "rent", "other", "missing"]


def test_a_profile_round_trips_through_json(small_spec: DatasetSpec, small_data: CreditData) -> None:
    profile = reference_profile(small_data.X, small_spec, np.linspace(0, 1, len(small_data.X)))
    again = ReferenceProfile.model_validate_json(profile.model_dump_json())
    assert again == profile and again.score.shares[:10] == pytest.approx([0.1] * 10, abs=0.001)
    with pytest.raises(ValueError):
        ColumnProfile(shares=[1.0], bins=3)  # an unknown field is refused, not ignored
