"""A model logged by the code before the package layout (commit c0911ca) still loads, serves and batch-scores.

The fixture is that model's files as MLflow wrote them (`tests/fixtures/model_before_layout/`): its
skops file names `creditflow.pipeline.CreditFeatures`, its `model_code.py` imports
`creditflow.model.CreditModel`. Its predictions on 20 held-out rows were stored when it was logged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests

from tests.conftest import FIXTURES, ROOT, VENV_BIN, free_port, subprocess_env, wait_for_http

MODEL = FIXTURES / "model_before_layout"


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "model_before_layout_rows.csv")


@pytest.fixture(scope="module")
def expected() -> pd.DataFrame:
    stored = pd.read_csv(FIXTURES / "model_before_layout_predictions.csv", keep_default_na=False)
    return stored.assign(reason_codes=stored["reason_codes"].map(lambda text: text.split("|") if text else []))


def assert_same(answer: pd.DataFrame, expected: pd.DataFrame) -> None:
    np.testing.assert_allclose(answer["probability"].to_numpy(float), expected["probability"], rtol=0, atol=1e-12)
    assert list(answer["decision"]) == list(expected["decision"])
    assert [list(codes) for codes in answer["reason_codes"]] == list(expected["reason_codes"])


def test_it_loads_with_this_code_and_predicts_as_when_it_was_logged(rows, expected) -> None:
    model = mlflow.pyfunc.load_model(str(MODEL))
    assert sys.modules["creditflow.model"].__file__.startswith(str(ROOT / "src"))
    assert type(model.unwrap_python_model()).__module__ == "creditflow.model.pyfunc"
    assert_same(model.predict(rows), expected)
    assert (expected["decision"] == "decline").any() and expected["reason_codes"].map(len).gt(0).all()


@pytest.mark.integration
def test_creditflow_serve_answers_for_it(rows, expected, tmp_path: Path) -> None:
    port = free_port()
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([str(VENV_BIN / "creditflow"), "serve", "-m", str(MODEL), "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=tmp_path)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", proc, timeout=120)
        body = {"dataframe_split": {"columns": list(rows.columns),
                                    "data": rows.astype(object).where(rows.notna(), None).values.tolist()}}
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert_same(pd.DataFrame(answer.json()["predictions"]), expected)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.spark
@pytest.mark.slow
def test_the_batch_job_scores_it(rows, expected, tmp_path: Path) -> None:
    """`creditflow score batch` in its own process: Spark's Python workers import the model's own copy of the
    package (MLflow puts its code path first), which is the old flat one, so they must not be the session's."""
    rows.assign(Id=range(1, len(rows) + 1)).to_parquet(tmp_path / "rows.parquet", index=False)
    job = subprocess.run([str(VENV_BIN / "creditflow"), "score", "batch", "--model-uri", str(MODEL),
                          "--input", str(tmp_path / "rows.parquet"), "--output", str(tmp_path / "out"),
                          "--batch-id", "old", "--master", "local[1]",
                          "--config", str(ROOT / "serving" / "batch" / "job.yaml")],
                         capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=300)
    assert job.returncode == 0, job.stderr[-2000:]
    assert "rows in 20 = scored 20 + quarantined 0" in job.stdout
    scored = pd.read_parquet(tmp_path / "out" / "scored" / "batch_id=old")
    scored = scored.assign(Id=scored["applicant_id"].astype(int)).sort_values("Id")
    np.testing.assert_allclose(scored["probability"].to_numpy(float), expected["probability"], rtol=0, atol=1e-12)
    assert list(scored["decision"]) == list(expected["decision"])
    assert [json.loads(c) for c in scored["reason_codes"]] == list(expected["reason_codes"])
