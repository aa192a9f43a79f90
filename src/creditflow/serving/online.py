"""`creditflow serve`: the registered pyfunc behind MLflow's scoring app, with a request guard.

`mlflow models serve` runs `mlflow.pyfunc.scoring_server` under uvicorn. We load the model the
same way and build that same app (`scoring_server.init(model)`: /ping, /version), and put
`RequestGuard` in front of it for POST /invocations, GET /health and GET /metrics:

- a body-size limit and a row limit (413), the first checked before the body is read;
- one strict parse (`serving.requests.parse_body`) instead of MLflow's parser, whose errors repeat the
  whole input and which reads `true` as 1.0: a bad request gets a 4xx naming the problem;
- small requests read together are scored in one model call (`serving.coalesce`; `coalesce: false` turns it off);
- the typed frame goes straight to our model (its input checks and value rules; MLflow's signature check
  would only repeat the parse's typing) and the answer is written as MLflow's `predictions_to_json` writes it,
  so answers are those of `mlflow models serve`, byte for byte, plus the `model_version` that made them;
- error bodies keep the model's status (400 for the client, 500 for a model fault), never the input;
- the model is a `serving.live.LiveModel`: an alias is followed, new versions swapped in without a
  restart; an optional shadow model (`serving.shadow`) is compared on the same requests;
- or, with `segments:` (serving/segments.yaml), a `serving.segments.SegmentRouter`: a model per segment, each
  following its alias, rows routed by the segment column; GET /models lists which version answers for which;
- served on `serving.stack`: uvicorn on uvloop + httptools, TCP_NODELAY on every connection with any number of
  workers, no access log unless `access_log: true`.

The model is downloaded once at start (so all workers start on the same version); each worker loads
it, logs how long that took, and then follows the registry on its own. uvicorn and MLflow's scoring
server are imported where the server starts (the CLI's start-up time).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from creditflow.errors import BadRequest, CreditflowError
from creditflow.model.artifact import ERROR_SOURCE
from creditflow.registry.client import ModelRef, download_model, follows_registry, resolve_model
from creditflow.scoped import environ
from creditflow.serving.coalesce import Coalescer, Outcome, predict
from creditflow.serving.features import FeatureStore, FeatureStoreError, UnknownApplicants, UnreadableRecords
from creditflow.serving.live import LiveModel, Loaded, load_local
from creditflow.serving.metrics import MULTIPROC_ENV, Metrics
from creditflow.serving.requests import parse_body, parse_records
from creditflow.serving.segments import (
    SegmentRouter,
    SegmentsConfig,
    resolve_deployment,
    segment_follower,
    with_fallback,
)
from creditflow.serving.shadow import ShadowRunner
from creditflow.serving.stack import listening_socket, log_config, run, stack
from creditflow.serving.typed import frame_of
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
    timeout_seconds: float = Field(60, gt=0)
    feature_store: str = ""  # redis://host:port/db of precomputed features: enables POST /invocations/by-id
    reload_seconds: float = Field(30, ge=0)  # how often an alias is re-resolved (0: the start-up version, pinned)
    shadow: str = ""  # a model scored on the same requests off the response path, compared with the champion
    shadow_queue: int = Field(1_000, gt=0)  # answered requests waiting for the shadow; beyond it they are dropped
    shadow_window_seconds: float = Field(60, gt=0)  # how often the comparison is written to MLflow
    segments: SegmentsConfig | None = None  # a model per segment, the fallback for the rest (serving/segments.yaml)
    access_log: bool = False  # uvicorn's line per request (/metrics counts requests by path, status and latency)
    coalesce: bool = True  # score requests that arrive together in one model call (serving.coalesce)

    @model_validator(mode="after")
    def _segmented(self) -> ServingConfig:
        if self.segments is None:
            return self
        if self.shadow or self.feature_store:
            raise ValueError("a segmented deployment serves POST /invocations only: no shadow, no feature_store")
        return with_fallback(self)


def load_serving_config(path: str | Path | None, **overrides: Any) -> ServingConfig:
    """The YAML file (if any) with command-line overrides applied; one-line errors."""
    return load_config(ServingConfig, path, "serving config", **overrides)


# ---------------------------------------------------------------- the guard


def error_body(status: int, message: str) -> bytes:
    return json.dumps({"error_code": ERROR_CODES.get(status, "BAD_REQUEST"), "message": message}).encode()


async def respond(send: Send, status: int, body: bytes, content_type: str = "application/json") -> int:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return status


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

    POST /invocations is parsed once, by `parse_body`, and the typed frame goes to the version the
    `LiveModel` serves when the request arrives; the answer is MLflow's `predictions_to_json` body, each
    prediction with its `model_version`. Small requests read together share one model call
    (`Coalescer`); requests of more than INLINE_ROWS applicants run in a worker thread under the request timeout.
    GET /health reports the served version and the registry polls, GET /metrics the Prometheus figures; every other
    route is MLflow's.
    """

    def __init__(self, app: ASGIApp, live: LiveModel | SegmentRouter, config: ServingConfig,
                 features: FeatureStore | None = None,
                 metrics: Metrics | None = None, shadow: ShadowRunner | None = None):
        self.app, self.live, self.config, self.features = app, live, config, features
        self.metrics = metrics or live.metrics
        self.shadow, self.segment = shadow, config.segments.column if config.segments else ""  # the routing column
        self.coalescer = Coalescer(answered, INLINE_ROWS, self.metrics.coalesced.observe) if config.coalesce else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self.on_shutdown(receive), send)
        elif scope["type"] == "http" and scope["method"] == "GET" and scope["path"] in ("/health", "/metrics",
                                                                                       "/models"):
            await self.report(scope["path"], send)
        elif scope["type"] != "http" or scope["path"] not in ("/invocations", BY_ID) or scope["method"] != "POST":
            await self.app(scope, receive, send)
        else:
            start = time.perf_counter()
            status = await self.invocation(scope, receive, send)
            self.metrics.request(scope["path"], status, time.perf_counter() - start)

    def on_shutdown(self, receive: Receive) -> Receive:
        """`receive` for the lifespan protocol that also stops the followers and the shadow at shutdown."""
        async def watched() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(self.close)
            return message
        return watched

    def close(self) -> None:
        self.live.stop()
        if self.shadow is not None:
            self.shadow.stop()

    async def report(self, path: str, send: Send) -> None:
        if path == "/metrics":
            body, content_type = self.metrics.exposition()
            await respond(send, 200, body, content_type)
            return
        if path == "/models":
            await respond(send, 200, json.dumps({"models": self.live.models()}).encode())
            return
        health = {"status": "ok", **self.live.health()}
        if self.shadow is not None:
            health["shadow"] = self.shadow.health
        await respond(send, 200, json.dumps(health).encode())

    async def invocation(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Answer one scoring request; its status."""
        headers = dict(scope["headers"])
        limit = self.config.max_body_bytes
        declared = headers.get(b"content-length", b"0")  # chunked bodies have none: counted as they come
        if not declared.isdigit():
            return await respond(send, 400, error_body(400, "the Content-Length header is not a whole number"))
        body = await read_body(receive, limit) if int(declared) <= limit else None
        if body is None:
            return await respond(send, 413, error_body(413, f"the body is larger than the limit of {limit} bytes"))
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        loaded = self.live.current  # this request's version, whatever is swapped in meanwhile
        try:
            if scope["path"] == BY_ID:
                frame = parse_records(await self.looked_up(body), loaded.spec, self.config.max_rows, self.segment)
            else:
                frame = parse_body(body, content_type, loaded.spec, self.config.max_rows, self.segment)
        except BadRequest as exc:
            return await respond(send, exc.status, error_body(exc.status, exc.message))
        except UnknownApplicants as exc:
            return await respond(send, 404, error_body(404, str(exc)))
        except UnreadableRecords as exc:  # damaged in the store: the server's fault, not the client's
            logger.error("%s", exc)
            return await respond(send, 500, error_body(500, WITHHELD[500]))
        except FeatureStoreError as exc:
            logger.error("%s", exc)
            return await respond(send, 503, error_body(503, "the feature store is unavailable"))
        status, payload, answer = await self.score(loaded, frame)
        await respond(send, status, payload)
        if answer is not None:
            self.metrics.answered(answer)
            if self.shadow is not None:
                self.shadow.offer(frame_of(frame), answer, loaded.label)
        return status

    async def looked_up(self, body: bytes) -> list[dict[str, Any]]:
        """A by-id body's (`{"applicant_ids": [...]}`) applicants as their stored features, in order."""
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
        return await self.features.get_async([str(i) for i in ids])

    async def score(self, loaded: Loaded | Any, frame: Any) -> tuple[int, bytes, Any]:
        """(status, body, answer columns or None) for a parsed request; errors keep their status, never the input."""
        if len(frame) <= INLINE_ROWS:  # small: a thread hand-off would cost more than it saves
            if self.coalescer is not None and not self.segment:  # a segmented deployment's rows are scored alone
                return await self.coalescer.score(loaded, frame)
            return answered(loaded, frame)
        try:
            work = asyncio.to_thread(answered, loaded, frame)
            return await asyncio.wait_for(work, timeout=self.config.timeout_seconds)
        except TimeoutError:
            return 504, error_body(504, "scoring took longer than the request timeout"), None


def answered(loaded: Loaded | Any, frame: Any) -> Outcome:
    """One request scored by itself: (status, body, answer columns or None); every error a status and a safe body."""
    from mlflow.exceptions import MlflowException

    try:
        return 200, *predict(loaded, frame)
    except MlflowException as exc:
        return *safe_error(exc), None
    except Exception:
        logger.exception("internal error while scoring")
        return 500, error_body(500, WITHHELD[500]), None


# ---------------------------------------------------------------- the worker app and the server


def create_app() -> ASGIApp:
    """uvicorn's app factory, run in each worker: load the models, follow the registry, wrap MLflow's app."""
    from mlflow.pyfunc import scoring_server

    settings = json.loads(os.environ[WORKER_ENV])
    config = ServingConfig.model_validate(settings["config"])
    metrics = Metrics(settings["metrics_dir"])
    start = time.perf_counter()
    first = load_local(Path(settings["champion"]["path"]), **settings["champion"]["ref"])
    seconds = time.perf_counter() - start
    logger.info("creditflow serve: worker %d loaded %s (%s) in %.2f s", os.getpid(), config.model_uri, first.label,
                seconds)
    live: LiveModel | SegmentRouter = LiveModel(config.model_uri, first, config.reload_seconds, "champion", metrics)
    if config.segments:  # each segment's version, if it has one, downloaded by the parent
        segments = {s: segment_follower(config.segments, s, at and load_local(Path(at["path"]), **at["ref"]),
                                        config.reload_seconds, metrics) for s, at in settings["segments"].items()}
        live = SegmentRouter(config.segments.column, live, segments)
    live.start()
    shadow = None
    if config.shadow:  # its own process: loads and follows the shadow model, compares, writes MLflow runs
        shadow = ShadowRunner({**settings["shadow"], "uri": config.shadow, "reload_seconds": config.reload_seconds,
                               "window_seconds": config.shadow_window_seconds}, metrics, config.shadow_queue).start()
    features = FeatureStore(config.feature_store, first.spec.name) if config.feature_store else None
    return RequestGuard(scoring_server.init(first.model), live, config, features, metrics, shadow)


def downloaded(ref: ModelRef, into: Path) -> dict[str, Any]:
    """A model's files for the workers, and how to name it: all workers start on the same version."""
    path = download_model(ref, into)
    return {"path": str(path), "ref": {"uri": ref.uri, "name": ref.name, "version": ref.version}}


def shadow_settings(config: ServingConfig, champion: ModelRef, into: Path) -> dict[str, Any] | None:
    """The shadow model's files, once it is known to read the champion's columns (one line if it does not)."""
    if not config.shadow:
        return None
    shadow = resolve_model(config.shadow)
    missing = sorted(set(shadow.required) - set(champion.columns))
    if missing:
        raise CreditflowError(f"shadow model {config.shadow} needs columns the champion's requests do not carry: "
                              f"{', '.join(missing)}")
    return downloaded(shadow, into)


def segment_settings(config: ServingConfig, into: Path) -> dict[str, Any]:
    """Each segment's model files (None for a segment without a champion yet): the deployment checked first."""
    if not config.segments:
        return {}
    refs = resolve_deployment(config.segments)
    return {s: ref and downloaded(ref, into / s) for s, ref in refs.segments.items()}


def serve(config: ServingConfig) -> None:
    """Serve the model until interrupted: MLflow's scoring app behind `RequestGuard`, on `serving.stack`."""
    with tempfile.TemporaryDirectory(prefix="creditflow-serve-") as tmp, ExitStack() as scoped:
        champion = resolve_model(config.model_uri)
        settings = {"config": config.model_dump(), "champion": downloaded(champion, Path(tmp) / "champion"),
                    "shadow": shadow_settings(config, champion, Path(tmp) / "shadow"), "metrics_dir": "",
                    "segments": segment_settings(config, Path(tmp) / "segments")}
        if config.feature_store:  # fail now, in one line, rather than on the first request
            FeatureStore(config.feature_store, "").ping()
        if config.workers > 1:  # prometheus_client's multiprocess mode, set before the workers import it
            settings["metrics_dir"] = str(Path(tmp) / "metrics")
            Path(settings["metrics_dir"]).mkdir()
            scoped.enter_context(environ(MULTIPROC_ENV, settings["metrics_dir"]))
        sock = listening_socket(config.host, config.port)
        by_id = f"; applicants by id from {config.feature_store}" if config.feature_store else ""
        follows = f"; following the registry every {config.reload_seconds:g} s" if (
            config.reload_seconds and follows_registry(config.model_uri)) else ""
        shadow = f"; shadow {config.shadow}" if config.shadow else ""
        logger.info("creditflow serve: %s (%s) on http://%s:%d with %d worker(s), %s + %s%s%s%s", config.model_uri,
                    champion.label, config.host, config.port, config.workers, *stack(), by_id, follows, shadow)
        scoped.enter_context(environ(WORKER_ENV, json.dumps(settings)))  # the workers read it at start
        run("creditflow.serving.online:create_app", sock, config.workers, config.access_log, factory=True,
            log_level="info", log_config=log_config())
