"""The production tracking stack, for real: `mlflow server` on PostgreSQL with an S3 bucket (moto's server), basic auth.

Everything goes over HTTP: the server is scripts/start_tracking_server.sh, the bucket is read back with boto3
and the runs with psycopg2. Faults are real too: the server is stopped mid-run, PostgreSQL is a closed port,
and S3 goes away behind a TCP relay the test cuts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import mlflow
import pandas as pd
import psycopg2
import pytest
import requests

from creditflow.cli import main as cli
from creditflow.errors import TrackingError
from creditflow.train import run as tracking
from creditflow.train.run import train_and_log
from tests.conftest import (
    ROOT,
    VENV_BIN,
    Postgres,
    free_port,
    small_experiment,
    subprocess_env,
    wait_for_http,
)

# one worker runs the module: its servers, buckets and trained models are module fixtures, set up once
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("tracking-server")]

SCRIPT = ROOT / "scripts" / "start_tracking_server.sh"
ADMIN, ADMIN_PASSWORD = "admin", "admin-password-for-tests"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
FAST_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


# --- the pieces: a throwaway database, moto's S3 server, a relay that can cut S3 off, the tracking server ---

@pytest.fixture(scope="module")
def database(postgres: Postgres) -> Iterator[str]:
    """A uniquely named PostgreSQL database for the module, dropped afterwards."""
    with postgres.database() as uri:
        yield uri


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's standalone S3 server on a free port; its endpoint URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=subprocess_env(**S3_KEYS))
    try:
        wait_for_http(f"http://127.0.0.1:{port}/moto-api/", proc, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Relay:
    """A TCP relay in front of S3 that a test can cut (an S3 outage: every connection refused) and restore."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self.lock:
            self.open.discard(s)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()

    def cut(self) -> None:
        self.up.clear()
        with self.lock:
            live = list(self.open)
        for s in live:
            self._close(s)

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture(scope="module")
def s3_relay(moto_s3: str) -> Iterator[Relay]:
    relay = Relay(int(moto_s3.rsplit(":", 1)[1]))
    yield relay
    relay.close()


class TrackingServer:
    """scripts/start_tracking_server.sh as a process group that a test can stop and start again (same port)."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.port = free_port()
        self.args = [str(SCRIPT), *args, "--port", str(self.port)]
        self.env, self.cwd = env, cwd
        self.proc: subprocess.Popen | None = None
        self.logs: list[Path] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> None:
        log = self.cwd / f"server-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(self.args, cwd=self.cwd, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        try:
            wait_for_http(f"{self.url}/health", self.proc, timeout=120)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}; server log:\n{self.logs[-1].read_text()[-3000:]}") from None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log(self, n: int = -1) -> str:
        return self.logs[n].read_text()


@pytest.fixture(scope="module")
def bucket(moto_s3: str) -> Iterator[str]:
    """A unique bucket name; the bucket (created by the server's --create-bucket) is emptied and deleted after."""
    name = f"creditflow-test-{uuid.uuid4().hex[:10]}"
    yield name
    s3 = s3_client(moto_s3)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=obj["Key"])
    s3.delete_bucket(Bucket=name)


def s3_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, **{k.lower(): v for k, v in S3_KEYS.items()
                                                        if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")


def production_env(database: str, bucket: str, endpoint: str, **extra: str) -> dict[str, str]:
    return subprocess_env(
        MLFLOW_BACKEND_STORE_URI=database, MLFLOW_ARTIFACTS_DESTINATION=f"s3://{bucket}",
        MLFLOW_S3_ENDPOINT_URL=endpoint, MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD,
        MLFLOW_FLASK_SERVER_SECRET_KEY="tests-secret-key", AWS_MAX_ATTEMPTS="2", **S3_KEYS, **extra,
    )


@pytest.fixture(scope="module")
def production(database: str, bucket: str, s3_relay: Relay, tmp_path_factory) -> Iterator[TrackingServer]:
    """The production profile with auth, its S3 traffic through the relay; one server for the module."""
    srv = TrackingServer(["--profile", "production", "--auth", "--create-bucket"],
                         production_env(database, bucket, f"http://127.0.0.1:{s3_relay.port}"),
                         tmp_path_factory.mktemp("production"))
    srv.start()
    yield srv
    srv.stop()


def client_env(url: str, **extra: str) -> dict[str, str]:
    """What a user sets to work against the server: the URI and their credentials."""
    return {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": ADMIN,
            "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD, **FAST_CLIENT, **extra}


@pytest.fixture
def as_admin(production: TrackingServer, monkeypatch: pytest.MonkeyPatch) -> TrackingServer:
    """This test's MLflow client talks to the production server as the admin user."""
    for key, value in client_env(production.url).items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(production.url)
    production.wait_ready()  # a previous fault test may have left it restarting
    return production


@pytest.fixture(scope="module")
def trained(production: TrackingServer, small_spec, small_data):
    """The whole flow's first step against the server: one run with explanations, registered."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in client_env(production.url).items():
            mp.setenv(key, value)
        mlflow.set_tracking_uri(production.url)
        try:
            return train_and_log(small_experiment("logistic_baseline.yaml"), small_spec, small_data)
        finally:
            mlflow.set_tracking_uri(None)


def bucket_keys(endpoint: str, bucket: str) -> list[str]:
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def query(database: str, sql: str, *params: object) -> list[tuple]:
    conn = psycopg2.connect(database, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def quick_experiment(name: str):
    """The baseline without explanations, in an experiment of its own: for the fault tests."""
    return small_experiment("logistic_baseline.yaml", **{"explain.enabled": False}).with_overrides(name=name)


def inject_before_model_upload(monkeypatch: pytest.MonkeyPatch, fault: Callable[[], None]) -> None:
    """Run `fault` in the middle of a training run: after params/metrics/specs, before the model upload."""
    real = tracking.log_credit_model

    def faulty(*args, **kwargs):
        fault()
        return real(*args, **kwargs)

    monkeypatch.setattr(tracking, "log_credit_model", faulty)


# --- start-up ---

def test_local_profile_serves_the_sqlite_store_and_local_artifacts(tmp_path: Path):
    srv = TrackingServer(["--profile", "local"], subprocess_env(), tmp_path)
    srv.start()
    try:
        mlflow.set_tracking_uri(srv.url)
        mlflow.set_experiment("local-profile")  # not whichever experiment an earlier test left active
        with mlflow.start_run() as run:
            mlflow.log_param("profile", "local")
            mlflow.log_dict({"hello": "server"}, "note.json")
    finally:
        srv.stop()
    assert "schema migrated from empty" in srv.log() and "starting mlflow server (local)" in srv.log()
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("SELECT status FROM runs WHERE run_uuid = ?", (run.info.run_id,)).fetchone() == ("FINISHED",)
    [note] = (tmp_path / "mlartifacts").rglob("note.json")
    assert run.info.run_id in str(note) and json.loads(note.read_text()) == {"hello": "server"}


def test_production_start_migrates_the_database_and_creates_the_bucket(production, database, bucket, moto_s3):
    log = production.log(0)
    assert "schema migrated from empty to the current one" in log
    assert f"bucket s3://{bucket}" in log and ": created" in log
    assert "starting mlflow server (production, auth)" in log
    (revision,) = query(database, "SELECT version_num FROM alembic_version")[0]
    assert revision and s3_client(moto_s3).head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
    anonymous = requests.get(f"{production.url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert anonymous.status_code == 401


def test_postgres_unreachable_at_start_is_one_clear_line(tmp_path):
    port = free_port()  # nothing listens there
    env = production_env(f"postgresql://postgres@127.0.0.1:{free_port()}/mlflow", "any-bucket", "http://127.0.0.1:9")
    out = subprocess.run([str(SCRIPT), "--profile", "production", "--port", str(port)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: database postgresql+psycopg2://postgres@127.0.0.1:")
    assert "is unreachable" in lines[0] and "Connection refused" in lines[0]
    with socket.socket() as s:  # no server was started behind the error
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("case", ["missing bucket", "endpoint down", "not postgres", "no artifact bucket"])
def test_start_up_checks_refuse_bad_stores(case, database, moto_s3, monkeypatch, capsys):
    settings = {"MLFLOW_BACKEND_STORE_URI": database, "MLFLOW_ARTIFACTS_DESTINATION": "s3://no-such-bucket",
                "MLFLOW_S3_ENDPOINT_URL": moto_s3, **S3_KEYS}
    expected = {"missing bucket": "bucket 'no-such-bucket' does not exist", "endpoint down": "does not answer",
                "not postgres": "MLFLOW_BACKEND_STORE_URI must be postgresql://",
                "no artifact bucket": "MLFLOW_ARTIFACTS_DESTINATION must be s3://BUCKET"}[case]
    if case == "endpoint down":
        settings["MLFLOW_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
    elif case == "not postgres":
        settings["MLFLOW_BACKEND_STORE_URI"] = "sqlite:///mlflow.db"
    elif case == "no artifact bucket":
        settings["MLFLOW_ARTIFACTS_DESTINATION"] = "./mlartifacts"
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    assert cli(["tracking-server", "--profile", "production", "--check-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert "no-such-bucket" not in [b["Name"] for b in s3_client(moto_s3).list_buckets().get("Buckets", [])]


# --- the whole flow against the server ---

def test_runs_are_rows_in_postgres_and_artifacts_are_objects_in_s3(trained, database, bucket, moto_s3):
    keys = bucket_keys(moto_s3, bucket)
    run_keys = [k for k in keys if f"/{trained.run_id}/artifacts/" in k]
    assert any(k.endswith("/specs.json") for k in run_keys)
    assert sum("/explanations/" in k and k.endswith(".png") for k in run_keys) >= 3
    model_id = trained.model_uri.removeprefix("models:/")
    model_keys = [k for k in keys if f"/models/{model_id}/artifacts/" in k]
    assert any(k.endswith("/MLmodel") for k in model_keys) and any(k.endswith(".skops") for k in model_keys), keys

    [(status, experiment)] = query(database, "SELECT r.status, e.name FROM runs r JOIN experiments e "
                                             "ON e.experiment_id = r.experiment_id WHERE r.run_uuid = %s",
                                   trained.run_id)
    assert (status, experiment) == ("FINISHED", trained.experiment)
    [(auc,)] = query(database, "SELECT value FROM latest_metrics WHERE run_uuid = %s AND key = 'test_roc_auc'",
                     trained.run_id)
    assert auc == pytest.approx(trained.test["test_roc_auc"])
    [(name, version)] = query(database, "SELECT name, version FROM model_versions WHERE run_id = %s", trained.run_id)
    assert (name, str(version)) == ("credit-default", trained.registered_version)
    [(location,)] = query(database, "SELECT artifact_location FROM experiments WHERE name = %s", trained.experiment)
    assert location.startswith("mlflow-artifacts:/")  # proxied: clients never hold S3 credentials


def test_client_without_s3_credentials_loads_the_registered_model_through_the_server(trained, as_admin, monkeypatch,
                                                                                      small_data):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    specs = mlflow.artifacts.load_dict(f"runs:/{trained.run_id}/specs.json")
    assert specs["experiment"]["name"] == trained.experiment
    model = mlflow.pyfunc.load_model(f"models:/credit-default/{trained.registered_version}")
    scored = model.predict(small_data.X.head(5))
    assert list(scored.columns[:3]) == ["probability", "decision", "reason_codes"]
    assert scored["probability"].between(0, 1).all() and scored["probability"].nunique() == 5


CHAMPION = "models:/credit-default@champion"


def user_env(url: str) -> dict[str, str]:
    """A user's subprocess environment: the server and a login, no S3 credentials at all."""
    env = subprocess_env(**client_env(url))
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="module")
def champion(trained, production: TrackingServer):
    """The trained version promoted to @champion through the gates by scripts/promote_model.py."""
    out = subprocess.run([str(VENV_BIN / "python"), str(ROOT / "scripts" / "promote_model.py"), "--name",
                          "credit-default", "--version", trained.registered_version], cwd=ROOT,
                         env=user_env(production.url), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "decision: promoted" in out.stdout
    return trained


def test_promotion_through_the_server_is_recorded_in_postgres(champion, database):
    [(version, stage)] = query(database, "SELECT m.version, v.current_stage FROM registered_model_aliases m "
                                         "JOIN model_versions v ON v.name = m.name AND v.version = m.version "
                                         "WHERE m.name = 'credit-default' AND m.alias = 'champion'")
    assert (str(version), stage) == (champion.registered_version, "Production")


def applicants(small_data, rows: int = 40):
    X = small_data.X.iloc[-rows:].reset_index(drop=True)
    return X.assign(Id=range(9000, 9000 + rows))[["Id", *X.columns]]


@pytest.fixture(scope="module")
def served_online(champion, production: TrackingServer, small_data, tmp_path_factory) -> dict[int, float]:
    """`mlflow models serve -m models:/credit-default@champion` from the production registry; P(default) by Id."""
    port, log = free_port(), tmp_path_factory.mktemp("online") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(VENV_BIN / "mlflow"), "models", "serve", "-m", CHAMPION, "--env-manager", "local",
                                 "-h", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env=user_env(production.url), start_new_session=True)
    try:
        try:
            wait_for_http(f"http://127.0.0.1:{port}/ping", proc, timeout=180)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}:\n{log.read_text()[-3000:]}") from None
        frame = applicants(small_data)
        body = json.dumps({"dataframe_split": json.loads(frame.drop(columns="Id").to_json(orient="split",
                                                                                          index=False))})
        response = requests.post(f"http://127.0.0.1:{port}/invocations", data=body, timeout=60,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    fields = {"probability", "decision", "reason_codes", "reason_statements"}
    assert [set(p) for p in predictions] == [fields] * len(frame)
    return dict(zip(frame.Id, (p["probability"] for p in predictions), strict=True))


def test_champion_is_served_online_from_the_production_registry(served_online, as_admin, small_data):
    online = list(served_online.values())
    assert len(set(online)) == len(online) and all(0 < p < 1 for p in online)
    local = mlflow.pyfunc.load_model(CHAMPION).predict(applicants(small_data).drop(columns="Id"))
    assert max(abs(a - b) for a, b in zip(local["probability"], online, strict=True)) <= 1e-9


@pytest.mark.spark
def test_batch_scoring_on_a_spark_cluster_against_the_production_server_matches_online(
        served_online, champion, production, small_data, spark_cluster, tmp_path):
    """The production profile end to end, scored by a standalone Spark cluster's executors (not local mode)."""
    applicants(small_data).to_csv(tmp_path / "applicants.csv", index=False)
    command = [str(VENV_BIN / "creditflow"), "score", "batch", "--model-uri", CHAMPION, "--batch-id", "flow",
               "--input", str(tmp_path / "applicants.csv"), "--output", str(tmp_path / "out"),
               "--master", spark_cluster, "--config", str(ROOT / "serving" / "batch" / "job.yaml")]
    out = subprocess.run(command, env=user_env(production.url), capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "rows in 40 = scored 40 + quarantined 0" in out.stdout
    assert "FutureWarning" not in out.stderr  # PySpark's pandas-3 notice, four times a job, is not the user's
    assert "does not recreate the same environment" not in out.stderr  # MLflow's env_manager notice, by design
    scored = pd.read_parquet(tmp_path / "out" / "scored" / "batch_id=flow")
    assert set(scored.model_version) == {champion.registered_version}
    assert set(scored.decision) <= {"approve", "decline"}
    assert all(isinstance(json.loads(codes), list) for codes in scored.reason_codes)
    batch = dict(zip(scored.applicant_id.astype(int), scored.probability, strict=True))
    assert batch.keys() == served_online.keys()
    assert max(abs(batch[i] - served_online[i]) for i in batch) <= 1e-9


# --- authentication ---

def test_user_with_read_on_one_experiment(as_admin):
    url, admin = as_admin.url, (ADMIN, ADMIN_PASSWORD)
    ids = {}
    for name in ("auth-shared", "auth-private"):
        r = requests.post(f"{url}/api/2.0/mlflow/experiments/create", json={"name": name}, auth=admin, timeout=10)
        assert r.status_code == 200, r.text
        ids[name] = r.json()["experiment_id"]
    analyst = ("analyst", "analyst-password-1")
    r = requests.post(f"{url}/api/2.0/mlflow/users/create", json={"username": analyst[0], "password": analyst[1]},
                      auth=admin, timeout=10)
    assert r.status_code == 200, r.text
    r = requests.post(f"{url}/api/3.0/mlflow/users/permissions/grant", auth=admin, timeout=10, json={
        "username": analyst[0], "resource_type": "experiment", "resource_id": ids["auth-shared"],
        "permission": "READ"})
    assert r.status_code == 200, r.text

    def get(exp_id: str, who=analyst) -> requests.Response:
        return requests.get(f"{url}/api/2.0/mlflow/experiments/get", params={"experiment_id": exp_id},
                            auth=who, timeout=10)

    assert get(ids["auth-shared"]).json()["experiment"]["name"] == "auth-shared"
    write = requests.post(f"{url}/api/2.0/mlflow/runs/create", auth=analyst, timeout=10,
                          json={"experiment_id": ids["auth-shared"]})
    assert write.status_code == 403
    assert get(ids["auth-private"]).status_code == 403
    assert get(ids["auth-shared"], who=(analyst[0], "wrong-password")).status_code == 401
    assert get(ids["auth-shared"], who=None).status_code == 401
    runs = requests.post(f"{url}/api/2.0/mlflow/runs/search", auth=admin, timeout=10,
                         json={"experiment_ids": [ids["auth-shared"]]}).json()
    assert runs.get("runs", []) == []  # the refused write left nothing behind


# --- faults ---

def fails_mid_run(monkeypatch: pytest.MonkeyPatch, fault: Callable[[], None], recover: Callable[[], None],
                  experiment: str, small_spec, small_data) -> str:
    """Train in `experiment` with `fault` injected before the model upload: the run must end in a TrackingError
    whose message is one line (returned). `recover` undoes the fault whatever happens."""
    inject_before_model_upload(monkeypatch, fault)
    try:
        with pytest.raises(TrackingError) as failure:
            train_and_log(quick_experiment(experiment), small_spec, small_data)
    finally:
        recover()
    message = str(failure.value)
    assert "\n" not in message
    return message


def test_artifact_store_down_mid_run_fails_the_run_and_registers_nothing(as_admin, s3_relay, monkeypatch,
                                                                          small_spec, small_data):
    message = fails_mid_run(monkeypatch, s3_relay.cut, s3_relay.restore, "s3-outage", small_spec, small_data)
    assert message.startswith("run ")
    run_id = message.split()[1]
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] in message
    assert run.data.params["family"] == "logistic"  # what was logged before the outage is kept
    assert mlflow.MlflowClient().search_model_versions(f"run_id = '{run_id}'") == []
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert [m.status.name for m in models if m.source_run_id == run_id] == ["FAILED"]


def test_server_stopped_mid_run_fails_with_a_clear_message_and_keeps_what_was_logged(
        as_admin, database, monkeypatch, small_spec, small_data):
    message = fails_mid_run(monkeypatch, as_admin.stop, as_admin.start, "server-outage", small_spec, small_data)
    assert as_admin.url in message
    assert "schema current" in as_admin.log()  # the restart found the database already migrated
    [(run_id,)] = query(database, "SELECT r.run_uuid FROM runs r JOIN experiments e ON e.experiment_id = "
                                  "r.experiment_id WHERE e.name = 'server-outage'")
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.params["family"] == "logistic" and "test_roc_auc" in run.data.metrics
    assert mlflow.artifacts.load_dict(f"runs:/{run_id}/specs.json")["experiment"]["name"] == "server-outage"
    assert mlflow.MlflowClient().search_model_versions(f"run_id = '{run_id}'") == []


def test_server_restarted_mid_run_client_retries_and_the_run_completes(as_admin, monkeypatch, small_spec,
                                                                      small_data):
    def restart() -> None:
        as_admin.stop()
        as_admin.start(wait=False)

    # MLflow's own retries, deterministic: after 0, 2, 6, 14, 30, 62 ... s (10 at most, MLflow's limit)
    for key, value in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "10", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}.items():
        monkeypatch.setenv(key, value)
    inject_before_model_upload(monkeypatch, restart)
    exp = quick_experiment("server-restart")
    outcome = train_and_log(exp, small_spec, small_data)
    assert len(as_admin.logs) >= 2
    run = mlflow.MlflowClient().get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.params["family"] == "logistic"
    assert run.data.metrics["test_roc_auc"] == pytest.approx(outcome.test["test_roc_auc"])
    [version] = mlflow.MlflowClient().search_model_versions(f"run_id = '{outcome.run_id}'")
    assert version.version == outcome.registered_version
