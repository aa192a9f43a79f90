"""Tests for the synthetic Give-Me-Some-Credit generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from creditflow.data.synthetic import (
    LATE_COLUMNS,
    RAW_COLUMNS,
    SEGMENT_COLUMN,
    GeneratedCredit,
    generate_credit_data,
    region_effects,
    true_log_odds,
    write_kaggle_csv,
)

N_ROWS = 20_000
EXPECTED_COLUMNS = [
    "Id",
    "SeriousDlqin2yrs",
    "RevolvingUtilizationOfUnsecuredLines",
    "age",
    "NumberOfTime30-59DaysPastDueNotWorse",
    "DebtRatio",
    "MonthlyIncome",
    "NumberOfOpenCreditLinesAndLoans",
    "NumberOfTimes90DaysLate",
    "NumberRealEstateLoansOrLines",
    "NumberOfTime60-89DaysPastDueNotWorse",
    "NumberOfDependents",
]
EXPECTED_DTYPES = {
    "Id": "int64",
    "SeriousDlqin2yrs": "int64",
    "RevolvingUtilizationOfUnsecuredLines": "float64",
    "age": "int64",
    "NumberOfTime30-59DaysPastDueNotWorse": "int64",
    "DebtRatio": "float64",
    "MonthlyIncome": "float64",
    "NumberOfOpenCreditLinesAndLoans": "int64",
    "NumberOfTimes90DaysLate": "int64",
    "NumberRealEstateLoansOrLines": "int64",
    "NumberOfTime60-89DaysPastDueNotWorse": "int64",
    "NumberOfDependents": "float64",
}


@pytest.fixture(scope="module")
def data() -> GeneratedCredit:
    """A 20,000-row sample with the default seed."""
    return generate_credit_data(N_ROWS, seed=42)


@pytest.fixture(scope="module")
def csv_path(data: GeneratedCredit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample written as a Kaggle-style CSV."""
    path = tmp_path_factory.mktemp("csv") / "cs-training.csv"
    write_kaggle_csv(data.frame, path)
    return path


def _sentinel(frame: pd.DataFrame) -> pd.Series:
    """Rows carrying the 96/98 sentinel."""
    return frame["NumberOfTime30-59DaysPastDueNotWorse"] >= 96


def test_raw_columns_constant() -> None:
    assert tuple(EXPECTED_COLUMNS[1:]) == RAW_COLUMNS


def test_schema_and_dtypes(data: GeneratedCredit) -> None:
    frame = data.frame
    assert list(frame.columns) == EXPECTED_COLUMNS
    assert {c: str(t) for c, t in frame.dtypes.items()} == EXPECTED_DTYPES
    assert len(frame) == N_ROWS
    np.testing.assert_array_equal(frame["Id"], np.arange(1, N_ROWS + 1))
    assert isinstance(frame.index, pd.RangeIndex)
    assert data.true_probability.shape == (N_ROWS,)
    assert data.true_probability.dtype == np.float64


def test_same_seed_is_identical() -> None:
    first, second = generate_credit_data(3_000, seed=7), generate_credit_data(3_000, seed=7)
    pd.testing.assert_frame_equal(first.frame, second.frame, check_exact=True)
    np.testing.assert_array_equal(first.true_probability, second.true_probability)


def test_different_seeds_differ() -> None:
    first, second = generate_credit_data(3_000, seed=7), generate_credit_data(3_000, seed=8)
    assert not first.frame.equals(second.frame)
    assert not np.array_equal(first.true_probability, second.true_probability)
    same_age = (first.frame["age"] == second.frame["age"]).mean()
    assert same_age < 0.1


def test_rejects_non_positive_size() -> None:
    with pytest.raises(ValueError):
        generate_credit_data(0)


def test_positive_rate(data: GeneratedCredit) -> None:
    rate = data.frame["SeriousDlqin2yrs"].mean()
    assert 0.060 < rate < 0.075
    assert set(data.frame["SeriousDlqin2yrs"].unique()) == {0, 1}
    assert 0.062 < data.true_probability.mean() < 0.072


def test_intercept_calibrated_to_6_7_percent() -> None:
    mean_probability = generate_credit_data(200_000, seed=0).true_probability.mean()
    assert 0.065 < mean_probability < 0.069


def test_missing_rates(data: GeneratedCredit) -> None:
    frame = data.frame
    income_missing = frame["MonthlyIncome"].isna()
    dependents_missing = frame["NumberOfDependents"].isna()
    assert 0.185 < income_missing.mean() < 0.212
    assert 0.020 < dependents_missing.mean() < 0.032
    assert not (dependents_missing & ~income_missing).any()
    assert frame.drop(columns=["MonthlyIncome", "NumberOfDependents"]).notna().all().all()


def test_sentinel_rows(data: GeneratedCredit) -> None:
    frame, probability = data.frame, data.true_probability
    sentinel = _sentinel(frame)
    assert 15 <= sentinel.sum() <= 70
    late = frame.loc[sentinel, list(LATE_COLUMNS)]
    assert late.isin([96, 98]).all().all()
    assert (late.nunique(axis=1) == 1).all()
    assert (late.to_numpy() == 98).mean() > 0.7
    normal = frame.loc[~sentinel, list(LATE_COLUMNS)]
    assert normal.max().max() <= 17
    assert (normal >= 18).sum().sum() == 0
    assert probability[sentinel.to_numpy()].min() > 0.3
    assert frame.loc[sentinel, "SeriousDlqin2yrs"].mean() > 0.3


def test_late_counts_mostly_zero_with_tail(data: GeneratedCredit) -> None:
    normal = data.frame.loc[~_sentinel(data.frame)]
    zero_30, zero_60, zero_90 = (normal[c].eq(0).mean() for c in LATE_COLUMNS)
    assert 0.80 < zero_30 < 0.88
    assert 0.93 < zero_60 < 0.97
    assert 0.92 < zero_90 < 0.96
    assert normal[LATE_COLUMNS[0]].max() >= 6
    assert normal[LATE_COLUMNS[2]].max() >= 6


def test_debt_ratio_is_amount_where_income_missing(data: GeneratedCredit) -> None:
    frame = data.frame
    income = frame["MonthlyIncome"]
    debt_missing = frame.loc[income.isna(), "DebtRatio"]
    debt_reported = frame.loc[income > 0, "DebtRatio"]
    assert 700 < debt_missing.median() < 1_600
    assert debt_missing.max() > 10_000
    assert 0.2 < debt_reported.median() < 0.45
    assert 0.02 < (debt_reported > 1).mean() < 0.12
    assert (frame["DebtRatio"] >= 0).all()


def test_feature_ranges(data: GeneratedCredit) -> None:
    frame = data.frame
    util = frame["RevolvingUtilizationOfUnsecuredLines"]
    assert (util >= 0).all()
    assert 0.60 < util.le(1).mean() < 0.99
    assert 0.01 < util.gt(1).mean() < 0.05
    assert util.max() > 1_000
    assert frame["age"].between(21, 103).all()
    assert 50 < frame["age"].mean() < 54
    assert 8.0 < frame["NumberOfOpenCreditLinesAndLoans"].mean() < 9.0
    assert 0.9 < frame["NumberRealEstateLoansOrLines"].mean() < 1.15
    dependents = frame["NumberOfDependents"].dropna()
    assert 0.68 < dependents.mean() < 0.84
    assert (dependents == np.round(dependents)).all()
    income = frame["MonthlyIncome"].dropna()
    assert (income == np.round(income)).all()
    assert 4_500 < income.median() < 6_500
    assert 0.005 < income.eq(0).mean() < 0.025


def test_true_probability_and_bayes_auc(data: GeneratedCredit) -> None:
    probability = data.true_probability
    assert np.isfinite(probability).all()
    assert ((probability > 0) & (probability < 1)).all()
    auc = roc_auc_score(data.frame["SeriousDlqin2yrs"], probability)
    assert 0.83 < auc < 0.90


def test_risk_directions(data: GeneratedCredit) -> None:
    frame = data.frame.loc[~_sentinel(data.frame)]
    p = pd.Series(data.true_probability, index=data.frame.index).loc[frame.index]
    late_90 = frame["NumberOfTimes90DaysLate"]
    assert p[late_90 > 0].mean() > 4 * p[late_90 == 0].mean()
    util = frame["RevolvingUtilizationOfUnsecuredLines"]
    assert p[util.between(0.9, 1.5)].mean() > 4 * p[util.between(0, 0.1)].mean()
    age = frame["age"]
    assert p[age < 35].mean() > 2.5 * p[age > 65].mean()
    income = frame["MonthlyIncome"]
    assert p[income > 10_000].mean() < p[income.between(1, 3_000)].mean()


def test_probability_is_function_of_observed_columns(data: GeneratedCredit, csv_path: Path) -> None:
    from_file = pd.read_csv(csv_path)
    recomputed = 1 / (1 + np.exp(-true_log_odds(from_file)))
    np.testing.assert_allclose(recomputed, data.true_probability, rtol=1e-12)


def test_csv_header_and_layout(csv_path: Path) -> None:
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "," + ",".join(RAW_COLUMNS)
    assert lines[1].startswith("1,")
    assert lines[-1].startswith(f"{N_ROWS},")
    assert len(lines) == N_ROWS + 1
    text = csv_path.read_text()
    assert ",NA," in text
    assert "nan" not in text.lower()
    reported = next(line for line in lines[1:] if ",NA," not in line)
    income_cell = reported.split(",")[6]
    assert income_cell.isdigit()


def test_csv_round_trip(data: GeneratedCredit, csv_path: Path) -> None:
    read = pd.read_csv(csv_path)
    assert read.columns[0] == "Unnamed: 0"
    assert list(read.columns[1:]) == list(RAW_COLUMNS)
    restored = read.rename(columns={"Unnamed: 0": "Id"})
    pd.testing.assert_frame_equal(restored, data.frame, check_exact=True)
    assert read["MonthlyIncome"].isna().sum() == data.frame["MonthlyIncome"].isna().sum()


# ---------------------------------------------------------------- regions (generated: {segments: N})


def test_no_segments_is_the_data_of_before(data: GeneratedCredit) -> None:
    without = generate_credit_data(N_ROWS, seed=42, segments=0)
    pd.testing.assert_frame_equal(without.frame, data.frame, check_exact=True)
    np.testing.assert_array_equal(without.true_probability, data.true_probability)


@pytest.fixture(scope="module")
def regions() -> GeneratedCredit:
    return generate_credit_data(48_000, seed=7, segments=12)


def test_regions_are_a_last_column_and_change_nothing_but_the_target(regions: GeneratedCredit) -> None:
    plain = generate_credit_data(48_000, seed=7)
    assert list(regions.frame.columns) == [*plain.frame.columns, SEGMENT_COLUMN]
    assert sorted(regions.frame[SEGMENT_COLUMN].unique()) == [f"R{k:02d}" for k in range(1, 13)]
    features = [c for c in plain.frame.columns if c != "SeriousDlqin2yrs"]
    pd.testing.assert_frame_equal(regions.frame[features], plain.frame[features], check_exact=True)
    recomputed = 1 / (1 + np.exp(-true_log_odds(regions.frame)))  # the truth reads the Region column
    np.testing.assert_allclose(recomputed, regions.true_probability, rtol=1e-12)


def test_the_truth_says_which_regions_a_model_of_their_own_can_beat_the_global_one_on(
        regions: GeneratedCredit) -> None:
    """docs/generated_data.md: regions whose number is a multiple of 4 rank applicants differently (the pooled,
    standard score loses AUC there); every other region differs from the standard only in its base rate."""
    frame = regions.frame
    standard = true_log_odds(frame.drop(columns=[SEGMENT_COLUMN]))
    for k in range(1, 13):
        rows = (frame[SEGMENT_COLUMN] == f"R{k:02d}").to_numpy()
        y = frame.loc[rows, "SeriousDlqin2yrs"]
        gap = roc_auc_score(y, regions.true_probability[rows]) - roc_auc_score(y, standard[rows])
        offset = region_effects(k)[0]
        if k % 4:
            assert gap == pytest.approx(0.0, abs=1e-12)
            np.testing.assert_allclose(true_log_odds(frame[rows]), standard[rows] + offset, rtol=0, atol=1e-12)
        else:
            assert gap > 0.02, f"R{k:02d}: the truth beats the standard score by only {gap:.4f}"
