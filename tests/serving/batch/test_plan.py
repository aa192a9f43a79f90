"""Planning a batch: bad input, unknown models and bad table URLs are one line, before Spark starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from creditflow.cli import main
from creditflow.data.dataset import CreditData
from creditflow.serving.batch.plan import plan_batch
from creditflow.serving.batch.spark import BatchError
from creditflow.train.run import TrainingOutcome
from tests.conftest import CHAMPION
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
