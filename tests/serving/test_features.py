"""Online prediction with precomputed batch features: the Redis feature store, its loader and POST /invocations/by-id.

Against the real Redis on this machine (127.0.0.1:6379, database 15), so those tests are marked integration;
each test uses its own dataset name, so its keys are its own, and removes them afterwards.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import redis
import requests

from creditflow.cli import main
from creditflow.data.dataset import CreditData
from creditflow.errors import SpecError
from creditflow.serving.features import (
    KEY_PREFIX,
    FeatureStore,
    FeatureStoreError,
    UnknownApplicants,
    UnreadableRecords,
    load_features,
)
from creditflow.specs import DatasetSpec
from creditflow.train.run import TrainingOutcome
from tests.conftest import ON_REDIS, REDIS, VENV_BIN, free_port, subprocess_env, wait_for_http

pytestmark = ON_REDIS

CLOSED = "redis://127.0.0.1:1/0"  # nothing listens there
CHAMPION = "models:/credit-default@champion"


@pytest.fixture
def store_name() -> Iterator[str]:
    """A dataset name of this test's own; its keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(REDIS)
    keys = list(client.scan_iter(f"{KEY_PREFIX}:{name}:*"))
    if keys:
        client.delete(*keys)


def applicants_file(data: CreditData, path: Path, rows: int = 50) -> pd.DataFrame:
    frame = data.X.head(rows).assign(Id=np.arange(1, rows + 1))[["Id", *data.X.columns]]
    frame.to_parquet(path, index=False)
    return frame


# ---------------------------------------------------------------- the store


@pytest.mark.integration  # Redis
def test_features_round_trip_exactly_with_missing_values_as_null(store_name: str, small_data: CreditData) -> None:
    store = FeatureStore(REDIS, store_name)
    frame = small_data.X.head(3).assign(Id=["a", "b", "c"])
    frame.loc[1, "MonthlyIncome"] = np.nan
    frame.loc[2, "DebtRatio"] = 0.1 + 0.2  # 0.30000000000000004: doubles must survive to the last digit
    assert store.put(frame, "Id") == 3
    records = store.get(["c", "a", "b"])
    assert records[1] == {k: None if pd.isna(v) else v for k, v in small_data.X.iloc[0].items()}
    assert records[0]["DebtRatio"] == 0.1 + 0.2 and records[2]["MonthlyIncome"] is None
    assert store.ttl("a") == -1  # no expiry unless asked


@pytest.mark.integration  # Redis
def test_unknown_applicants_are_named(store_name: str, small_data: CreditData) -> None:
    store = FeatureStore(REDIS, store_name)
    store.put(small_data.X.head(1).assign(Id=["known"]), "Id")
    with pytest.raises(UnknownApplicants, match="applicant\\(s\\) x1, x2") as info:
        store.get(["known", "x1", "x2"])
    assert info.value.ids == ["x1", "x2"]


def test_an_unreachable_store_is_one_line() -> None:
    with pytest.raises(FeatureStoreError, match=f"feature store {CLOSED} read failed \\(ConnectionError"):
        FeatureStore(CLOSED, "x").get(["1"])
    with pytest.raises(FeatureStoreError, match="feature store URL 'http://x'"):
        FeatureStore("http://x", "x")


@pytest.mark.integration  # Redis
def test_lookups_read_together_share_one_mget_and_keep_their_own_answers(store_name: str,
                                                                          small_data: CreditData) -> None:
    store = FeatureStore(REDIS, store_name)
    store.put(small_data.X.head(3).assign(Id=["a", "b", "c"]), "Id")
    calls: list[int] = []

    async def lookups() -> list:
        await store.get_async(["a"])  # the store's connection made, and commands counted from here
        real = store._async.send

        def counted(*command: str) -> asyncio.Future:
            calls.append(command[0] if len(command) == 1 else f"{command[0]} x{len(command) - 1}")
            return real(*command)

        store._async.send = counted
        return await asyncio.gather(store.get_async(["c", "a"]), store.get_async(["x9", "b"]),
                                    store.get_async(["b"]), return_exceptions=True)

    first, unknown, third = asyncio.run(lookups())
    assert calls == ["MGET x5"]  # one MGET for the three requests
    assert first == store.get(["c", "a"]) and third == store.get(["b"])
    assert isinstance(unknown, UnknownApplicants) and unknown.ids == ["x9"]

    async def broken_client() -> list:  # a fault that is not Redis's: each request gets it, none waits forever
        def fails(*command: str) -> asyncio.Future:
            raise ValueError("not a redis error")

        store._async = None  # the first loop's connection is gone with it
        await store.get_async(["a"])
        store._async.send = fails
        both = asyncio.gather(store.get_async(["a"]), store.get_async(["b"]), return_exceptions=True)
        return await asyncio.wait_for(both, timeout=10)  # a lookup left waiting would time out here

    assert [str(f) for f in asyncio.run(broken_client())] == ["not a redis error"] * 2


def test_an_unreachable_store_fails_each_gathered_lookup_in_one_line() -> None:
    store = FeatureStore(CLOSED, "x")

    async def lookups() -> list:
        return await asyncio.gather(store.get_async(["1"]), store.get_async(["2"]), return_exceptions=True)

    failures = asyncio.run(lookups())
    assert [type(f) for f in failures] == [FeatureStoreError, FeatureStoreError]
    assert all(str(f).startswith(f"feature store {CLOSED} read failed (RespError: cannot connect: ")
               for f in failures), failures


@pytest.mark.integration  # Redis
def test_loading_skips_rule_breakers_and_sets_the_ttl(store_name: str, small_spec: DatasetSpec,
                                                      small_data: CreditData, tmp_path: Path) -> None:
    frame = applicants_file(small_data, tmp_path / "a.parquet", 20)
    frame.loc[[3, 7], "age"] = -1.0
    frame.to_csv(tmp_path / "a.csv", index=False)
    store = FeatureStore(REDIS, store_name)
    result = load_features(tmp_path / "a.csv", small_spec, store, ttl_hours=2)
    assert (result.rows, result.loaded, result.skipped) == (20, 18, 2)
    assert 7000 < store.ttl("1") <= 7200
    with pytest.raises(UnknownApplicants, match="applicant\\(s\\) 4"):  # row 3 holds applicant 4
        store.get(["1", "4"])


@pytest.mark.integration  # Redis
def test_a_reload_removes_applicants_that_now_break_a_rule_and_reports_duplicated_ids(
        store_name: str, small_spec: DatasetSpec, small_data: CreditData, tmp_path: Path) -> None:
    frame = applicants_file(small_data, tmp_path / "a.parquet", 10)
    store = FeatureStore(REDIS, store_name)
    assert load_features(tmp_path / "a.parquet", small_spec, store).loaded == 10
    frame.loc[[1, 2], "age"] = -1.0  # applicants 2 and 3 now break a rule
    reload = pd.concat([frame, frame.iloc[[5]].assign(age=50.0)], ignore_index=True)  # applicant 6 twice
    reload.to_csv(tmp_path / "b.csv", index=False)
    result = load_features(tmp_path / "b.csv", small_spec, store)
    assert (result.rows, result.loaded, result.skipped, result.removed, result.duplicated) == (11, 9, 2, 2, 1)
    assert "2 earlier records of them removed" in result.summary() and "1 ids on more than one row" in result.summary()
    assert store.find(["2", "3", "6"])[:2] == [None, None]  # no stale features served
    assert store.get(["6"])[0]["age"] == 50.0  # the last row of a duplicated id


@pytest.mark.integration  # Redis
@pytest.mark.parametrize("hours", [-1.0, 0.0001])
def test_a_ttl_below_one_second_or_negative_is_refused(hours: float, store_name: str, small_spec: DatasetSpec,
                                                       small_data: CreditData, tmp_path: Path) -> None:
    applicants_file(small_data, tmp_path / "a.parquet", 3)
    with pytest.raises(SpecError, match="give 0 \\(no expiry\\) or at least one second"):
        load_features(tmp_path / "a.parquet", small_spec, FeatureStore(REDIS, store_name), ttl_hours=hours)


@pytest.mark.integration  # Redis
def test_an_unreadable_stored_record_is_named(store_name: str, small_data: CreditData) -> None:
    store = FeatureStore(REDIS, store_name)
    store.put(small_data.X.head(1).assign(Id=["ok"]), "Id")
    store.client.set(store.key("bad"), b"{not json")
    with pytest.raises(UnreadableRecords, match="applicant\\(s\\) bad cannot be read"):
        store.find(["ok", "bad"])


# ---------------------------------------------------------------- the command


@pytest.mark.integration  # Redis
def test_features_load_command(model: TrainingOutcome, small_spec: DatasetSpec, small_data: CreditData,
                               tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    applicants_file(small_data, tmp_path / "a.parquet", 30)
    name = small_spec.name  # the model's dataset: keys of the real name, removed below
    try:
        assert main(["features", "load", "--input", str(tmp_path / "a.parquet"), "--store", REDIS]) == 0
        assert "30 applicants loaded into redis://127.0.0.1:6379/15, 0 skipped" in capsys.readouterr().out
        assert FeatureStore(REDIS, name).get(["30"])[0]["age"] == small_data.X.iloc[29]["age"]
    finally:
        client = redis.Redis.from_url(REDIS)
        client.delete(*[f"{KEY_PREFIX}:{name}:{i}" for i in range(1, 31)])

    pd.read_parquet(tmp_path / "a.parquet").drop(columns=["Id"]).to_csv(tmp_path / "no-id.csv", index=False)
    for argv, words in [
        (["--input", str(tmp_path / "no-id.csv"), "--store", REDIS], "missing column(s): Id"),
        (["--input", str(tmp_path / "a.parquet"), "--store", CLOSED], f"feature store {CLOSED} write failed"),
        (["--input", str(tmp_path / "a.parquet"), "--model-uri", "models:/nope@x"], "model models:/nope@x"),
    ]:
        assert main(["features", "load", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err


# ---------------------------------------------------------------- scoring by id


@pytest.fixture
def guarded(model: TrainingOutcome, store_name: str) -> Iterator[dict[str, str]]:
    """The guarded scoring app in-process (uvicorn in a thread): with a feature store, an unreachable one, none."""
    import uvicorn
    from mlflow.pyfunc import scoring_server

    from creditflow.serving.live import LiveModel, fetch
    from creditflow.serving.online import RequestGuard, ServingConfig

    loaded = fetch(CHAMPION)
    stores = {"features": FeatureStore(REDIS, store_name), "down": FeatureStore(CLOSED, store_name), "none": None}
    servers, urls = [], {}
    for kind, features in stores.items():
        port = free_port()
        app = RequestGuard(scoring_server.init(loaded.model), LiveModel(CHAMPION, loaded), ServingConfig(max_rows=10),
                           features)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        servers.append(server)
        urls[kind] = f"http://127.0.0.1:{port}"
    for url in urls.values():
        wait_for_http(f"{url}/ping", timeout=30)
    yield urls
    for server in servers:
        server.should_exit = True


def by_id(url: str, body: object) -> requests.Response:
    return requests.post(f"{url}/invocations/by-id", json=body, timeout=30)


@pytest.mark.integration  # Redis
def test_scoring_by_id_equals_scoring_the_full_records(guarded: dict[str, str], store_name: str,
                                                      small_data: CreditData) -> None:
    frame = small_data.X.iloc[100:108].assign(Id=[f"app-{i}" for i in range(8)])
    frame.loc[frame.index[2], "MonthlyIncome"] = np.nan
    FeatureStore(REDIS, store_name).put(frame, "Id")
    full = frame.drop(columns=["Id"])
    records = full.astype(object).where(full.notna(), None).to_dict("records")  # exact doubles
    expected = requests.post(f"{guarded['features']}/invocations", json={"dataframe_records": records}, timeout=30)
    ids = [f"app-{i}" for i in range(8)]
    answer = by_id(guarded["features"], {"applicant_ids": ids})
    assert answer.status_code == expected.status_code == 200, answer.text
    assert answer.json() == expected.json()
    assert len(answer.json()["predictions"]) == 8
    reordered = by_id(guarded["features"], {"applicant_ids": [ids[5], ids[0]]}).json()["predictions"]
    assert reordered == [expected.json()["predictions"][5], expected.json()["predictions"][0]]


@pytest.mark.integration  # Redis
def test_by_id_mistakes_are_clean_4xx_or_503(guarded: dict[str, str], store_name: str,
                                             small_data: CreditData) -> None:
    FeatureStore(REDIS, store_name).put(small_data.X.head(1).assign(Id=["7"]), "Id")
    FeatureStore(REDIS, store_name).client.set(f"{KEY_PREFIX}:{store_name}:damaged", b"[1, 2")  # not a record
    assert by_id(guarded["features"], {"applicant_ids": [7]}).status_code == 200  # a whole number is an id
    cases = [
        (guarded["features"], {"applicant_ids": ["7", "gone"]}, 404, "no precomputed features for applicant(s) gone"),
        (guarded["features"], {"ids": ["7"]}, 400, "a JSON object with a list of ids"),
        (guarded["features"], {"applicant_ids": []}, 400, "non-empty list"),
        (guarded["features"], {"applicant_ids": [{"id": 7}]}, 400, "non-empty list"),
        (guarded["features"], {"applicant_ids": ["7"] * 11}, 413, "at most 10"),
        (guarded["down"], {"applicant_ids": ["7"]}, 503, "the feature store is unavailable"),
        (guarded["features"], {"applicant_ids": ["7", "damaged"]}, 500, "internal error while scoring"),
        (guarded["none"], {"applicant_ids": ["7"]}, 404, "no feature store"),
    ]
    for url, body, status, words in cases:
        response = by_id(url, body)
        assert response.status_code == status and words in response.json()["message"], (body, response.text)
    assert by_id(guarded["features"], {"applicant_ids": ["7"]}).status_code == 200  # still serving


@pytest.mark.integration
def test_creditflow_serve_with_a_feature_store(store: tuple[str, TrainingOutcome], model: TrainingOutcome,
                                               small_spec: DatasetSpec, small_data: CreditData, tmp_path: Path) -> None:
    """The commands end to end: load features with the CLI, serve with --feature-store, score by id."""
    env = subprocess_env(MLFLOW_TRACKING_URI=store[0])
    frame = applicants_file(small_data, tmp_path / "a.parquet", 5)
    load = subprocess.run([str(VENV_BIN / "creditflow"), "features", "load", "--input", str(tmp_path / "a.parquet"),
                           "--store", REDIS, "--ttl-hours", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert load.returncode == 0, load.stderr
    refused = subprocess.run([str(VENV_BIN / "creditflow"), "serve", "--feature-store", CLOSED, "-p",
                              str(free_port())], capture_output=True, text=True, env=env, timeout=120)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert refused.returncode == 2 and len(errors) == 1 and f"feature store {CLOSED} ping failed" in errors[0]

    port = free_port()
    proc = subprocess.Popen([str(VENV_BIN / "creditflow"), "serve", "--feature-store", REDIS, "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", proc, timeout=120)
        answer = by_id(f"http://127.0.0.1:{port}", {"applicant_ids": ["5", "1"]})
        assert answer.status_code == 200, answer.text
        expected = mlflow.pyfunc.load_model(CHAMPION).predict(frame.iloc[[4, 0]].drop(columns=["Id"]))
        assert [p["probability"] for p in answer.json()["predictions"]] == expected["probability"].tolist()
        assert [p["decision"] for p in answer.json()["predictions"]] == expected["decision"].tolist()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        redis.Redis.from_url(REDIS).delete(*[f"{KEY_PREFIX}:{small_spec.name}:{i}" for i in range(1, 6)])
