"""Planning a batch: bad input, unknown models and bad table URLs are one line, before Spark starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from creditflow.cli import main
from creditflow.data.dataset import CreditData
from creditflow.serving.batch.plan import plan_batch
from creditflow.serving.batch.spark import BatchError
from creditflow.specs import DatasetSpec
from creditflow.train.run import TrainingOutcome, train_and_log
from tests.conftest import CHAMPION, small_experiment, tracking_at
from tests.serving.batch import applicants


def test_bad_input_is_one_line_before_spark_starts(model: TrainingOutcome, small_data: CreditData, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    def no_spark(*args: object, **kwargs: object) -> None:
        raise AssertionError("Spark started before the input was checked")

    monkeypatch.setattr("creditflow.serving.batch.spark.start_spark", no_spark)
    frame = applicants(small_data, 10)
    frame.drop(columns=["age", "DebtRatio"]).to_parquet(tmp_path / "cols.parquet", index=False)
    frame.drop(columns=["Id"]).to_csv(tmp_path / "noid.csv", index=False)
    frame.assign(age=frame.age.astype(bool)).to_parquet(tmp_path / "bool.parquet", index=False)
    cases = {
        "cols.parquet": "missing column(s) the model needs: age, DebtRatio",
        "noid.csv": "missing id column 'Id' (pass --id-column NAME)",
        "bool.parquet": "column type(s) the model cannot take: age (bool)",
        "nothing.csv": "no such file or directory",
    }
    for name, message in cases.items():
        code = main(["score", "batch", "--model-uri", CHAMPION, "--input", str(tmp_path / name),
                     "--output", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err, (name, err)
    code = main(["score", "batch", "--model-uri", "models:/credit-default@nobody", "--input",
                 str(tmp_path / "cols.parquet"), "--output", str(tmp_path / "out"), "--batch-id", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "models:/credit-default@nobody" in err
    code = main(["score", "batch", "--model-uri", CHAMPION, "--input", str(tmp_path / "noid.csv"), "--id-column",
                 "age", "--output", str(tmp_path / "out"), "--table", "mysql://db/predictions"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unsupported table URL 'mysql://db/predictions'" in err
    with pytest.raises(BatchError, match="batch id"):
        plan_batch(CHAMPION, tmp_path / "noid.csv", tmp_path / "out", batch_id="../etc", id_column="age")
    assert not (tmp_path / "out").exists()


def test_a_model_whose_spec_names_no_id_column_is_scored_by_an_id_column_given_on_the_command_line(
        small_spec: DatasetSpec, small_data: CreditData, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Trained on a file without ids (rows numbered), the model still scores batches: the ids come from --id-column;
    the feature store, keyed by id, says in one line that the spec needs one."""
    spec = small_spec.model_copy(update={"id_column": None})
    applicants(small_data, 10).to_parquet(tmp_path / "in.parquet", index=False)
    with tracking_at(f"sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path):
        uri = train_and_log(small_experiment(**{"explain.enabled": False, "cv_folds": 2}), spec, small_data).model_uri
        batch = ["score", "batch", "--model-uri", uri, "--input", str(tmp_path / "in.parquet"), "--output",
                 str(tmp_path / "out")]
        assert main(batch) == 2
        assert "names no id_column: batch scoring needs one (pass --id-column NAME)" in error_line(capsys)
        assert plan_batch(uri, tmp_path / "in.parquet", tmp_path / "out", id_column="Id").id_column == "Id"
        assert main(["features", "load", "--model-uri", uri, "--input", str(tmp_path / "in.parquet")]) == 2
        assert "names no id_column: the feature store needs one" in error_line(capsys)


def error_line(capsys: pytest.CaptureFixture) -> str:
    """The one error line of a command (MLflow may log INFO lines to stderr too), without a traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]
