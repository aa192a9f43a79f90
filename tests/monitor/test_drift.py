"""Drift monitoring: PSI against the training profile logged inside the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from creditflow.cli import main
from creditflow.data.dataset import CreditData
from creditflow.data.synthetic import generate_credit_data
from creditflow.model.profile import (
    PROFILE_ARTIFACT,
    ReferenceProfile,
    psi,
    reference_profile,
)
from creditflow.monitor.drift import MONITOR_EXPERIMENT, status_of
from creditflow.specs import DatasetSpec
from creditflow.train.run import TrainingOutcome

CHAMPION = "models:/credit-default@champion"


def shifted(frame: pd.DataFrame) -> pd.DataFrame:
    """Incomes halved and half the applicants without a dependents count: a population the model never saw."""
    out = frame.copy()
    out["MonthlyIncome"] = out["MonthlyIncome"] * 0.5
    out.loc[out.index[::2], "NumberOfDependents"] = np.nan
    return out


def monitoring_runs() -> list[mlflow.entities.Run]:
    exp = mlflow.get_experiment_by_name(MONITOR_EXPERIMENT)
    return mlflow.search_runs([exp.experiment_id], output_format="list") if exp else []


# ---------------------------------------------------------------- PSI and profiles


@pytest.mark.parametrize(("value", "status"), [(0.02, "stable"), (0.1, "moderate shift"), (0.25, "major shift")])
def test_psi_bands(value: float, status: str) -> None:
    assert status_of(value) == status


def test_a_sample_of_the_same_population_is_stable_and_a_shifted_one_is_not(
        small_spec: DatasetSpec, small_data: CreditData) -> None:
    X = small_data.X
    profile = reference_profile(X.iloc[:3000], small_spec, np.linspace(0, 1, 3000))
    same = X.iloc[3000:]

    def drift(frame: pd.DataFrame) -> dict[str, float]:
        return {raw: psi(p.shares, p.counts(frame[raw]) / len(frame)) for raw, p in profile.columns.items()}

    assert max(drift(same).values()) < 0.02
    moved = drift(shifted(same))
    assert moved["MonthlyIncome"] >= 0.25 and moved["NumberOfDependents"] >= 0.25
    assert max(v for k, v in moved.items() if k not in ("MonthlyIncome", "NumberOfDependents")) < 0.02


# ---------------------------------------------------------------- the model and the command


@pytest.fixture
def batches(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh draw of the training population (another seed) and the same draw shifted."""
    fresh = generate_credit_data(4000, seed=7).frame
    fresh.to_parquet(tmp_path / "same.parquet", index=False)
    shifted(fresh).to_csv(tmp_path / "shifted.csv", index=False)
    return tmp_path / "same.parquet", tmp_path / "shifted.csv"


def test_the_logged_model_carries_its_training_profile(model: TrainingOutcome, small_data: CreditData,
                                                       tmp_path: Path) -> None:
    path = Path(mlflow.artifacts.download_artifacts(model.model_uri, dst_path=str(tmp_path)))
    profile = ReferenceProfile.model_validate_json((path / "artifacts" / f"{PROFILE_ARTIFACT}.json").read_text())
    assert 0.5 * len(small_data.X) < profile.rows < len(small_data.X)  # the training split
    assert set(profile.columns) == set(small_data.X.columns)
    assert len(profile.score.edges) == 9 and profile.score.shares[:10] == pytest.approx([0.1] * 10, abs=0.002)


def test_drift_of_the_same_population_is_stable_and_logged(model: TrainingOutcome, batches: tuple[Path, Path],
                                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    same, _ = batches
    before = len(monitoring_runs())
    assert main(["monitor", "drift", "--model-uri", CHAMPION, "--input", str(same),
                 "--report", str(tmp_path / "report.json")]) == 0
    out = capsys.readouterr().out
    assert "4,000 rows" in out and "Monthly income" in out and "Score (probability of default)" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "stable" and report["model_version"] == model.registered_version
    assert report["rows"] == 4000 and len(report["columns"]) == 11
    assert max(c["psi"] for c in report["columns"].values()) < 0.1

    runs = monitoring_runs()  # newest first
    assert len(runs) == before + 1 and runs[0].data.tags["drift_status"] == "stable"
    assert runs[0].data.tags["model_version"] == model.registered_version
    assert runs[0].data.metrics["psi.MonthlyIncome"] == pytest.approx(report["columns"]["MonthlyIncome"]["psi"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id)}
    assert {"drift_report.json", "drift_distributions.png"} <= artifacts


def test_a_major_shift_exits_3_naming_the_columns_and_keeps_the_report(
        model: TrainingOutcome, batches: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, moved = batches
    before = len(monitoring_runs())
    code = main(["monitor", "drift", "--model-uri", CHAMPION, "--input", str(moved),
                 "--report", str(tmp_path / "report.json"), "--no-log"])
    err = capsys.readouterr().err.strip()
    assert code == 3 and len(err.splitlines()) == 1
    assert "Monthly income" in err and "Number of dependents" in err and "Age" not in err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "major shift"
    assert report["columns"]["MonthlyIncome"]["status"] == "major shift"
    assert report["columns"]["age"]["status"] == "stable"
    assert len(monitoring_runs()) == before  # --no-log


def test_bad_input_and_unknown_models_are_one_line(model: TrainingOutcome, batches: tuple[Path, Path],
                                                   tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    same, _ = batches
    pd.read_parquet(same).drop(columns=["age", "DebtRatio"]).to_csv(tmp_path / "partial.csv", index=False)
    cases = {
        "missing column(s): age, DebtRatio": [CHAMPION, tmp_path / "partial.csv"],
        "no such file": [CHAMPION, tmp_path / "nowhere.csv"],
        "model models:/nope@champion": ["models:/nope@champion", same],
    }
    for expected, (uri, path) in cases.items():
        assert main(["monitor", "drift", "--model-uri", uri, "--input", str(path), "--no-log"]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err
    (tmp_path / "a-file").write_text("")
    assert main(["monitor", "drift", "--model-uri", CHAMPION, "--input", str(same), "--no-log",
                 "--report", str(tmp_path / "a-file" / "report.json")]) == 2  # its folder is a file
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot write the report to {tmp_path / 'a-file' / 'report.json'}: ") and (
        len(err.splitlines()) == 1), err


def test_a_model_logged_before_profiles_says_to_retrain(model: TrainingOutcome, batches: tuple[Path, Path],
                                                        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    old = Path(mlflow.artifacts.download_artifacts(model.model_uri, dst_path=str(tmp_path / "old")))
    (old / "artifacts" / f"{PROFILE_ARTIFACT}.json").unlink()
    capsys.readouterr()  # the download's progress bars
    assert main(["monitor", "drift", "--model-uri", str(old), "--input", str(batches[0]), "--no-log"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no reference profile" in err and "retrain" in err and len(err.splitlines()) == 1
    shutil.rmtree(old)


def test_an_absent_optional_column_is_missing_in_every_row(model: TrainingOutcome, batches: tuple[Path, Path],
                                                          tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pd.read_parquet(batches[0]).drop(columns=["NumberOfDependents"]).to_parquet(tmp_path / "no-deps.parquet")
    assert main(["monitor", "drift", "--model-uri", CHAMPION, "--input", str(tmp_path / "no-deps.parquet"),
                 "--report", str(tmp_path / "report.json"), "--no-log"]) == 3
    dependents = json.loads((tmp_path / "report.json").read_text())["columns"]["NumberOfDependents"]
    assert dependents["batch"][-1] == 1.0 and dependents["status"] == "major shift"
    assert "Number of dependents" in capsys.readouterr().err


def test_a_batch_with_no_scorable_row_reports_the_score_as_not_computable(
        model: TrainingOutcome, batches: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    same, _ = batches
    pd.read_parquet(same).assign(NumberOfDependents=-1.0).to_csv(tmp_path / "broken.csv", index=False)
    code = main(["monitor", "drift", "--model-uri", CHAMPION, "--input", str(tmp_path / "broken.csv"),
                 "--report", str(tmp_path / "report.json")])
    captured = capsys.readouterr()
    assert code == 3 and "Number of dependents" in captured.err and "Score" not in captured.err
    assert "not computable: no row within the value rules was scored" in captured.out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rows_scored"] == 0 and report["score_status"].startswith("not computable")
    assert "score" not in report["columns"] and report["columns"]["age"]["status"] == "stable"
    assert "psi.score" not in monitoring_runs()[0].data.metrics


@pytest.mark.parametrize(("rows", "words"), [(0, "the file has a header but no rows"),
                                             (1, "1 row(s); drift needs at least 20 rows")])
def test_an_empty_or_one_row_batch_is_one_line(rows: int, words: str, model: TrainingOutcome,
                                               batches: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    same, _ = batches
    pd.read_parquet(same).head(rows).to_csv(tmp_path / "few.csv", index=False)
    assert main(["monitor", "drift", "--model-uri", CHAMPION, "--input", str(tmp_path / "few.csv"), "--no-log"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err
