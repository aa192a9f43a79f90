"""The tracking server's configuration: MLflow's variables from the environment or `.env`, validated once."""

from __future__ import annotations

from pathlib import Path

import pytest

from creditflow.cli import build_parser
from creditflow.ops import tracking_server as server
from creditflow.ops.tracking_server import ServerError


def config(argv: list[str], environ: dict[str, str], env_file: Path | None = None) -> server.ServerConfig:
    args = build_parser().parse_args(["tracking-server", *argv])
    return server.build_config(args, server.read_settings(environ, env_file))


PRODUCTION = {"MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:pw@db.internal:5432/mlflow",
              "MLFLOW_ARTIFACTS_DESTINATION": "s3://team-artifacts/mlflow",
              "MLFLOW_S3_ENDPOINT_URL": "http://minio:9000"}
AUTH = {"MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-admin-password", "MLFLOW_FLASK_SERVER_SECRET_KEY": "k"}


def test_env_file_fills_in_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("MLFLOW_BACKEND_STORE_URI=postgresql://u:p@from-file/db\n"
                        "MLFLOW_ARTIFACTS_DESTINATION=s3://from-file\nAWS_SECRET_ACCESS_KEY=file-secret\n"
                        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=20\n")
    settings = server.read_settings({"MLFLOW_ARTIFACTS_DESTINATION": "s3://from-env"}, env_file)
    cfg = server.build_config(build_parser().parse_args(["tracking-server", "--profile", "production"]), settings)
    assert cfg.backend_store_uri == "postgresql+psycopg2://u:p@from-file/db"  # the driver we ship
    assert cfg.bucket == "from-env"
    assert cfg.aws_secret_access_key.get_secret_value() == "file-secret"
    assert "file-secret" not in repr(cfg) and "file-secret" not in str(cfg.model_dump())
    env = server.server_env(cfg, settings)  # the server process gets the file's other variables too
    assert env["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"] == "20" and env["AWS_SECRET_ACCESS_KEY"] == "file-secret"


def test_production_command_proxies_artifacts_and_binds_locally() -> None:
    cfg = config(["--profile", "production", "--auth", "--workers", "3"], {**PRODUCTION, **AUTH})
    cmd = server.server_command(cfg)
    assert cmd[1:4] == ["-m", "mlflow", "server"] and "--serve-artifacts" in cmd
    assert cmd[cmd.index("--artifacts-destination") + 1] == "s3://team-artifacts/mlflow"
    assert "pw" not in " ".join(cmd)  # the database password goes by environment, not the process list
    env = server.server_env(cfg, {**PRODUCTION, **AUTH})
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://mlflow:pw@db.internal:5432/mlflow"
    assert (cmd[cmd.index("--host") + 1], cmd[cmd.index("--port") + 1]) == ("127.0.0.1", "5000")
    assert cmd[cmd.index("--workers") + 1] == "3" and cmd[-2:] == ["--app-name", "basic-auth"]
    assert "--app-name" not in server.server_command(config(["--profile", "production"], PRODUCTION))


def test_local_profile_ignores_production_settings(tmp_path: Path) -> None:
    cfg = config(["--profile", "local", "--host", "0.0.0.0", "--port", "5055"], PRODUCTION)
    assert cfg.backend_store_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"  # tests run in tmp_path
    assert server.server_env(cfg, PRODUCTION)["MLFLOW_BACKEND_STORE_URI"] == cfg.backend_store_uri
    assert cfg.artifacts_destination == str(tmp_path / "mlartifacts") and cfg.url == "http://0.0.0.0:5055"


@pytest.mark.parametrize(("settings", "message"), [
    ({}, "MLFLOW_BACKEND_STORE_URI must be postgresql://"),
    ({"MLFLOW_BACKEND_STORE_URI": "sqlite:///mlflow.db"}, "MLFLOW_BACKEND_STORE_URI must be postgresql://"),
    ({**PRODUCTION, "MLFLOW_ARTIFACTS_DESTINATION": ""}, "MLFLOW_ARTIFACTS_DESTINATION must be s3://BUCKET"),
    ({**PRODUCTION, "MLFLOW_ARTIFACTS_DESTINATION": "/srv/artifacts"}, "got '/srv/artifacts'"),
    ({"MLFLOW_BACKEND_STORE_URI": "mysql://root:hunter2@db/mlflow"}, r"got 'mysql://root@db/mlflow'"),
])
def test_production_never_falls_back_to_local_storage(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ServerError, match=message):
        config(["--profile", "production"], settings)


@pytest.mark.parametrize(("auth", "message"), [
    ({}, "needs the admin password in MLFLOW_AUTH_ADMIN_PASSWORD"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "password1234"}, "not MLflow's old default"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "short"}, "at least 12 characters"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-admin-password"}, "needs MLFLOW_FLASK_SERVER_SECRET_KEY"),
])
def test_auth_needs_a_real_admin_password_and_a_secret_key(auth: dict[str, str], message: str) -> None:
    with pytest.raises(ServerError, match=message):
        config(["--profile", "production", "--auth"], {**PRODUCTION, **auth})


def test_bad_port_is_one_line() -> None:
    with pytest.raises(ServerError, match="port: Input should be less than or equal to 65535"):
        config(["--profile", "local", "--port", "70000"], {})


def test_generated_auth_config_is_read_by_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's own reader sees our users database (the tracking database), no default access, env password."""
    from mlflow.server.auth.config import read_auth_config

    settings = {**PRODUCTION, **AUTH, "MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:p%40ss@db/mlflow"}
    cfg = config(["--profile", "production", "--auth", "--state-dir", str(tmp_path / "state")], settings)
    env = server.server_env(cfg, {"MLFLOW_DEFAULT_ARTIFACT_ROOT": "/elsewhere", **settings})
    assert "MLFLOW_DEFAULT_ARTIFACT_ROOT" not in env and env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    for key in ("MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        monkeypatch.setenv(key, env[key])
    auth = read_auth_config()
    assert auth.database_uri == "postgresql+psycopg2://mlflow:p%40ss@db/mlflow"
    assert auth.default_permission == "NO_PERMISSIONS"
    assert (auth.admin_username, auth.admin_password) == ("admin", "a-long-admin-password")
    assert "a-long-admin-password" not in Path(env["MLFLOW_AUTH_CONFIG_PATH"]).read_text()


def test_local_auth_keeps_users_beside_the_local_store(tmp_path: Path) -> None:
    cfg = config(["--profile", "local", "--auth", "--state-dir", str(tmp_path / "s")], AUTH)
    text = server.auth_config_file(cfg).read_text()
    assert f"database_uri = sqlite:///{tmp_path / 's' / 'basic_auth.db'}" in text
