"""`creditflow serve`: the registered pyfunc behind MLflow's scoring app, with a request guard.

`mlflow models serve` runs `mlflow.pyfunc.scoring_server` under uvicorn. We load the model the
same way and build that same app (`scoring_server.init(model)`: /ping, /health, /version), and put
`RequestGuard` in front of it for POST /invocations:

- a body-size limit and a row limit (413), the first checked before the body is read;
- one strict parse (`serving.requests.parse_body`) instead of MLflow's parser, whose errors repeat the
  whole input and which reads `true` as 1.0: a bad request gets a 4xx naming the problem;
- the typed frame goes to the pyfunc (MLflow's signature enforcement, then our model) and
  MLflow's `predictions_to_json` writes the answer, so answers are those of `mlflow models serve`;
- error bodies keep the model's status (400 for the client, 500 for a model fault), never the input;
- TCP_NODELAY on every connection, with any number of workers (uvicorn's multi-worker listener
  loses it: uvicorn issue 3149, which delays keep-alive requests).

The model is downloaded once (so all workers serve the same version); each worker loads it and
logs how long that took. uvicorn and MLflow's scoring server are imported where the server starts
(the CLI's start-up time).
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from creditflow.errors import BadRequest, CreditflowError
from creditflow.model.artifact import ERROR_SOURCE
from creditflow.registry.client import download_model, resolve_model
from creditflow.scoped import environ
from creditflow.serving.features import FeatureStore, FeatureStoreError, UnknownApplicants
from creditflow.serving.requests import parse_body
from creditflow.specs import CHAMPION_URI, load_config

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BY_ID = "/invocations/by-id"  # applicants by id, their features from the feature store
INLINE_ROWS = 100  # requests up to this many applicants are scored on the event loop, larger ones in a thread
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

    model_uri: str = CHAMPION_URI
    host: str = "127.0.0.1"
    port: int = Field(5001, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    max_body_bytes: int = Field(1_048_576, gt=0)
    max_rows: int = Field(5_000, gt=0)
    timeout_seconds: int = Field(60, gt=0)
    feature_store: str = ""  # redis://host:port/db of precomputed features: enables POST /invocations/by-id


def load_serving_config(path: str | Path | None, **overrides: Any) -> ServingConfig:
    """The YAML file (if any) with command-line overrides applied; one-line errors."""
    return load_config(ServingConfig, path, "serving config", **overrides)


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


def safe_error(exc: Any) -> tuple[int, bytes]:
    """Status and body for an MlflowException from `predict`: the model's own errors (marked
    `source: creditflow`) keep their message; MLflow's own, which may hold the input, are withheld."""
    status = exc.get_http_status_code()
    if exc.json_kwargs.get("source") == ERROR_SOURCE:
        return status, json.dumps({"error_code": exc.error_code, "message": exc.message}).encode()
    return status, error_body(status, WITHHELD[500] if status >= 500 else WITHHELD[400])


class RequestGuard:
    """ASGI app in front of MLflow's scoring app: limits, one strict parse, the pyfunc, safe error bodies.

    POST /invocations is parsed once, by `parse_body`, and the typed frame goes to the
    loaded pyfunc (MLflow's signature enforcement, then our model); MLflow's `predictions_to_json`
    writes the answer. Requests of more than INLINE_ROWS applicants run in a worker thread under the
    request timeout. Every other route is MLflow's app.
    """

    def __init__(self, app: ASGIApp, model: Any, config: ServingConfig, features: FeatureStore | None = None):
        self.app = app
        self.model = model
        self.spec = model.unwrap_python_model().dataset
        self.config = config
        self.features = features

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in ("/invocations", BY_ID) or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        limit = self.config.max_body_bytes
        declared = headers.get(b"content-length", b"0")
        body = await read_body(receive, limit) if declared.isdigit() and int(declared) <= limit else None
        if body is None:
            await respond(send, 413, error_body(413, f"the body is larger than the limit of {limit} bytes"))
            return
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        try:
            if scope["path"] == BY_ID:
                body, content_type = self.looked_up(body), "application/json"
            frame = parse_body(body, content_type, self.spec, self.config.max_rows)
        except BadRequest as exc:
            await respond(send, exc.status, error_body(exc.status, exc.message))
            return
        except UnknownApplicants as exc:
            await respond(send, 404, error_body(404, str(exc)))
            return
        except FeatureStoreError as exc:
            logger.error("%s", exc)
            await respond(send, 503, error_body(503, "the feature store is unavailable"))
            return
        status, payload = await self.score(frame)
        await respond(send, status, payload)

    def looked_up(self, body: bytes) -> bytes:
        """A by-id body (`{"applicant_ids": [...]}`) as the dataframe_records body of their stored features."""
        if self.features is None:
            raise BadRequest(f"this endpoint has no feature store: start it with --feature-store to use {BY_ID}", 404)
        try:
            ids = json.loads(body)["applicant_ids"]
        except (ValueError, TypeError, KeyError):
            raise BadRequest('send {"applicant_ids": ["17", ...]}: a JSON object with a list of ids') from None
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str | int) for i in ids):
            raise BadRequest('"applicant_ids" must be a non-empty list of ids (text or whole numbers)')
        if len(ids) > self.config.max_rows:
            raise BadRequest(f"too many applicants in one request: {len(ids)} (at most {self.config.max_rows})", 413)
        return json.dumps({"dataframe_records": self.features.get([str(i) for i in ids])}).encode()

    async def score(self, frame: Any) -> tuple[int, bytes]:
        """(status, body) for a parsed request; errors from the model keep their status, never the input."""
        from mlflow.exceptions import MlflowException

        try:
            if len(frame) <= INLINE_ROWS:  # small: a thread hand-off would cost more than it saves
                return 200, self.predict(frame)
            work = asyncio.to_thread(self.predict, frame)
            return 200, await asyncio.wait_for(work, timeout=self.config.timeout_seconds)
        except MlflowException as exc:
            return safe_error(exc)
        except TimeoutError:
            return 504, error_body(504, "scoring took longer than the request timeout")
        except Exception:
            logger.exception("internal error while scoring")
            return 500, error_body(500, WITHHELD[500])

    def predict(self, frame: Any) -> bytes:
        from mlflow.pyfunc import scoring_server

        out = io.StringIO()
        scoring_server.predictions_to_json(self.model.predict(frame), out)
        return out.getvalue().encode()


# ---------------------------------------------------------------- the worker app and the server


def create_app() -> ASGIApp:
    """uvicorn's app factory, run in each worker: load the model, build MLflow's app, wrap it."""
    from mlflow.pyfunc import load_model, scoring_server

    settings = json.loads(os.environ[WORKER_ENV])
    config = ServingConfig.model_validate(settings["config"])
    start = time.perf_counter()
    model = load_model(settings["model_path"])
    seconds = time.perf_counter() - start
    logger.info("creditflow serve: worker %d loaded %s in %.2f s", os.getpid(), config.model_uri, seconds)
    spec = model.unwrap_python_model().dataset
    features = FeatureStore(config.feature_store, spec.name) if config.feature_store else None
    return RequestGuard(scoring_server.init(model), model, config, features)


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


def log_config() -> dict[str, Any]:
    """uvicorn's logging config plus our logger's lines as they are (each worker process applies it)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["plain"] = {"format": "%(message)s"}
    config["handlers"]["creditflow"] = {"class": "logging.StreamHandler", "formatter": "plain",
                                        "stream": "ext://sys.stderr"}
    config["loggers"]["creditflow"] = {"handlers": ["creditflow"], "level": "INFO", "propagate": False}
    return config


def serve(config: ServingConfig) -> None:
    """Serve the model until interrupted: MLflow's scoring app behind `RequestGuard`, under uvicorn."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    with tempfile.TemporaryDirectory(prefix="creditflow-serve-") as tmp:
        path = download_model(resolve_model(config.model_uri), Path(tmp))
        if config.feature_store:  # fail now, in one line, rather than on the first request
            FeatureStore(config.feature_store, "").ping()
        settings = json.dumps({"model_path": str(path), "config": config.model_dump()})
        sock = listening_socket(config.host, config.port)
        uv = uvicorn.Config("creditflow.serving.online:create_app", factory=True, host=config.host, port=config.port,
                            workers=config.workers, timeout_worker_healthcheck=60, log_level="info",
                            log_config=log_config())
        by_id = f"; applicants by id from {config.feature_store}" if config.feature_store else ""
        logger.info("creditflow serve: %s on http://%s:%d with %d worker(s)%s", config.model_uri, config.host,
                    config.port, config.workers, by_id)
        with environ(WORKER_ENV, settings):  # the workers read it when uvicorn imports the app
            if config.workers == 1:
                uvicorn.Server(uv).run(sockets=[sock])
            else:
                Multiprocess(uv, sockets=[sock]).run()
