"""Shared fixtures: an isolated tracking store per test, small data, fitted pipelines, a real mlflow server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pytest
import requests

from creditflow.data import CreditData, load_dataset, split_data
from creditflow.pipeline import build_pipeline
from creditflow.specs import DatasetSpec, ExperimentSpec, load_dataset_spec, load_experiment_spec
from creditflow.tracking import TrainingOutcome, train_and_log

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
DATASET_YAML = EXPERIMENTS / "datasets" / "give_me_some_credit.yaml"
VENV_BIN = Path(sys.executable).parent
SMALL_ROWS = 6_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """Poll `url` until it answers 200; fail early if the process behind it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for CLI subprocesses: the venv's bin first on PATH (mlflow serve needs uvicorn)."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def isolated_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test gets its own SQLite tracking store and artifact folder; a run left open fails the test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):  # MLflow may export these
        monkeypatch.delenv(leaked, raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    active = mlflow.active_run()
    mlflow.set_tracking_uri(None)
    if active is not None:
        mlflow.end_run()
        pytest.fail(f"test left run {active.info.run_id} open")


@pytest.fixture(scope="session")
def small_spec() -> DatasetSpec:
    """The flagship dataset spec, generating only SMALL_ROWS rows."""
    spec = load_dataset_spec(DATASET_YAML)
    return spec.model_copy(update={"generated": spec.generated.model_copy(update={"rows": SMALL_ROWS})})


@pytest.fixture(scope="session")
def small_data(small_spec: DatasetSpec) -> CreditData:
    return load_dataset(small_spec)


def small_experiment(name: str = "logistic_baseline.yaml", **overrides: object) -> ExperimentSpec:
    """An experiment spec from experiments/ with small budgets (3 folds, 2 trials, small explanations)."""
    exp, _ = load_experiment_spec(EXPERIMENTS / name)
    budget = {"cv_folds": 3, "explain.pdp_rows": 300, "explain.permutation_rows": 500,
              "explain.permutation_repeats": 2, "explain.shap_rows": 200, "explain.waterfalls": 2}
    if exp.search.type == "bayesian":
        budget["search.trials"] = 2
    if exp.family == "xgboost":
        budget.update({"params": {"model__n_estimators": 60}})
    return exp.with_overrides(**{**budget, **overrides})


@pytest.fixture(scope="session")
def fitted_logistic(small_spec: DatasetSpec, small_data: CreditData):
    """(experiment spec, pipeline fitted on the training split, split): fitted once per session."""
    exp = small_experiment("logistic_baseline.yaml")
    split = split_data(small_data, exp.test_size, exp.seed)
    return exp, build_pipeline(exp, small_spec).fit(split.X_train, split.y_train), split


@pytest.fixture(scope="session")
def fitted_xgboost(small_spec: DatasetSpec, small_data: CreditData):
    exp = small_experiment("xgboost_bayes.yaml")
    split = split_data(small_data, exp.test_size, exp.seed)
    return exp, build_pipeline(exp, small_spec).fit(split.X_train, split.y_train), split


@contextmanager
def running_mlflow_server(backend_store_uri: str, root: Path, timeout: float = 120) -> Iterator[str]:
    """A real `mlflow server` subprocess over `backend_store_uri` (SQLite file or PostgreSQL database), proxied
    artifacts under `root`, on a free port; its URL once /health answers. Stopped on exit."""
    port = free_port()
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", backend_store_uri,
             "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts", "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT,
            env=subprocess_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),  # as our profiles: no huey workers
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", proc, timeout=timeout)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (SQLite backend, proxied artifacts) for the session."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with running_mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root, timeout=90) as url:
        yield url


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, small_spec: DatasetSpec,
          small_data: CreditData) -> Iterator[tuple[str, TrainingOutcome]]:
    """One tracking store per test module with a logistic model registered and promoted to @champion."""
    root = tmp_path_factory.mktemp("champion-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        outcome = train_and_log(small_experiment(**{"explain.enabled": False}), small_spec, small_data)
        mlflow.MlflowClient().set_registered_model_alias("credit-default", "champion", outcome.registered_version)
    yield uri, outcome


@pytest.fixture
def model(store: tuple[str, TrainingOutcome], monkeypatch: pytest.MonkeyPatch) -> TrainingOutcome:
    """Point this test at the module's store; returns the champion's training outcome."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[0])
    mlflow.set_tracking_uri(store[0])
    return store[1]


def spark_test_config(**changes: object) -> Any:
    """The test session's Spark settings (a scoring.SparkConfig): local[2], tiny Arrow batches for tiny data."""
    from creditflow.scoring import SparkConfig

    return SparkConfig(master="local[2]", arrow_batch_rows=500, driver_memory="1g", progress_seconds=1.0,
                       conf={"spark.sql.shuffle.partitions": "2"}).model_copy(update=changes)


@pytest.fixture(scope="session")
def spark():
    """One Spark local[2] session for the whole test run (start-up ~13 s); tiny Arrow batches for tiny data."""
    from creditflow.scoring import start_spark

    session = start_spark(spark_test_config(), app_name="creditflow-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Spark standalone cluster on this machine (a master and one 2-core worker); its master URL.

    Executors there load a `spark_udf` model the cluster's way (MLflow's SparkModelCache), not local mode's.
    """
    import pyspark

    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    root = tmp_path_factory.mktemp("spark-cluster")
    port, ui = free_port(), free_port()
    master_url = f"spark://127.0.0.1:{port}"
    master = [str(spark_class), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
              "--port", str(port), "--webui-port", str(ui)]
    worker = [str(spark_class), "org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1",
              "--cores", "2", "--memory", "2g", "--webui-port", str(free_port()), "--work-dir", str(root / "work")]
    procs = []
    try:
        for name, command in (("master", master), ("worker", worker)):
            with open(root / f"{name}.log", "wb") as log:
                procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env()))
            if name == "master":
                wait_for_http(f"http://127.0.0.1:{ui}/json/", procs[0], timeout=90)
        deadline = time.monotonic() + 90
        while requests.get(f"http://127.0.0.1:{ui}/json/", timeout=5).json().get("aliveworkers", 0) < 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Spark worker registered with {master_url}: see {root}")
            time.sleep(0.5)
        yield master_url
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


POSTGRES = "postgresql://postgres@127.0.0.1:5432"


def postgres_admin(statement: str) -> None:
    """One statement outside a transaction (CREATE/DROP DATABASE) on the local PostgreSQL (trust auth)."""
    import psycopg2

    conn = psycopg2.connect(f"{POSTGRES}/postgres", connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


@contextmanager
def throwaway_postgres_database() -> Iterator[str]:
    """A fresh, uniquely named database on the local PostgreSQL (127.0.0.1:5432, user postgres), dropped on exit
    (connections still open to it included); its postgresql:// URI."""
    name = f"creditflow_test_{uuid.uuid4().hex[:10]}"
    postgres_admin(f"CREATE DATABASE {name}")
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        postgres_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def postgres_db() -> Iterator[str]:
    """A fresh database on the local PostgreSQL for one test, dropped afterwards."""
    with throwaway_postgres_database() as uri:
        yield uri
