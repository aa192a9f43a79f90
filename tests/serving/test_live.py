"""Serving that follows the registry, against real processes: a real `mlflow server` (a copy of the session's
champion store), `creditflow serve` subprocesses following @champion every second, clients posting all along,
and promotions made with scripts/promote_model.py. The stream scorer follows the alias too, on real Redis.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from creditflow.data.dataset import CreditData, split_data
from creditflow.registry.evidence import shadow_evidence
from creditflow.serving.features import FeatureStore
from creditflow.serving.live import LiveModel, fetch
from creditflow.serving.stream import StreamScorer
from creditflow.serving.stream_config import load_stream_config
from creditflow.specs import DatasetSpec
from creditflow.train.run import train_and_log
from tests.conftest import (
    ON_REDIS,
    REDIS,
    ROOT,
    VENV_BIN,
    ChampionStore,
    copy_store,
    free_port,
    running_mlflow_server,
    small_experiment,
    subprocess_env,
    tracking_at,
    wait_for_http,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, ON_REDIS]

NAME = "credit-default"
RELOAD = 1.0  # seconds between registry polls in these tests
LOAD_BUDGET = 30.0  # seconds a worker may take to download, load and warm a new version on a busy CI machine


@dataclass(frozen=True)
class Registry:
    url: str  # the mlflow server
    v1: str
    v2: str  # the same model registered again: a second version with the same answers
    broken: str  # a version whose pipeline artifact is corrupt


def broken_version(work: Path) -> str:
    """Register a copy of v1 whose pipeline file is garbage: it cannot load."""
    files = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(work / "broken")))
    for skops in files.rglob("*.skops"):
        skops.write_bytes(b"not a skops file")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(files), "model")
    return str(mlflow.register_model(f"runs:/{run.info.run_id}/model", NAME).version)


@pytest.fixture(scope="module")
def registry(champion_store: ChampionStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A real tracking server over a private copy of the champion store, with a second and a broken version."""
    root = tmp_path_factory.mktemp("live")
    uri = copy_store(champion_store.root, root / "store")
    with running_mlflow_server(uri, root) as url, tracking_at(url):
        v2 = str(mlflow.register_model(champion_store.outcome.model_uri, NAME).version)
        yield Registry(url, champion_store.outcome.registered_version, v2, broken_version(root))


@dataclass
class Clients:
    """Threads posting one applicant each, back to back, on new connections; every outcome recorded."""

    url: str
    body: str
    answers: list[tuple[float, int, str]] = field(default_factory=list)  # (sent at, status, model_version or error)
    stop: threading.Event = field(default_factory=threading.Event)

    def post(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                r = requests.post(f"{self.url}/invocations", data=self.body, timeout=30,
                                  headers={"Content-Type": "application/json"})
                version = r.json()["predictions"][0]["model_version"] if r.status_code == 200 else r.text[:200]
                self.answers.append((sent, r.status_code, version))
            except requests.RequestException as exc:
                self.answers.append((sent, 0, type(exc).__name__))

    def since(self, t: float) -> list[tuple[float, int, str]]:
        return [a for a in list(self.answers) if a[0] >= t]


@pytest.fixture
def clients_for(small_data: CreditData) -> Iterator:
    running: list[tuple[Clients, list[threading.Thread]]] = []

    def start(url: str, threads: int = 2) -> Clients:
        row = small_data.X.head(1)
        clients = Clients(url, json.dumps({"dataframe_split": json.loads(row.to_json(orient="split", index=False))}))
        pool = [threading.Thread(target=clients.post, daemon=True) for _ in range(threads)]
        for t in pool:
            t.start()
        running.append((clients, pool))
        return clients

    yield start
    for clients, pool in running:
        clients.stop.set()
        for t in pool:
            t.join(timeout=30)


@dataclass
class Servers:
    """`creditflow serve` subprocesses following @champion every RELOAD s; stopped gracefully (SIGTERM)."""

    registry: Registry
    work: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def __call__(self, *flags: str) -> str:
        port = free_port()
        log = open(self.work / f"serve-{port}.log", "wb")  # noqa: SIM115 (closed with the process)
        cmd = [str(VENV_BIN / "creditflow"), "serve", "-m", f"models:/{NAME}@champion", "-p", str(port),
               "--reload-seconds", str(RELOAD), *flags]
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.work,
                                           env=subprocess_env(MLFLOW_TRACKING_URI=self.registry.url)))
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/ping", self.procs[-1], timeout=180)
        return url

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=60)


@pytest.fixture
def serve(registry: Registry, tmp_path: Path) -> Iterator[Servers]:
    servers = Servers(registry, tmp_path)
    yield servers
    servers.stop()


def promote(registry: Registry, *args: str) -> None:
    """Run scripts/promote_model.py against the server."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "promote_model.py"), "--name", NAME, *args],
                          env=subprocess_env(MLFLOW_TRACKING_URI=registry.url), cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def metric(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of one metric in the endpoint's /metrics."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return [(s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name]


def serving_versions(url: str) -> dict[str, set[str]]:
    """Per worker (pid label; "" with one worker), the champion versions its model_info gauge shows as served."""
    served: dict[str, set[str]] = {}
    for labels, value in metric(url, "creditflow_model_info"):
        if labels["role"] == "champion" and value == 1:
            served.setdefault(labels.get("pid", ""), set()).add(labels["model_version"])
    return served


def wait_until(condition, timeout: float, what: str) -> float:
    """Poll `condition` until it holds (the barrier); the moment it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def switch(url: str, clients: Clients, workers: int, new: str) -> None:
    """Every worker serves `new` within reload + load time (the wait fails otherwise); 20 answers after that too."""
    label = f"{NAME}/{new}"
    done = wait_until(lambda: [v for v in serving_versions(url).values()] == [{label}] * workers,
                      RELOAD + LOAD_BUDGET, f"all {workers} worker(s) serving {label}")
    wait_until(lambda: len(clients.since(done)) >= 20, 60, "20 answers after the swap")
    assert {a[2] for a in clients.since(done)} == {label}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_promotion_reaches_every_worker_without_a_failed_request(registry, serve, clients_for, workers) -> None:
    url = serve("-w", str(workers))
    clients = clients_for(url)
    wait_until(lambda: len(clients.answers) >= 20, 60, "first answers")
    promote(registry, "--version", registry.v2, "--force", "--reason", "hot-swap test")
    switch(url, clients, workers, registry.v2)
    if workers == 1:  # the rollback swaps back the same way
        promote(registry, "--rollback")
        switch(url, clients, workers, registry.v1)
        health = requests.get(f"{url}/health", timeout=5).json()
        assert health["model_version"] == f"{NAME}/{registry.v1}" and health["follows_registry"] is True
    clients.stop.set()
    answers = list(clients.answers)
    assert len(answers) > 100 and [a for a in answers if a[1] != 200] == []  # not one failed request
    assert {a[2] for a in answers} == {f"{NAME}/{registry.v1}", f"{NAME}/{registry.v2}"}
    swaps = sum(v for labels, v in metric(url, "creditflow_model_swaps_total") if labels["role"] == "champion")
    assert swaps == workers * (2 if workers == 1 else 1)
    requested = sum(v for labels, v in metric(url, "creditflow_requests_total") if labels["status"] == "200")
    assert requested >= len(answers)  # /metrics adds every worker up; its own scrapes are not counted


def test_a_version_that_cannot_load_is_never_served(registry, serve, clients_for) -> None:
    client = mlflow.MlflowClient(registry.url)
    client.set_registered_model_alias(NAME, "champion", registry.v1)
    url = serve()
    clients = clients_for(url)
    client.set_registered_model_alias(NAME, "champion", registry.broken)  # past the gates: a corrupt artifact
    try:
        wait_until(lambda: requests.get(f"{url}/health", timeout=5).json()["failed_version"] == f"{NAME}/"
                   f"{registry.broken}", RELOAD + LOAD_BUDGET, "the broken version reported in /health")
        failed_at = time.monotonic()
        wait_until(lambda: len(clients.since(failed_at)) >= 20, 60, "answers after the failed load")
        health = requests.get(f"{url}/health", timeout=5).json()
        assert health["model_version"] == f"{NAME}/{registry.v1}" and health["failed_reason"]
        assert sum(v for labels, v in metric(url, "creditflow_model_loads_total")
                   if labels["outcome"] == "failed") >= 1
    finally:
        client.set_registered_model_alias(NAME, "champion", registry.v1)
    clients.stop.set()
    assert {(a[1], a[2]) for a in clients.answers} == {(200, f"{NAME}/{registry.v1}")}


def test_the_stream_scorer_picks_up_a_new_version_between_two_events(
        registry, small_spec: DatasetSpec, small_data: CreditData) -> None:
    tag = uuid.uuid4().hex[:8]
    config = load_stream_config(ROOT / "serving" / "stream.yaml", store=REDIS, events_stream=f"t-{tag}:events",
                                predictions_stream=f"t-{tag}:predictions", rejected_stream=f"t-{tag}:rejected",
                                reload_seconds=0.2)
    applicant = small_data.X.head(1).assign(Id=f"s-{tag}")
    FeatureStore(REDIS, small_spec.name).put(applicant, "Id")
    client, store = mlflow.MlflowClient(registry.url), redis.Redis.from_url(REDIS, decode_responses=True)
    with tracking_at(registry.url):
        client.set_registered_model_alias(NAME, "champion", registry.v1)
        live = LiveModel(f"models:/{NAME}@champion", fetch(f"models:/{NAME}@champion"), config.reload_seconds,
                         "stream").start()
        try:
            scorer = StreamScorer(config, live)
            store.xadd(config.events_stream, {"applicant_id": f"s-{tag}", "event": "late_payment_30_59"})
            scorer.run(max_events=1)
            client.set_registered_model_alias(NAME, "champion", registry.v2)
            wait_until(lambda: live.current.version == registry.v2, RELOAD + LOAD_BUDGET, "the stream's swap")
            store.xadd(config.events_stream, {"applicant_id": f"s-{tag}", "event": "late_payment_30_59"})
            scorer.run(max_events=2)
        finally:
            live.stop()
            client.set_registered_model_alias(NAME, "champion", registry.v1)
    out = [fields for _, fields in store.xrange(config.predictions_stream)]
    store.delete(config.events_stream, config.predictions_stream, config.rejected_stream,
                 f"creditflow:features:{small_spec.name}:s-{tag}", f"creditflow:stream:{small_spec.name}:s-{tag}")
    assert [e["model_version"] for e in out] == [f"{NAME}/{registry.v1}", f"{NAME}/{registry.v2}"]
    assert pd.Series([e["model_uri"] for e in out]).tolist() == [f"models:/{NAME}/{registry.v1}",
                                                                 f"models:/{NAME}/{registry.v2}"]


# ---------------------------------------------------------------- the shadow challenger on live traffic


def exact_body(X: pd.DataFrame) -> str:
    """A dataframe_split body with every double exact (repr), missing values as null."""
    data = [[None if pd.isna(v) else float(v) for v in row] for row in X.itertuples(index=False)]
    return json.dumps({"dataframe_split": {"columns": list(X.columns), "data": data}})


def shadow_figures(url: str) -> tuple[float, float]:
    """(rows compared, decision flips) from /metrics."""
    return tuple(sum(v for _, v in metric(url, f"creditflow_shadow_{name}_total")) for name in ("rows", "flips"))


def test_the_shadow_reports_the_flips_computed_offline(registry, serve, small_spec: DatasetSpec,
                                                       small_data: CreditData, tmp_path: Path) -> None:
    client = mlflow.MlflowClient(registry.url)
    with tracking_at(registry.url):  # a different challenger: gradient boosting instead of the logistic champion
        exp = small_experiment(family="hist_gradient_boosting", params={"model__max_iter": 40},
                               **{"explain.enabled": False})
        other = train_and_log(exp, small_spec, small_data).registered_version
    client.set_registered_model_alias(NAME, "champion", registry.v1)
    client.set_registered_model_alias(NAME, "challenger", registry.v1)  # first the champion as its own shadow
    (tmp_path / "online.yaml").write_text("shadow_window_seconds: 1\n")
    url = serve("--config", str(tmp_path / "online.yaml"), "--shadow", f"models:/{NAME}@challenger")
    split = split_data(small_data, exp.test_size, exp.seed)
    X = split.X_test[small_spec.raw_columns].head(200).reset_index(drop=True)

    def post_all() -> None:
        for part in range(0, len(X), 10):
            r = requests.post(f"{url}/invocations", data=exact_body(X.iloc[part:part + 10]), timeout=30,
                              headers={"Content-Type": "application/json"})
            assert r.status_code == 200 and r.json()["predictions"][0]["model_version"] == f"{NAME}/{registry.v1}"

    post_all()
    wait_until(lambda: shadow_figures(url)[0] == 200, 60, "200 rows compared")
    assert shadow_figures(url) == (200, 0)  # the champion against itself: no flip
    client.set_registered_model_alias(NAME, "challenger", other)
    wait_until(lambda: requests.get(f"{url}/health", timeout=5).json()["shadow"]["model_version"] ==
               f"{NAME}/{other}", RELOAD + LOAD_BUDGET, "the shadow following @challenger")
    post_all()
    wait_until(lambda: shadow_figures(url)[0] == 400, 60, "400 rows compared")
    with tracking_at(registry.url):
        champion, challenger = (mlflow.pyfunc.load_model(f"models:/{NAME}/{v}").predict(X) for v in (registry.v1,
                                                                                                        other))
    offline = int((champion["decision"] != challenger["decision"]).sum())
    assert offline > 0 and shadow_figures(url) == (400, offline)
    serve.stop()  # a graceful stop writes the last window
    evidence = {v: shadow_evidence(client, f"{NAME}/{v}") for v in (registry.v1, other)}
    assert (evidence[registry.v1].totals.rows, evidence[registry.v1].totals.flips) == (200, 0)
    assert (evidence[other].totals.rows, evidence[other].totals.flips) == (200, offline)
    assert evidence[other].champions == (f"{NAME}/{registry.v1}",)
    delta = (challenger["probability"] - champion["probability"]).abs()
    assert evidence[other].totals.mean_abs_delta == pytest.approx(delta.mean(), abs=1e-12)
