"""The online answer path: parsed requests scored without MLflow's second signature check and without an answer frame,
the body written from the answer's columns; every answer byte for byte what MLflow's path (`PyFuncModel.predict`,
`predictions_to_json`) gives."""

from __future__ import annotations

import io
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server

from creditflow.data.dataset import coerce_columns
from creditflow.serving.coalesce import answer_body, predict
from creditflow.serving.live import Loaded
from creditflow.serving.requests import parse_body
from creditflow.serving.segments import Routing
from tests.conftest import SEGMENT_COLUMN, SegmentStore, tracking_at, with_regions
from tests.serving.test_coalesce import assert_together_as_alone

JSON, CSV = "application/json", "text/csv"


def mlflow_body(answer: pd.DataFrame) -> bytes:
    """The answer as MLflow's scoring server writes it."""
    out = io.StringIO()
    scoring_server.predictions_to_json(answer, out)
    return out.getvalue().encode()


def request_bodies(X: pd.DataFrame) -> list[tuple[bytes, str]]:
    """The same applicants in every format the endpoint reads: dataframe_split, dataframe_records, CSV."""
    split = {"dataframe_split": json.loads(X.to_json(orient="split", index=False))}
    records = {"dataframe_records": json.loads(X.to_json(orient="records"))}
    return [(json.dumps(split).encode(), JSON), (json.dumps(records).encode(), JSON),
            (X.to_csv(index=False).encode(), CSV)]


def assert_same_answers(loaded: Loaded | Routing, X: pd.DataFrame, max_rows: int = 1_000, segment: str = "") -> None:
    """Every format of `X`: the fast path's body equals MLflow's path's, byte for byte."""
    for body, content_type in request_bodies(X):
        frame = parse_body(body, content_type, loaded.spec, max_rows, segment)
        fast, _ = predict(loaded, frame)
        expected = mlflow_body(loaded.answer(frame))  # PyFuncModel.predict: MLflow's signature check first
        assert fast == expected, content_type


def test_numeric_answers_are_those_of_mlflows_path_in_every_format(champion) -> None:
    loaded, X = champion
    X = X.head(60).copy()
    X.iloc[:10, X.columns.get_loc("MonthlyIncome")] = np.nan  # nulls: missing income is normal
    X.iloc[0, X.columns.get_loc("NumberOfTimes90DaysLate")] = 4.0  # a risky applicant: reasons
    assert_same_answers(loaded, X)
    assert_same_answers(loaded, X.drop(columns=["MonthlyIncome", "NumberOfDependents"]))  # nullable, left out
    assert_same_answers(loaded, X[X.columns[::-1]].head(1))  # columns in any order, one applicant
    declined = json.loads(predict(loaded, parse_body(request_bodies(X)[0][0], JSON, loaded.spec, 100))[0])
    assert {p["decision"] for p in declined["predictions"]} == {"approve", "decline"}


def test_value_rules_refuse_the_same_rows_with_the_same_message(champion) -> None:
    loaded, X = champion
    frame = parse_body(request_bodies(X.head(3).assign(age=[30.0, -1.0, 40.0]))[0][0], JSON, loaded.spec, 10)
    assert_same_refusal(loaded, frame, "1 applicant(s) break the value rules; first: row 1: age below 0")


def assert_same_refusal(loaded: Loaded, frame: pd.DataFrame, message: str) -> None:
    """Both paths refuse `frame` with a 400 and `message`."""
    with pytest.raises(MlflowException) as fast:
        predict(loaded, frame)
    with pytest.raises(MlflowException) as mlflows:
        loaded.answer(frame)
    assert fast.value.message == mlflows.value.message == message
    assert fast.value.get_http_status_code() == mlflows.value.get_http_status_code() == 400


def test_categorical_answers_are_those_of_mlflows_path(housing_spec, shap_data) -> None:
    """Text columns (a category, a missing one, one never seen in training) answer as MLflow's path answers them."""
    from creditflow.specs import ExperimentSpec
    from creditflow.train.log_model import log_credit_model
    from tests.model.shap_cases import fit
    from tests.model.test_shap import with_housing

    columns = {**housing_spec.model_dump()["columns"]}
    columns["Housing"] = {**columns["Housing"], "nullable": True, "reason": "Housing status"}
    spec = type(housing_spec).model_validate({**housing_spec.model_dump(), "columns": columns})
    X_train, y_train, X, y = shap_data
    X_train, y_train = with_housing(X_train, y_train, seed=2)
    X_train = coerce_columns(X_train, spec)
    pipe = fit("logistic", spec, X_train, y_train)
    exp = ExperimentSpec(name="test-housing", dataset="give_me_some_credit.yaml", family="logistic")
    mlflow.set_experiment("housing")  # not whichever experiment an earlier test left active
    with mlflow.start_run():
        info = log_credit_model(pipe, exp, spec, X_train)
    loaded = Loaded(mlflow.pyfunc.load_model(info.model_uri), info.model_uri, info.model_uri, "")
    X = with_housing(X, y, seed=3)[0][spec.raw_columns].head(80).copy()
    X.iloc[:2, X.columns.get_loc("Housing")] = ["rent", None]
    assert_same_answers(loaded, X)
    singles = [parse_body(body, JSON, spec, 1) for body, _ in (request_bodies(X.iloc[[i]])[1] for i in range(12))]
    assert singles[0].columns is singles[1].columns  # text columns too: one Index, so they are scored together
    assert_together_as_alone(loaded, singles)  # text columns: pandas' concat
    statements = json.loads(predict(loaded, parse_body(request_bodies(X)[0][0], JSON, spec, 100))[0])
    assert any(s.startswith("Housing status: ") for p in statements["predictions"] for s in p["reason_statements"])
    unknown = parse_body(request_bodies(X.head(3).assign(Housing=["own", "boat", None]))[0][0], JSON, spec, 10)
    assert_same_refusal(loaded, unknown, "1 applicant(s) break the value rules; first: row 1: Housing is not a known "
                                         "category")


def test_segmented_answers_are_those_of_mlflows_path(segment_store: SegmentStore, small_data) -> None:
    """Rows routed to several models, reassembled in request order, each with `segment_model`."""
    from creditflow.serving.live import fetch

    with tracking_at(segment_store.uri):
        fallback, r01 = fetch("models:/credit-default@champion"), fetch("models:/credit-default-R01@champion")
    routing = Routing(fallback, {"R01": r01})
    X = with_regions(small_data.X[fallback.spec.raw_columns].head(30).reset_index(drop=True))
    assert_same_answers(routing, X, segment=SEGMENT_COLUMN)
    assert_same_answers(routing, X.head(1), segment=SEGMENT_COLUMN)  # one model answers: no reassembly


def test_the_body_is_mlflows_for_any_answer_frame() -> None:
    """Floats (shortest repr), text, lists, empty lists, booleans, non-ASCII: the same bytes as MLflow writes."""
    answer = pd.DataFrame({
        "probability": np.array([0.1 + 0.2, 1e-17, 0.5]),
        "decision": pd.Series(["approve", "decline", "approve"], dtype=object),
        "reason_codes": pd.Series([["Debt ratio", "Âge"], [], ["x"]], dtype=object),
        "model_version": "credit-default/3",
        "segment_model": [True, False, True],
    })
    assert answer_body({name: answer[name].tolist() for name in answer.columns}) == mlflow_body(answer)
