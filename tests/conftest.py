"""The one set of shared fixtures (tests/<layer>/ mirror src/creditflow/; this file serves them all).

An isolated tracking store per test, small data, fitted pipelines, ONE trained champion store for the session,
one PostgreSQL fixture (throwaway databases), real mlflow servers, Spark. Tests that need a service carry its
marker (`integration` for Redis, PostgreSQL and servers, `spark` for Spark), so `make test-unit` runs with every
service stopped; a test using one of the service fixtures below without its marker fails the collection.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
import requests

from creditflow.data.dataset import CreditData, load_dataset, split_data
from creditflow.model.pipeline import build_pipeline
from creditflow.specs import DatasetSpec, ExperimentSpec, load_dataset_spec, load_experiment_spec
from creditflow.train.run import TrainingOutcome, train_and_log

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
DATASET_YAML = EXPERIMENTS / "datasets" / "give_me_some_credit.yaml"
FIXTURES = ROOT / "tests" / "fixtures"
REGISTRY_DRIVER = ROOT / "tests" / "registry_driver.py"
VENV_BIN = Path(sys.executable).parent
SMALL_ROWS = 6_000
REDIS = "redis://127.0.0.1:6379/15"  # the tests' database on the machine's Redis
# modules sharing that database (applicant keys of the same dataset) run on one pytest-xdist worker, one at a time
ON_REDIS = pytest.mark.xdist_group("redis")
CHAMPION = "models:/credit-default@champion"

# fixture -> the marker a test using it (directly or through another fixture) must carry
SERVICE_FIXTURES = {
    "postgres": "integration", "mlflow_server": "integration", "mlflow_server_on_postgres": "integration",
    "spark": "spark", "spark_cluster": "spark",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that needs a service must say so, or `make test-unit` (services stopped) would run it."""
    unmarked = [f"{item.nodeid} uses {fixture} but is not marked {marker}"
                for item in items for fixture, marker in SERVICE_FIXTURES.items()
                if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None]
    if unmarked:
        raise pytest.UsageError("tests needing a service must carry its marker:\n  " + "\n  ".join(unmarked))
    if getattr(config.option, "loadgroup", False):  # a pytest-xdist worker under --dist loadgroup (not set without -n)
        group_by_xdist_mark(items)


def group_by_xdist_mark(items: list[pytest.Item]) -> None:
    """Suffix each `xdist_group` test's node id with its group, which the scheduler sends to one worker whole.

    pytest-xdist 3.8 does this by setting `item._nodeid`, which pytest 9 no longer reads (the id lives in
    `item._id`): every group was silently ignored, the Redis modules ran side by side and module fixtures were
    set up on both workers. The same suffix, set where pytest 9 reads it (xdist's own setting stays a no-op).
    """
    from _pytest.nodeid import NodeId

    for item in items:
        marks = item.iter_markers("xdist_group")
        names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks}
        if names and "@" not in item.nodeid.rpartition("]")[2]:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(sorted(names))}")


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


def wait_for_lines(log: Path, text: str, count: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Poll a process's log until `text` appears on `count` lines (e.g. each worker's start); fail early if the
    process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {count} lines of '{text}'")
        if log.exists() and sum(text in line for line in log.read_text().splitlines()) >= count:
            return
        time.sleep(0.1)
    raise TimeoutError(f"'{text}' did not appear {count} times in {log} within {timeout} s")


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


@pytest.fixture(scope="session")
def fitted_hist_gradient_boosting(small_spec: DatasetSpec, small_data: CreditData):
    """HistGradientBoosting kept small (40 iterations), the baseline's other settings."""
    exp = small_experiment("logistic_baseline.yaml", family="hist_gradient_boosting", params={"model__max_iter": 40})
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


# ---------------------------------------------------------------- the session's champion


def champion_experiment() -> ExperimentSpec:
    """The champion's experiment: the logistic baseline with small budgets and no explanations."""
    return small_experiment("logistic_baseline.yaml", **{"explain.enabled": False})


@dataclass(frozen=True)
class ChampionStore:
    root: Path  # mlflow.db and mlruns/ (the artifacts)
    uri: str  # its sqlite:/// tracking URI
    outcome: TrainingOutcome
    exp: ExperimentSpec


@contextmanager
def tracking_at(uri: str, cwd: Path | None = None) -> Iterator[None]:
    """MLflow (and subprocesses, through MLFLOW_TRACKING_URI) pointed at `uri` for the block; both restored after."""
    with pytest.MonkeyPatch.context() as mp:
        if cwd is not None:
            mp.chdir(cwd)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(None)  # unsets the variable; leaving the context puts back what was there


@pytest.fixture(scope="session")
def champion_store(tmp_path_factory: pytest.TempPathFactory, small_spec: DatasetSpec,
                   small_data: CreditData) -> ChampionStore:
    """THE trained champion of the test session: a SQLite tracking store with the logistic champion trained once,
    registered as credit-default and aliased @champion. Every module that only reads a champion uses it.

    Shared, so read-only: a test that moves aliases, registers versions or touches the model's files takes
    `own_champion_store` (a private copy) instead; tests whose point is training keep their own training.
    """
    root = tmp_path_factory.mktemp("champion-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    exp = champion_experiment()
    with tracking_at(uri, cwd=root):
        outcome = train_and_log(exp, small_spec, small_data)
        mlflow.MlflowClient().set_registered_model_alias("credit-default", "champion", outcome.registered_version)
    return ChampionStore(root, uri, outcome, exp)


@pytest.fixture(scope="session")
def store(champion_store: ChampionStore) -> tuple[str, TrainingOutcome]:
    """(tracking URI, training outcome) of the session's champion store."""
    return champion_store.uri, champion_store.outcome


@pytest.fixture
def model(store: tuple[str, TrainingOutcome], monkeypatch: pytest.MonkeyPatch) -> TrainingOutcome:
    """Point this test at the session's champion store; returns the champion's training outcome."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[0])
    mlflow.set_tracking_uri(store[0])
    return store[1]


def copy_store(source: Path, target: Path) -> str:
    """A copy of a SQLite tracking store folder (database and artifacts) whose recorded paths point into the copy;
    its tracking URI."""
    shutil.copytree(source, target)
    old, new = str(source), str(target)
    with sqlite3.connect(target / "mlflow.db") as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]:
                db.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                           f'WHERE typeof("{column}") = ? AND instr("{column}", ?) > 0', (old, new, "text", old))
    for mlmodel in target.rglob("MLmodel"):
        mlmodel.write_text(mlmodel.read_text().replace(old, new))
    return f"sqlite:///{target / 'mlflow.db'}"


@pytest.fixture
def own_champion_store(champion_store: ChampionStore, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> tuple[str, TrainingOutcome]:
    """A private copy of the session's champion store, this test pointed at it: for a test that changes the
    registry (aliases, versions) or the model's files, which must not change the shared store."""
    uri = copy_store(champion_store.root, tmp_path / "own-store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri, champion_store.outcome


# ---------------------------------------------------------------- segment models (many models)

SEGMENT_COLUMN = "Region"
SEGMENTS = ("R01", "R02", "R03")  # R01 promoted, R02 registered without a champion, R03 never registered


def with_regions(frame: Any) -> Any:
    """The frame with a Region column added by pandas: R01, R02, R03 in turn, row after row."""
    import numpy as np

    return frame.assign(**{SEGMENT_COLUMN: np.array(SEGMENTS)[np.arange(len(frame)) % len(SEGMENTS)]})


@dataclass(frozen=True)
class SegmentStore:
    root: Path
    uri: str
    versions: dict[str, str]  # segment -> its registered version (R01, R02)
    fallback: str  # the global champion's model_version label


def register_segment_model(segment: str, spec: DatasetSpec, data: CreditData) -> str:
    """Train the logistic baseline on one segment's rows, registered as credit-default-<segment> with the
    contract's registered-model tags; its version."""
    import dataclasses

    rows = (with_regions(data.X)[SEGMENT_COLUMN] == segment).to_numpy()
    part = dataclasses.replace(data, X=data.X[rows], y=data.y[rows], ids=data.ids[rows],
                               true_probability=None if data.true_probability is None else data.true_probability[rows])
    name = f"credit-default-{segment}"
    outcome = train_and_log(champion_experiment().with_overrides(register_as=name), spec, part)
    client = mlflow.MlflowClient()
    for key, value in {"segment": segment, "segment_column": SEGMENT_COLUMN, "global_model": "credit-default"}.items():
        client.set_registered_model_tag(name, key, value)
    return str(outcome.registered_version)


@pytest.fixture(scope="session")
def segment_store(champion_store: ChampionStore, tmp_path_factory: pytest.TempPathFactory, small_spec: DatasetSpec,
                  small_data: CreditData) -> SegmentStore:
    """A copy of the session's champion store plus segment models trained on their rows of the small data:
    credit-default-R01 (@champion), credit-default-R02 (registered, no champion); R03 has none. Read-only:
    a test that moves aliases copies it (`copy_store`)."""
    root = tmp_path_factory.mktemp("segment-store")
    uri = copy_store(champion_store.root, root / "store")
    with tracking_at(uri, cwd=root / "store"):
        versions = {s: register_segment_model(s, small_spec, small_data) for s in SEGMENTS[:2]}
        mlflow.MlflowClient().set_registered_model_alias("credit-default-R01", "champion", versions["R01"])
    return SegmentStore(root / "store", uri, versions, f"credit-default/{champion_store.outcome.registered_version}")


def spark_test_config(**changes: object) -> Any:
    """The test session's Spark settings (a scoring.SparkConfig): local[2], tiny Arrow batches for tiny data."""
    from creditflow.serving.batch.spark import SparkConfig

    return SparkConfig(master="local[2]", arrow_batch_rows=500, driver_memory="1g", progress_seconds=1.0,
                       conf={"spark.sql.shuffle.partitions": "2"}).model_copy(update=changes)


@pytest.fixture(scope="session")
def spark():
    """One Spark local[2] session for the whole test run (start-up ~13 s); tiny Arrow batches for tiny data."""
    from creditflow.serving.batch.spark import start_spark

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


# ---------------------------------------------------------------- PostgreSQL and mlflow servers

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


class Postgres:
    """The local PostgreSQL server: `database()` is a throwaway database for as long as the block lasts."""

    database = staticmethod(throwaway_postgres_database)


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    """THE PostgreSQL fixture (every test or fixture that needs PostgreSQL goes through it): the local server,
    checked once, handing out throwaway databases."""
    postgres_admin("SELECT 1")
    return Postgres()


@pytest.fixture
def postgres_db(postgres: Postgres) -> Iterator[str]:
    """A fresh database on the local PostgreSQL for one test, dropped afterwards."""
    with postgres.database() as uri:
        yield uri


@pytest.fixture(scope="session")
def mlflow_server_on_postgres(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` for the session whose backend store is a throwaway PostgreSQL database."""
    root = tmp_path_factory.mktemp("mlflow-postgres")
    with (postgres.database() as db,
          running_mlflow_server(db.replace("postgresql://", "postgresql+psycopg2://", 1), root) as url):
        yield url


# ---------------------------------------------------------------- SHAP and explanation cases


@pytest.fixture(scope="session")
def shap_data() -> tuple:
    """(X_train, y_train, X_test, y_test) of a small generated credit frame (tests/model/shap_cases.py)."""
    from tests.model.shap_cases import split_frames

    return split_frames()


@pytest.fixture(scope="session")
def shap_pipes(shap_data: tuple) -> dict:
    """One small fitted pipeline per family on `shap_data`: the SHAP and explanation tests share them."""
    from tests.model.shap_cases import FAMILIES, SPEC, fit

    X_train, y_train, _, _ = shap_data
    return {family: fit(family, SPEC, X_train, y_train) for family in FAMILIES}


@pytest.fixture(scope="session")
def housing_spec() -> DatasetSpec:
    """The credit spec plus a categorical column (one-hot columns must fold back into it)."""
    from tests.model.shap_cases import spec_with_housing

    return spec_with_housing()


# ---------------------------------------------------------------- a segmented experiment (creditflow segments)

REGIONS_YAML = EXPERIMENTS / "datasets" / "give_me_some_credit_regions.yaml"


def small_regions(rows: int = 4_000, segments: int = 4, thin: str = "R04") -> tuple[DatasetSpec, CreditData]:
    """The regions dataset spec on `rows` generated rows; all but a tenth of region `thin`'s rows dropped (a segment
    too small for a model of its own)."""
    import dataclasses

    spec = load_dataset_spec(REGIONS_YAML)
    spec = spec.model_copy(update={"generated": spec.generated.model_copy(update={"rows": rows, "segments": segments})})
    data = load_dataset(spec)
    keep = ((data.segments != thin) | (data.ids.astype(int) % 10 == 0)).to_numpy()
    truth = data.true_probability[keep] if data.true_probability is not None else None
    return spec, dataclasses.replace(data, X=data.X[keep].reset_index(drop=True), y=data.y[keep].reset_index(drop=True),
                                     ids=data.ids[keep].reset_index(drop=True), true_probability=truth,
                                     segments=data.segments[keep].reset_index(drop=True))


def segmented_experiment(**overrides: object) -> ExperimentSpec:
    """The flagship segmented spec made small: the logistic baseline, 2 folds, no explanations (their budget is
    still the segments' own), one worker."""
    exp, _ = load_experiment_spec(EXPERIMENTS / "segmented.yaml")
    small = {"family": "logistic", "params": {"model__C": 1.0}, "cv_folds": 2, "explain.enabled": False,
             "segments.min_rows": 500, "segments.workers": 1, "segments.explain.enabled": False,
             "segments.explain.shap_rows": 50}
    return exp.with_overrides(**{**small, **overrides})


SEGMENTED_SPEC = """name: segmented
dataset: {regions}
family: logistic
params: {{model__C: 1.0}}
cv_folds: 2
explain: {{enabled: false}}
segments: {{min_rows: 500, explain: {{enabled: false, shap_rows: 50}}}}
"""


@dataclass(frozen=True)
class SegmentedStore:
    root: Path
    uri: str
    training: Any  # train.segments.SegmentedTraining
    decisions: list  # registry.segments.SegmentDecision, the global model first
    output: str  # what the command showed
    csv: Path  # the data, R04 too small for a model of its own
    spec: DatasetSpec
    data: CreditData


@pytest.fixture(scope="session")
def segmented_store(tmp_path_factory: pytest.TempPathFactory) -> SegmentedStore:
    """ONE segmented experiment run for the session as `creditflow segments` runs it (worker processes, the registry
    decisions, the table): global model, R01-R03, R04 too small. Read-only: a test that changes it copies it."""
    import io
    from contextlib import redirect_stdout

    from creditflow.cli import console_logging
    from creditflow.data.synthetic import generate_credit_data, write_kaggle_csv
    from creditflow.pipelines.segments import run_segments

    root = tmp_path_factory.mktemp("segmented-store")
    spec, data = small_regions()
    csv = root / "regions.csv"
    generated = generate_credit_data(4_000, 42, segments=4).frame
    write_kaggle_csv(generated[generated["Id"].isin(data.ids.astype(int))], csv)
    (root / "segmented.yaml").write_text(SEGMENTED_SPEC.format(regions=REGIONS_YAML))
    uri, out = f"sqlite:///{root / 'mlflow.db'}", io.StringIO()
    with tracking_at(uri, cwd=root), redirect_stdout(out), console_logging():
        training, decisions = run_segments(root / "segmented.yaml", str(csv), None, EXPERIMENTS / "promotion.yaml")
    return SegmentedStore(root, uri, training, decisions, out.getvalue(), csv, spec, load_dataset(spec, csv))
