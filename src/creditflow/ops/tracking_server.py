"""The MLflow tracking server, started after checks: SQLite locally, PostgreSQL + S3 in production.

Settings come from MLflow's own environment variables (or a git-ignored `.env` holding them; the
process environment wins), are validated once into a frozen `ServerConfig`, checked against the
real database and bucket, and only then handed to `mlflow server`. Anything wrong ends as one line
on stderr and exit code 2: never a silent fallback to local storage.

    creditflow tracking-server --profile production --auth   # what scripts/start_tracking_server.sh runs
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from creditflow.errors import CreditflowError, first_line, without_password
from creditflow.specs import first_error

logger = logging.getLogger(__name__)

LEGACY_ADMIN_PASSWORD = "password1234"  # shipped by old MLflow versions; refused here as by MLflow
MIN_PASSWORD = 12  # MLflow's basic-auth password policy


class ServerError(CreditflowError):
    """The tracking server cannot start as configured (bad settings, database or bucket)."""


class ServerConfig(BaseModel):
    """Everything `mlflow server` is started with, validated once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    profile: Literal["local", "production"]
    host: str = "127.0.0.1"
    port: int = Field(5000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    auth: bool = False
    create_bucket: bool = False
    state_dir: Path
    backend_store_uri: str
    artifacts_destination: str
    s3_endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_region: str | None = None
    auth_config_path: Path | None = None
    admin_username: str = "admin"
    admin_password: SecretStr | None = None
    flask_secret_key: SecretStr | None = None

    @model_validator(mode="after")
    def _production_is_postgres_and_s3(self) -> ServerConfig:
        if self.profile == "production":
            if not self.backend_store_uri.startswith("postgresql"):
                shown = without_password(self.backend_store_uri) or "nothing"
                raise ValueError("MLFLOW_BACKEND_STORE_URI must be postgresql://USER:PASSWORD@HOST:PORT/DB "
                                 f"for the production profile (got '{shown}')")
            if not self.bucket:
                raise ValueError("MLFLOW_ARTIFACTS_DESTINATION must be s3://BUCKET[/prefix] for the production "
                                 f"profile (got '{self.artifacts_destination or 'nothing'}')")
        return self

    @model_validator(mode="after")
    def _auth_has_secrets(self) -> ServerConfig:
        if not self.auth:
            return self
        password = self.admin_password.get_secret_value() if self.admin_password else ""
        if not password:
            raise ValueError("--auth needs the admin password in MLFLOW_AUTH_ADMIN_PASSWORD")
        if password == LEGACY_ADMIN_PASSWORD or len(password) < MIN_PASSWORD:
            raise ValueError(f"MLFLOW_AUTH_ADMIN_PASSWORD must be at least {MIN_PASSWORD} characters "
                             "and not MLflow's old default")
        if not self.flask_secret_key or not self.flask_secret_key.get_secret_value():
            raise ValueError("--auth needs MLFLOW_FLASK_SERVER_SECRET_KEY (the same on every server)")
        return self

    @property
    def bucket(self) -> str | None:
        parsed = urlparse(self.artifacts_destination)
        return parsed.netloc if parsed.scheme == "s3" and parsed.netloc else None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def driver_uri(uri: str) -> str:
    """`postgresql://` with the installed driver: SQLAlchemy 2.1 would pick psycopg 3, we ship psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if uri.startswith(prefix):
            return "postgresql+psycopg2://" + uri[len(prefix):]
    return uri


def read_settings(environ: Mapping[str, str], env_file: Path | None) -> dict[str, str]:
    """The variables of the `.env` file under the process environment (the server gets them all, e.g. pool sizes)."""
    from dotenv import dotenv_values

    from_file = {k: v for k, v in dotenv_values(env_file).items() if v is not None} if env_file else {}
    return {**from_file, **environ}


def add_tracking_server_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `creditflow tracking-server` (scripts/start_tracking_server.sh), read by `build_config`."""
    p.add_argument("--profile", required=True, choices=("local", "production"),
                   help="local: SQLite ./mlflow.db + ./mlartifacts; production: PostgreSQL + S3 (.env.example)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    p.add_argument("--auth", action="store_true", help="MLflow basic auth: users and per-experiment permissions")
    p.add_argument("--create-bucket", action="store_true", help="create the S3 bucket if it does not exist")
    p.add_argument("--env-file", default=".env", help="file of MLflow variables (default .env; the environment wins)")
    p.add_argument("--state-dir", default=".tracking-server", help="where the generated auth config is kept")
    p.add_argument("--check-only", action="store_true", help="run the start-up checks, then exit")
    return p


def build_config(args: argparse.Namespace, settings: Mapping[str, str]) -> ServerConfig:
    """The one validated config object for this start (profile decides where metadata and artifacts go)."""
    settings = {k: v for k, v in settings.items() if v}  # an empty variable counts as unset
    state_dir = Path(args.state_dir).resolve()
    if args.profile == "local":
        stores = {"backend_store_uri": f"sqlite:///{Path('mlflow.db').resolve()}",
                  "artifacts_destination": str(Path("mlartifacts").resolve())}
    else:
        stores = {"backend_store_uri": driver_uri(settings.get("MLFLOW_BACKEND_STORE_URI", "")),
                  "artifacts_destination": settings.get("MLFLOW_ARTIFACTS_DESTINATION", ""),
                  "s3_endpoint_url": settings.get("MLFLOW_S3_ENDPOINT_URL"),
                  "aws_access_key_id": settings.get("AWS_ACCESS_KEY_ID"),
                  "aws_secret_access_key": settings.get("AWS_SECRET_ACCESS_KEY"),
                  "aws_region": settings.get("AWS_DEFAULT_REGION")}
    try:
        return ServerConfig(
            profile=args.profile, host=args.host, port=args.port, workers=args.workers, auth=args.auth,
            create_bucket=args.create_bucket, state_dir=state_dir, **stores,
            auth_config_path=settings.get("MLFLOW_AUTH_CONFIG_PATH"),
            admin_username=settings.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin"),
            admin_password=settings.get("MLFLOW_AUTH_ADMIN_PASSWORD"),
            flask_secret_key=settings.get("MLFLOW_FLASK_SERVER_SECRET_KEY"),
        )
    except ValidationError as exc:
        where, message = first_error(exc)
        raise ServerError(f"{where + ': ' if where else ''}{message}") from None


def database_revision(cfg: ServerConfig) -> str | None:
    """Connect to the database (failing fast); return its MLflow schema revision (None when empty)."""
    import sqlalchemy
    from mlflow.store.db.utils import _get_schema_version  # what `mlflow server` itself checks

    uri = cfg.backend_store_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    connect_args = {"connect_timeout": 5} if uri.startswith("postgresql") else {}
    engine = sqlalchemy.create_engine(uri, connect_args=connect_args)
    try:
        return _get_schema_version(engine)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = first_line(getattr(exc, "orig", None) or exc)
        raise ServerError(f"database {without_password(uri)} is unreachable: {reason}") from None
    finally:
        engine.dispose()


def migrate_database(cfg: ServerConfig, current: str | None) -> str:
    """Bring the schema to this MLflow's head with `mlflow db upgrade`, only where needed."""
    from mlflow.db import upgrade
    from mlflow.store.db.utils import _get_latest_schema_revision

    uri = cfg.backend_store_uri
    if current == _get_latest_schema_revision():
        return f"database {without_password(uri)}: reachable, schema current"
    try:  # in this process, so the URI (and its password) never shows in a process list
        upgrade.main([uri], standalone_mode=False)
    except Exception as exc:  # any migration failure stops the start, in one line
        reason = first_line(exc)
        raise ServerError(f"database {without_password(uri)}: `mlflow db upgrade` failed: {reason}") from None
    return f"database {without_password(uri)}: reachable, schema migrated from {current or 'empty'} to the current one"


def s3_client(cfg: ServerConfig):
    """A boto3 S3 client for the configured endpoint, failing fast (short timeouts, one attempt)."""
    import boto3
    from botocore.config import Config

    secret = cfg.aws_secret_access_key.get_secret_value() if cfg.aws_secret_access_key else None
    return boto3.client(
        "s3", endpoint_url=cfg.s3_endpoint_url, region_name=cfg.aws_region,
        aws_access_key_id=cfg.aws_access_key_id, aws_secret_access_key=secret,
        config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1}),
    )


def check_bucket(cfg: ServerConfig) -> str:
    """The S3 endpoint answers and the bucket exists (created only with --create-bucket)."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    client, bucket = s3_client(cfg), cfg.bucket
    endpoint = cfg.s3_endpoint_url or "AWS S3"
    try:
        client.head_bucket(Bucket=bucket)
        return f"bucket s3://{bucket} at {endpoint}: exists"
    except NoCredentialsError:
        raise ServerError(f"no S3 credentials for {endpoint}: "
                          "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise ServerError(f"S3 at {endpoint} refused access to bucket '{bucket}' ({code}): "
                              "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
        if code not in ("404", "NoSuchBucket"):
            raise ServerError(f"S3 at {endpoint} answered {code} for bucket '{bucket}'") from None
    except BotoCoreError as exc:
        raise ServerError(f"S3 endpoint {endpoint} does not answer: {exc}") from None
    if not cfg.create_bucket:
        raise ServerError(f"bucket '{bucket}' does not exist at {endpoint} (create it, or pass --create-bucket)")
    return create_bucket(cfg, client)


def create_bucket(cfg: ServerConfig, client) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    region = client.meta.region_name
    where = {"CreateBucketConfiguration": {"LocationConstraint": region}} if region not in (None, "us-east-1") else {}
    try:
        client.create_bucket(Bucket=cfg.bucket, **where)
    except (BotoCoreError, ClientError) as exc:
        raise ServerError(f"could not create bucket '{cfg.bucket}': {first_line(exc)}") from None
    return f"bucket s3://{cfg.bucket} at {cfg.s3_endpoint_url or 'AWS S3'}: created"


def auth_config_file(cfg: ServerConfig) -> Path:
    """MLflow's basic_auth.ini: users in the tracking database (production) or beside it; no default access."""
    if cfg.auth_config_path:
        if not cfg.auth_config_path.is_file():
            raise ServerError(f"MLFLOW_AUTH_CONFIG_PATH {cfg.auth_config_path} is not a file")
        return cfg.auth_config_path
    users = (cfg.backend_store_uri if cfg.profile == "production"
             else f"sqlite:///{cfg.state_dir / 'basic_auth.db'}")
    path = cfg.state_dir / "basic_auth.ini"
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Written by creditflow.ops.tracking_server at each start; "
        "the admin password comes from MLFLOW_AUTH_ADMIN_PASSWORD.\n"
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = {users.replace('%', '%%')}\n"
        f"admin_username = {cfg.admin_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "# a checked password is trusted for 30 s per worker: one PBKDF2 hash per user, not per request\n"
        "auth_cache_ttl_seconds = 30\n"
    )
    return path


def server_command(cfg: ServerConfig) -> list[str]:
    """`mlflow server` (the backend store URI goes by environment, keeping its password out of process lists)."""
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--artifacts-destination", cfg.artifacts_destination, "--serve-artifacts",
           "--host", cfg.host, "--port", str(cfg.port), "--workers", str(cfg.workers)]
    return [*cmd, "--app-name", "basic-auth"] if cfg.auth else cmd


def server_env(cfg: ServerConfig, settings: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: ours plus the `.env` settings (S3 credentials stay on the server)."""
    env = {**settings, "MLFLOW_BACKEND_STORE_URI": cfg.backend_store_uri}
    env.pop("MLFLOW_DEFAULT_ARTIFACT_ROOT", None)  # would bypass --artifacts-destination
    # MLflow's GenAI job runner (three extra processes) is not used by classic models
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if cfg.auth:
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config_file(cfg))
    return env


def prepare(cfg: ServerConfig) -> list[str]:
    """Run the start-up checks, cheap ones first; return what each found."""
    current = database_revision(cfg)
    if cfg.profile == "production":
        found = [check_bucket(cfg)]
    else:
        Path(cfg.artifacts_destination).mkdir(parents=True, exist_ok=True)
        found = [f"artifacts in {cfg.artifacts_destination}"]
    return [migrate_database(cfg, current), *found]


def launch(cfg: ServerConfig, env: Mapping[str, str]) -> None:
    """Replace this process with `mlflow server` (`env`: its environment, from server_env); never returns."""
    logger.info("starting mlflow server (%s%s) on %s", cfg.profile, ", auth" if cfg.auth else "", cfg.url)
    os.execve(sys.executable, server_command(cfg), env)
