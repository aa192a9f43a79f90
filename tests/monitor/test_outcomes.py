"""Outcomes joined to batch predictions: by id and batch, unknown ids counted, pending outcomes left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from creditflow.errors import DataError
from creditflow.monitor.outcomes import join_vintages, read_batches
from creditflow.specs import DatasetSpec
from tests.monitor.batches import write_batch


def write_outcomes(folder: Path, month: str, ids: list[int], defaults: list[int], known: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"Id": ids, "SeriousDlqin2yrs": defaults, "known_month": known}).to_csv(
        folder / f"{month}.csv", index=False)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Two batches; applicant 3 scored in both with different probabilities; outcomes for three months."""
    predictions, outcomes = tmp_path / "predictions", tmp_path / "outcomes"
    write_batch(predictions, "2025-01", np.array([1, 2, 3]), np.array([0.1, 0.2, 0.3]), version="1")
    write_batch(predictions, "2025-02", np.array([3, 4, 5]), np.array([0.9, 0.4, 0.5]), version="2")
    write_outcomes(outcomes, "2024-12", [7, 8], [0, 1], known="2025-03")
    write_outcomes(outcomes, "2025-01", [1, 2, 3, 99], [0, 1, 1, 0], known="2025-03")
    write_outcomes(outcomes, "2025-02", [3, 4, 5], [1, 0, 0], known="2025-04")
    return predictions, outcomes


def test_each_vintage_takes_its_own_batch_prediction(folders: tuple[Path, Path], small_spec: DatasetSpec) -> None:
    predictions, outcomes = folders
    vintages, unscored = join_vintages(read_batches(predictions), outcomes, small_spec, "2025-04")
    first, second = vintages
    assert (first.vintage, first.model_version, first.scored) == ("2025-01", "1", 3)
    assert first.y.tolist() == [0, 1, 1] and first.p.tolist() == [0.1, 0.2, 0.3]  # applicant 3 at 0.3 here
    assert second.y.tolist() == [1, 0, 0] and second.p.tolist() == [0.9, 0.4, 0.5]  # and at 0.9 here
    assert (first.unknown, second.unknown) == (1, 0)  # applicant 99 was never scored in 2025-01
    assert unscored == {"2024-12": 2}


def test_outcomes_not_yet_known_are_left_out(folders: tuple[Path, Path], small_spec: DatasetSpec) -> None:
    predictions, outcomes = folders
    vintages, _ = join_vintages(read_batches(predictions), outcomes, small_spec, "2025-03")
    assert [len(v.y) for v in vintages] == [3, 0]
    assert [v.pending for v in vintages] == [0, 3]


@pytest.mark.parametrize(("frame", "message"), [
    (pd.DataFrame({"applicant": [1], "SeriousDlqin2yrs": [1]}), "2025-01.csv: no id column 'Id'"),
    (pd.DataFrame({"Id": [1, 2], "SeriousDlqin2yrs": [0, 2]}),
     "2025-01.csv: target 'SeriousDlqin2yrs' must be binary with positive value 1; found 0, 2"),
    (pd.DataFrame({"Id": [1, 2], "SeriousDlqin2yrs": ["yes", "no"]}),
     "target 'SeriousDlqin2yrs' must be binary with positive value 1; found no, yes"),
    (pd.DataFrame({"Id": [41, 42], "SeriousDlqin2yrs": [0, 1]}),
     "2025-01.csv: none of its 2 outcome ids is among the 3 applicants of batch 2025-01"),
])
def test_bad_outcome_files_are_one_line(tmp_path: Path, small_spec: DatasetSpec, frame: pd.DataFrame,
                                        message: str) -> None:
    write_batch(tmp_path / "predictions", "2025-01", np.array([1, 2, 3]), np.array([0.1, 0.2, 0.3]))
    (tmp_path / "outcomes").mkdir()
    frame.to_csv(tmp_path / "outcomes" / "2025-01.csv", index=False)
    with pytest.raises(DataError, match=message.replace("(", r"\(")) as caught:
        join_vintages(read_batches(tmp_path / "predictions"), tmp_path / "outcomes", small_spec, "2025-06")
    assert "\n" not in str(caught.value)


def test_no_scored_batch_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no scored batches"):
        read_batches(tmp_path)
