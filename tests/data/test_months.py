"""Applicants month by month: drift from the onset, outcomes known after the lag, the labelled window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from creditflow.cli import main
from creditflow.data.calendar import month_range
from creditflow.data.months import (
    FEATURES,
    LATE_WEIGHT,
    drifted_log_odds,
    generate_month,
    generate_months,
    labelled_window,
)
from creditflow.data.synthetic import TARGET, sigmoid, true_log_odds
from creditflow.errors import DataError
from creditflow.train.metrics import rank_auc

ROWS = 4000


def test_a_month_is_reproducible_per_seed_and_independent_of_the_others() -> None:
    first = generate_month(3, "2025-04", "concept", "2025-03", rows=500, seed=7)
    again = generate_month(3, "2025-04", "concept", "2025-03", rows=500, seed=7)
    other = generate_month(3, "2025-04", "concept", "2025-03", rows=500, seed=8)
    pd.testing.assert_frame_equal(first.applicants, again.applicants)
    pd.testing.assert_frame_equal(first.outcomes, again.outcomes)
    assert not first.applicants[list(FEATURES)].equals(other.applicants[list(FEATURES)])
    assert first.applicants["Id"].tolist() == list(range(1501, 2001))


def test_covariate_drift_lowers_incomes_and_raises_utilisation_under_the_same_relation() -> None:
    before = generate_month(0, "2025-09", "covariate", "2025-10", rows=ROWS)
    after = generate_month(0, "2025-10", "covariate", "2025-10", rows=ROWS)  # same draws, shifted
    income_ratio = after.applicants["MonthlyIncome"].median() / before.applicants["MonthlyIncome"].median()
    assert 0.55 < income_ratio < 0.65
    util = "RevolvingUtilizationOfUnsecuredLines"
    assert after.applicants[util].median() > before.applicants[util].median() + 0.1
    np.testing.assert_allclose(after.truth["true_probability"], sigmoid(true_log_odds(after.applicants)))
    assert after.outcomes[TARGET].mean() > before.outcomes[TARGET].mean() + 0.01


def test_concept_drift_keeps_the_population_and_makes_the_old_relation_rank_worse() -> None:
    before = generate_month(0, "2025-09", "concept", "2025-10", rows=ROWS)
    after = generate_month(0, "2025-10", "concept", "2025-10", rows=ROWS)
    pd.testing.assert_frame_equal(before.applicants, after.applicants)
    y = after.outcomes[TARGET].to_numpy()
    old_truth = sigmoid(true_log_odds(after.applicants))
    achievable = rank_auc(y, after.truth["true_probability"].to_numpy())
    assert achievable - rank_auc(y, old_truth) > 0.04  # the best model of before loses more than 0.02
    rows = after.applicants[after.applicants["NumberOfTimes90DaysLate"] < 96]
    once_late = rows.assign(NumberOfTimes90DaysLate=1)
    never = rows.assign(NumberOfTimes90DaysLate=0)
    weight_before = true_log_odds(once_late) - true_log_odds(never)
    weight_after = drifted_log_odds(once_late, 1.0) - drifted_log_odds(never, 1.0)
    np.testing.assert_allclose(weight_after, LATE_WEIGHT * weight_before)  # a late payment weighs 2.5 times more


def test_files_share_ids_and_outcomes_are_known_after_the_lag(tmp_path: Path) -> None:
    months = generate_months(tmp_path, 3, "2025-11", "none", rows_per_month=200, outcome_lag=2)
    assert months == ["2025-11", "2025-12", "2026-01"]
    applicants = pd.read_csv(tmp_path / "applicants" / "2025-12.csv")
    outcomes = pd.read_csv(tmp_path / "outcomes" / "2025-12.csv")
    truth = pd.read_csv(tmp_path / "truth" / "2025-12.csv")
    assert list(applicants.columns) == ["Id", *FEATURES]
    assert applicants["Id"].tolist() == outcomes["Id"].tolist() == truth["Id"].tolist() == list(range(201, 401))
    assert set(outcomes["known_month"]) == {"2026-02"} and set(outcomes[TARGET]) <= {0, 1}
    written = generate_month(1, "2025-12", rows=200, outcome_lag=2).applicants
    pd.testing.assert_frame_equal(applicants, written, check_dtype=False)


def test_labelled_window_takes_the_latest_months_whose_outcomes_are_known(tmp_path: Path) -> None:
    generate_months(tmp_path, 6, "2025-01", rows_per_month=100, outcome_lag=3)
    window = labelled_window(tmp_path, "2025-06", 2)
    assert window.months == ["2025-02", "2025-03"]  # 2025-04's outcomes are known only in 2025-07
    assert list(window.frame.columns) == ["Id", TARGET, *FEATURES]
    assert window.frame["Id"].tolist() == list(range(101, 301))
    outcomes = pd.read_csv(tmp_path / "outcomes" / "2025-03.csv")
    assert window.frame[TARGET].tolist()[100:] == outcomes[TARGET].tolist()
    assert labelled_window(tmp_path, "2025-09", 12).months == month_range("2025-01", 6)
    with pytest.raises(DataError, match="no application month has all its outcomes known by 2025-03"):
        labelled_window(tmp_path, "2025-03", 6)


@pytest.mark.parametrize(("args", "message"), [
    (["--start", "2025-13"], "error: --start must be a month as YYYY-MM, got '2025-13'"),
    (["--start", "2025-01", "--drift", "concept"], "error: drift 'concept' needs an onset month (--onset YYYY-MM)"),
])
def test_generate_command_refuses_bad_months_in_one_line(capsys, tmp_path: Path, args: list[str], message: str) -> None:
    assert main(["data", "generate", "--months", "2", "--output", str(tmp_path), *args]) == 2
    assert capsys.readouterr().err == message + "\n"


def test_generate_command_writes_the_months(capsys, tmp_path: Path) -> None:
    code = main(["data", "generate", "--months", "2", "--start", "2025-01", "--drift", "both", "--onset", "2025-02",
                 "--output", str(tmp_path), "--rows-per-month", "50", "--outcome-lag", "1", "--seed", "3"])
    assert code == 0
    assert "2 months 2025-01..2025-02 of 50 applicants (drift both from 2025-02)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "outcomes").iterdir()) == ["2025-01.csv", "2025-02.csv"]
