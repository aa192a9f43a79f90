"""The CLI: user mistakes end in one line on stderr and exit 2; no run is left RUNNING."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from creditflow import cli
from creditflow.cli import main
from tests.conftest import EXPERIMENTS, ROOT, free_port, subprocess_env


def test_unknown_spec(capsys) -> None:
    assert main(["train", "--spec", "experiments/nope.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: spec file not found") and err.count("\n") == 1


def test_missing_data_file_leaves_no_run(capsys, tmp_path: Path) -> None:
    code = main(["train", "--spec", str(EXPERIMENTS / "logistic_baseline.yaml"), "--data", str(tmp_path / "x.csv")])
    assert code == 2
    assert "x.csv: no such file or directory" in capsys.readouterr().err
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_wrong_schema_is_named(capsys, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b\n1,2\n")
    spec = str(EXPERIMENTS / "logistic_baseline.yaml")
    assert main(["train", "--spec", spec, "--data", str(tmp_path / "d.csv")]) == 2
    assert "missing column(s): Id, SeriousDlqin2yrs" in capsys.readouterr().err


def test_unreachable_tracking_server(capsys) -> None:
    mlflow.set_tracking_uri(f"http://127.0.0.1:{free_port()}")  # also sets MLFLOW_TRACKING_URI
    assert main(["train", "--spec", str(EXPERIMENTS / "logistic_baseline.yaml")]) == 2
    assert "is unreachable" in capsys.readouterr().err


def test_unreachable_tracking_server_fails_batch_scoring_and_serving_at_once(capsys, tmp_path: Path) -> None:
    """Our check's line, not MLflow's: its client would retry for ~4 minutes before failing."""
    mlflow.set_tracking_uri(f"http://127.0.0.1:{free_port()}")
    (tmp_path / "in.parquet").write_bytes(b"")
    assert main(["score", "batch", "--model-uri", "models:/credit-default@champion", "--input",
                 str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out")]) == 2
    assert main(["serve", "--model-uri", "models:/credit-default@champion"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("is unreachable" in line for line in lines)
    assert not (tmp_path / "out").exists()


def test_invalid_override_is_named(capsys) -> None:
    assert main(["train", "--spec", str(EXPERIMENTS / "xgboost_bayes.yaml"), "--cv-folds", "1"]) == 2
    assert "invalid field 'cv_folds'" in capsys.readouterr().err


@pytest.mark.integration
def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / "creditflow"), "train", "--spec", "missing.yaml"],
                          capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: spec file not found: missing.yaml"


def test_commands_run_without_artifact_progress_bars_and_restore_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []
    monkeypatch.setattr(cli, "_cmd_predictions_get", lambda args: seen.append(os.environ.get(cli.PROGRESS_BARS)) or 0)
    monkeypatch.setenv(cli.PROGRESS_BARS, "true")
    assert cli.main(["predictions", "get", "--id", "1"]) == 0
    assert seen == ["false"] and os.environ[cli.PROGRESS_BARS] == "true"


@pytest.mark.parametrize(("argv", "words"), [
    ([], "give one of --model-uri (one model) and --deployment"),
    (["--model-uri", "models:/credit-default@champion", "--deployment", "serving/segments.yaml"], "give one of"),
    (["--deployment", "serving/online.yaml"], "no `segments:` block"),
])
def test_batch_scoring_takes_a_model_or_a_deployment(capsys, argv: list[str], words: str) -> None:
    argv = [str(ROOT / a) if a.startswith("serving/") else a for a in argv]
    assert main(["score", "batch", "--input", "in.parquet", "--output", "out", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and len(err.splitlines()) == 1, err
