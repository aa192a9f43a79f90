"""A segmented deployment (serving/segments.yaml): routing, the deployment's checks, and one real endpoint.

The segment models come from the session's `segment_store`: credit-default-R01 (@champion) and
credit-default-R02 (no champion) trained on their rows of the small data; R03 has no model.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests

from creditflow.errors import BadRequest, SpecError, TrackingError
from creditflow.serving.live import Loaded, fetch
from creditflow.serving.online import load_serving_config
from creditflow.serving.requests import parse_body
from creditflow.serving.segments import Routing, SegmentsConfig, resolve_deployment
from creditflow.serving.typed import RoutedRows
from tests.conftest import (
    ROOT,
    SEGMENT_COLUMN,
    VENV_BIN,
    SegmentStore,
    copy_store,
    free_port,
    subprocess_env,
    tracking_at,
    wait_for_http,
    with_regions,
)

pytestmark = [pytest.mark.integration]

TEMPLATE = "models:/credit-default-{segment}@champion"
DEPLOYMENT = SegmentsConfig(column=SEGMENT_COLUMN, model=TEMPLATE, values=("R01", "R02", "R03"))
JSON = "application/json"


def body(frame: pd.DataFrame) -> str:
    return json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))})


def mixed_rows(small_data) -> pd.DataFrame:
    """12 applicants of every segment, an unknown one (R99) and a missing one, in mixed order."""
    frame = with_regions(small_data.X.head(12)).reset_index(drop=True)
    frame.loc[3, SEGMENT_COLUMN], frame.loc[7, SEGMENT_COLUMN] = "R99", None
    return frame


# ---------------------------------------------------------------- the deployment file


def test_the_shipped_deployment_file_is_valid() -> None:
    config = load_serving_config(ROOT / "serving" / "segments.yaml")
    assert config.segments.column == "Region" and config.model_uri == config.segments.fallback
    assert config.segments.values == tuple(f"R{i:02d}" for i in range(1, 21))
    assert config.segments.uri("R07") == "models:/credit-default-R07@champion"


@pytest.mark.parametrize(("text", "words"), [
    ("segments: {column: Region, model: 'models:/credit-default@champion', values: [R01]}", "{segment}"),
    ("segments: {column: Region, model: 'models:/m-{segment}@champion', values: [R01, R01]}", "listed twice: R01"),
    ("segments: {column: Region, model: 'models:/m-{segment}@champion', values: []}", "values"),
    ("shadow: models:/x@challenger\nsegments: {column: Region, model: 'models:/m-{segment}@champion', "
     "values: [R01]}", "no shadow"),
    ("model_uri: models:/other@champion\nsegments: {column: Region, model: 'models:/m-{segment}@champion', "
     "values: [R01]}", "not the segments' fallback"),
    ("segments: [Region]", "segments"),
])
def test_a_malformed_deployment_is_one_line(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "segments.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match="invalid field") as caught:
        load_serving_config(path)
    assert words in str(caught.value) and "\n" not in str(caught.value)


# ---------------------------------------------------------------- requests


def test_a_request_without_the_segment_column_is_a_400_naming_it(small_spec, small_data) -> None:
    frame = small_data.X.head(2)
    with pytest.raises(BadRequest, match="missing the segment column Region") as caught:
        parse_body(body(frame).encode(), JSON, small_spec, 10, SEGMENT_COLUMN)
    assert caught.value.status == 400
    with pytest.raises(BadRequest, match="column Region must hold text or null"):
        parse_body(body(frame.assign(Region=7)).encode(), JSON, small_spec, 10, SEGMENT_COLUMN)
    parsed = parse_body(body(mixed_rows(small_data)).encode(), JSON, small_spec, 20, SEGMENT_COLUMN)
    assert parsed.segments[:8] == ["R01", "R02", "R03", "R99", "R02", "R03", "R01", None]
    assert SEGMENT_COLUMN not in parsed.frame.columns  # no model reads it
    with pytest.raises(BadRequest, match="unknown column"):  # a single-model endpoint does not take it
        parse_body(body(mixed_rows(small_data)).encode(), JSON, small_spec, 20)


# ---------------------------------------------------------------- the registry side


def test_the_deployment_is_resolved_segment_by_segment(segment_store: SegmentStore) -> None:
    with tracking_at(segment_store.uri):
        refs = resolve_deployment(DEPLOYMENT)
        assert refs.fallback.label == segment_store.fallback
        assert {s: ref and ref.label for s, ref in refs.segments.items()} == {
            "R01": f"credit-default-R01/{segment_store.versions['R01']}", "R02": None, "R03": None}
        for wrong, words in [
            (DEPLOYMENT.model_copy(update={"fallback": "models:/no-such-model@champion"}), "no-such-model"),
            (DEPLOYMENT.model_copy(update={"model": "models:/credit-default-{segment}-typo@champion"}),
             "no registered model matches models:/credit-default-{segment}-typo@champion"),
            (DEPLOYMENT.model_copy(update={"column": "Product"}), "a model of segment column 'Region'"),
        ]:
            with pytest.raises(TrackingError) as caught:
                resolve_deployment(wrong)
            assert words in str(caught.value)


class Counting:
    """A loaded model that counts its predict calls and the rows each got."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def predict(self, frame):
        self.calls.append(len(frame))
        return self.model.predict(frame)

    def unwrap_python_model(self):
        return self.model.unwrap_python_model()


def test_rows_are_routed_with_one_predict_call_per_model(segment_store: SegmentStore, small_data) -> None:
    with tracking_at(segment_store.uri):
        fallback, r01 = fetch("models:/credit-default@champion"), fetch(TEMPLATE.format(segment="R01"))
    counted = {"fallback": Counting(fallback.model), "R01": Counting(r01.model)}
    routing = Routing(Loaded(counted["fallback"], fallback.uri, fallback.label, fallback.version),
                      {"R01": Loaded(counted["R01"], r01.uri, r01.label, r01.version)})
    frame = mixed_rows(small_data)
    features = frame.drop(columns=[SEGMENT_COLUMN])
    answer = routing.answer(RoutedRows(features, frame[SEGMENT_COLUMN].tolist()))
    own = frame[SEGMENT_COLUMN] == "R01"
    assert counted["R01"].calls == [int(own.sum())] and counted["fallback"].calls == [int((~own).sum())]
    assert answer["model_version"].tolist() == [r01.label if o else fallback.label for o in own]
    assert answer["segment_model"].tolist() == own.tolist()
    own_p, global_p = r01.model.predict(features)["probability"], fallback.model.predict(features)["probability"]
    np.testing.assert_allclose(answer["probability"], np.where(own, own_p, global_p), rtol=1e-12)
    assert not np.allclose(own_p, global_p)  # the segment model is not the global one
    for value, model, flagged in [("R01", r01, True), ("R99", fallback, False), (None, fallback, False)]:
        single = routing.answer(RoutedRows(features.head(1), [value]))  # one model: the frame goes through whole
        assert single["model_version"].tolist() == [model.label] and single["segment_model"].tolist() == [flagged]
        assert single["probability"].tolist() == pytest.approx([(own_p if flagged else global_p)[0]], rel=1e-12)


# ---------------------------------------------------------------- one endpoint, end to end


def test_one_endpoint_answers_for_every_segment_and_follows_each_alias(segment_store: SegmentStore, small_data,
                                                                      tmp_path: Path) -> None:
    store = copy_store(segment_store.root, tmp_path / "store")  # R02 gets promoted below
    config = tmp_path / "segments.yaml"
    config.write_text(f"reload_seconds: 1\nsegments: {DEPLOYMENT.model_dump_json()}\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(VENV_BIN / "creditflow"), "serve", "--config", str(config), "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=subprocess_env(MLFLOW_TRACKING_URI=store),
                                cwd=tmp_path)
    try:
        wait_for_http(f"{url}/ping", proc, timeout=180)
        r01 = f"credit-default-R01/{segment_store.versions['R01']}"
        assert requests.get(f"{url}/models", timeout=10).json() == {"models": [
            {"segment": "R01", "model_version": r01},
            {"segment": "R02", "model_version": segment_store.fallback},
            {"segment": "R03", "model_version": segment_store.fallback},
            {"segment": None, "model_version": segment_store.fallback}]}
        frame = mixed_rows(small_data)
        answered = requests.post(f"{url}/invocations", data=body(frame), headers={"Content-Type": JSON}, timeout=30)
        predictions = answered.json()["predictions"]
        assert [(p["model_version"], p["segment_model"]) for p in predictions] == [
            (r01, True) if s == "R01" else (segment_store.fallback, False) for s in frame[SEGMENT_COLUMN]]
        assert all({"probability", "decision", "reason_codes"} <= set(p) for p in predictions)
        missing = requests.post(f"{url}/invocations", data=body(small_data.X.head(2)),
                                headers={"Content-Type": JSON}, timeout=30)
        assert missing.status_code == 400 and "segment column Region" in missing.json()["message"]

        with tracking_at(store):  # promoted while the server runs: served from the next poll, no restart
            mlflow.MlflowClient().set_registered_model_alias("credit-default-R02", "champion",
                                                             segment_store.versions["R02"])
        r02 = f"credit-default-R02/{segment_store.versions['R02']}"
        deadline = time.monotonic() + 60
        while {"segment": "R02", "model_version": r02} not in requests.get(
                f"{url}/models", timeout=10).json()["models"]:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        again = requests.post(f"{url}/invocations", data=body(frame), headers={"Content-Type": JSON}, timeout=30)
        assert [p["model_version"] for p in again.json()["predictions"]] == [
            {"R01": r01, "R02": r02}.get(s, segment_store.fallback) for s in frame[SEGMENT_COLUMN]]
        metrics = requests.get(f"{url}/metrics", timeout=10).text
        assert f'creditflow_rows_scored_total{{model_version="{r02}"}}' in metrics
        health = requests.get(f"{url}/health", timeout=10).json()
        assert health["segment_column"] == "Region" and health["model_version"] == segment_store.fallback
        assert health["segments"]["R02"]["model_version"] == r02 and health["segments"]["R03"]["model_version"] is None
        deadline = time.monotonic() + 60
        while health["segments"]["R03"]["polls"] == 0:  # R03's follower polls on its own thread: its first may lag
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
            health = requests.get(f"{url}/health", timeout=10).json()
        assert health["segments"]["R03"]["poll_errors"] == 0 and health["segments"]["R03"]["model_version"] is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_deployment_naming_no_registered_model_stops_the_server_in_one_line(segment_store: SegmentStore,
                                                                              tmp_path: Path, capsys) -> None:
    from creditflow.cli import main

    config = tmp_path / "segments.yaml"
    config.write_text("segments: {column: Region, fallback: 'models:/credit-default@champion', "
                      "model: 'models:/credit-default-{segment}-typo@champion', values: [R01, R02]}\n")
    with tracking_at(segment_store.uri):
        assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no registered model matches" in errors[0] and "Traceback" not in err
