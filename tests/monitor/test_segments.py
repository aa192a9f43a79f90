"""Drift of a segmented deployment: each segment's rows against its model's training data, and overall."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from creditflow.cli import main
from creditflow.monitor.drift import MONITOR_EXPERIMENT
from tests.conftest import SEGMENT_COLUMN, SegmentStore, copy_store, tracking_at, with_regions
from tests.monitor.test_drift import shifted

pytestmark = [pytest.mark.integration]


def deployment(tmp_path: Path) -> Path:
    path = tmp_path / "segments.yaml"
    path.write_text("segments: {column: Region, model: 'models:/credit-default-{segment}@champion', "
                    "values: [R01, R02, R03, R04]}\n")
    return path


def test_drift_is_reported_per_segment_against_its_own_model_and_overall(segment_store: SegmentStore, small_data,
                                                                         tmp_path: Path, capsys) -> None:
    frame = with_regions(small_data.X.sample(1_500, random_state=3)).reset_index(drop=True)
    r01 = frame[SEGMENT_COLUMN] == "R01"
    moved = shifted(frame[r01])  # only R01's applicants move
    frame.loc[r01, moved.columns] = moved
    frame.loc[:4, SEGMENT_COLUMN] = "R04"  # R04: listed, 5 rows, no model: too few to compare
    frame.to_parquet(tmp_path / "batch.parquet", index=False)
    store = copy_store(segment_store.root, tmp_path / "store")  # a monitoring run is logged into it
    with tracking_at(store):
        code = main(["monitor", "drift", "--deployment", str(deployment(tmp_path)), "--input",
                     str(tmp_path / "batch.parquet"), "--report", str(tmp_path / "report.json")])
        run = mlflow.search_runs([mlflow.get_experiment_by_name(MONITOR_EXPERIMENT).experiment_id],
                                 output_format="list")[0]
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # MLflow may log INFO lines too
    assert code == 3 and len(errors) == 1 and "Monthly income [R01]" in errors[0] and "Traceback" not in err
    report = json.loads((tmp_path / "report.json").read_text())
    segments = report["segments"]
    assert set(segments) == {"R01", "R02", "R03"} and report["segments_too_few_rows"] == {"R04": 5}
    assert segments["R01"]["model_name"] == "credit-default-R01"  # its own champion's training data
    assert segments["R02"]["model_name"] == "credit-default"  # no champion: the fallback's
    assert segments["R01"]["columns"]["MonthlyIncome"]["status"] == "major shift"
    assert segments["R02"]["status"] == "stable" and segments["R03"]["status"] == "stable"
    assert report["rows"] == 1_500 and segments["R01"]["rows"] == int(r01.sum()) - sum(frame.index[:5].isin(
        frame.index[r01]))
    assert report["columns"]["MonthlyIncome"]["psi"] < segments["R01"]["columns"]["MonthlyIncome"]["psi"]
    r01_income = segments["R01"]["columns"]["MonthlyIncome"]["psi"]
    assert run.data.metrics["psi.R01.MonthlyIncome"] == pytest.approx(r01_income)
    assert run.data.metrics["psi.MonthlyIncome"] == pytest.approx(report["columns"]["MonthlyIncome"]["psi"])
    assert "by Region: each segment against its model's training data" in out


def test_a_batch_without_the_segment_column_is_one_line(segment_store: SegmentStore, small_data, tmp_path: Path,
                                                        capsys) -> None:
    small_data.X.head(50).to_parquet(tmp_path / "batch.parquet", index=False)
    with tracking_at(segment_store.uri):
        code = main(["monitor", "drift", "--deployment", str(deployment(tmp_path)), "--input",
                     str(tmp_path / "batch.parquet"), "--no-log"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"error: {tmp_path / 'batch.parquet'}: missing column(s): Region"
