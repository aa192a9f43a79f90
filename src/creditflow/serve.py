"""`creditflow serve`: MLflow's own scoring app for a registered model, behind a thin ASGI guard.

`mlflow models serve` runs `mlflow.pyfunc.scoring_server` under uvicorn. We run that same app
(`scoring_server.init(model)`: /invocations, /ping, /health, /version, its JSON and CSV parsing,
signature enforcement, request timeout) and add what it lacks for credit data:

- a body-size limit (413) and a row limit (413), checked before anything is parsed;
- the request's shape checked first (`validation.check_body`), so a bad request gets a 4xx naming
  the problem instead of MLflow's message, which repeats the whole input; booleans are refused
  rather than read as 1.0;
- every other error body MLflow produces replaced by a message without the input (the model's own
  errors, marked `source: creditflow`, are already safe and pass unchanged);
- TCP_NODELAY on every connection, with any number of workers (uvicorn's multi-worker listener
  loses it: uvicorn issue 3149, ~40 ms per keep-alive request).

The model is downloaded once (so all workers serve the same version); each worker loads it and
prints how long that took.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from creditflow.errors import CreditflowError, SpecError
from creditflow.validation import BadRequest, check_body

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WORKER_ENV = "CREDITFLOW_SERVE_WORKER"  # how the parent hands the worker its settings (uvicorn imports the app)
ERROR_CODES = {400: "BAD_REQUEST", 404: "NOT_FOUND", 413: "REQUEST_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE",
               500: "INTERNAL_ERROR", 503: "TEMPORARILY_UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
WITHHELD = {
    400: "the request does not match the model's input (MLflow's details withheld: they repeat the input)",
    500: "internal error while scoring; the server log has the details",
}


class ServingConfig(BaseModel):
    """How the endpoint is served: model, address, workers and request limits (serving/online.yaml)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_uri: str = "models:/credit-default@champion"
    host: str = "127.0.0.1"
    port: int = Field(5001, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    max_body_bytes: int = Field(1_048_576, gt=0)
    max_rows: int = Field(5_000, gt=0)
    timeout_seconds: int = Field(60, gt=0)


def load_serving_config(path: str | Path | None, **overrides: Any) -> ServingConfig:
    """The YAML file (if any) with command-line overrides applied; one-line errors."""
    data: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"serving config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServingConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SpecError(f"serving config: invalid field '{'.'.join(map(str, err['loc']))}': {err['msg']}") from None


# ---------------------------------------------------------------- the guard


def error_body(status: int, message: str) -> bytes:
    return json.dumps({"error_code": ERROR_CODES.get(status, "BAD_REQUEST"), "message": message}).encode()


async def respond(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None as soon as it exceeds `limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def sanitised(status: int, body: bytes) -> bytes:
    """An error body from MLflow's app with the input kept out; the model's own errors pass unchanged."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("source") == "creditflow":
        return json.dumps({"error_code": doc.get("error_code"), "message": doc.get("message")}).encode()
    if status == 504:
        return error_body(status, "scoring took longer than the request timeout")
    return error_body(status, WITHHELD[500] if status >= 500 else WITHHELD[400])


class RequestGuard:
    """ASGI middleware in front of MLflow's scoring app: limits, shape checks, safe error bodies."""

    def __init__(self, app: ASGIApp, spec: Any, config: ServingConfig):
        self.app = app
        self.spec = spec
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/invocations" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        limit = self.config.max_body_bytes
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > limit:
            await respond(send, 413, error_body(413, f"the body is larger than the limit of {limit} bytes"))
            return
        body = await read_body(receive, limit)
        if body is None:
            await respond(send, 413, error_body(413, f"the body is larger than the limit of {limit} bytes"))
            return
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        try:
            check_body(body, content_type, self.spec, self.config.max_rows)
        except BadRequest as exc:
            await respond(send, exc.status, error_body(exc.status, exc.message))
            return
        await self.app(scope, _replay(body, receive), _sanitising(send))


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that gives the inner app the body already read, then the real channel."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _sanitising(send: Send) -> Send:
    """A send channel that rewrites error responses (status >= 400) with `sanitised`."""
    state: dict[str, Any] = {"start": None, "chunks": []}

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] < 400:
                await send(message)
                return
            state["start"] = message
            return
        if state["start"] is None or message["type"] != "http.response.body":
            await send(message)
            return
        state["chunks"].append(message.get("body", b""))
        if message.get("more_body", False):
            return
        status = state["start"]["status"]
        body = sanitised(status, b"".join(state["chunks"]))
        logger.info("invocation answered %s", status)
        await respond(send, status, body)

    return wrapped


# ---------------------------------------------------------------- the worker app and the server


def create_app() -> ASGIApp:
    """uvicorn's app factory, run in each worker: load the model, build MLflow's app, wrap it."""
    from mlflow.pyfunc import load_model, scoring_server

    settings = json.loads(os.environ[WORKER_ENV])
    config = ServingConfig.model_validate(settings["config"])
    start = time.perf_counter()
    model = load_model(settings["model_path"])
    seconds = time.perf_counter() - start
    python_model = model.unwrap_python_model() if hasattr(model, "unwrap_python_model") else None
    spec = getattr(python_model, "dataset", None)
    if spec is None:
        raise CreditflowError(f"{config.model_uri} is not a creditflow model (no dataset spec in its config)")
    print(f"creditflow serve: worker {os.getpid()} loaded {config.model_uri} in {seconds:.2f} s", file=sys.stderr,
          flush=True)
    return RequestGuard(scoring_server.init(model), spec, config)


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP listener created with IPPROTO_TCP, so asyncio sets TCP_NODELAY on accepted connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CreditflowError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


def download_model(model_uri: str, into: Path) -> Path:
    """The model's files, fetched once; one-line error for an unknown model, alias or version."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking.artifact_utils import _download_artifact_from_uri

    try:
        return Path(_download_artifact_from_uri(model_uri, output_path=str(into)))
    except MlflowException as exc:
        raise CreditflowError(f"cannot load model {model_uri}: {exc.message.splitlines()[0]}") from None
    except OSError as exc:
        raise CreditflowError(f"cannot load model {model_uri}: {exc}") from None


def serve(config: ServingConfig) -> None:
    """Serve the model until interrupted: MLflow's scoring app behind `RequestGuard`, under uvicorn."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    with tempfile.TemporaryDirectory(prefix="creditflow-serve-") as tmp:
        path = download_model(config.model_uri, Path(tmp))
        os.environ[WORKER_ENV] = json.dumps({"model_path": str(path), "config": config.model_dump()})
        os.environ.setdefault("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", str(config.timeout_seconds))
        sock = listening_socket(config.host, config.port)
        uv = uvicorn.Config("creditflow.serve:create_app", factory=True, host=config.host, port=config.port,
                            workers=config.workers, timeout_worker_healthcheck=60, log_level="info")
        print(f"creditflow serve: {config.model_uri} on http://{config.host}:{config.port} "
              f"with {config.workers} worker(s)", file=sys.stderr, flush=True)
        if config.workers == 1:
            uvicorn.Server(uv).run(sockets=[sock])
        else:
            Multiprocess(uv, sockets=[sock]).run()
