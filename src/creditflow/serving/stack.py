"""The server stack `creditflow serve` runs, and the benchmarks' HTTP floor with it (scripts/bench/floor_app.py).

uvicorn on uvloop's event loop with httptools' HTTP parser (both pinned dependencies: uvicorn alone falls back to
asyncio and h11, several times slower per request; docs/performance.md), one listener created with IPPROTO_TCP so
every accepted connection gets TCP_NODELAY, with any number of workers (uvicorn's multi-worker listener loses it:
uvicorn issue 3149, which delays keep-alive requests), and no access log unless asked for (/metrics counts requests).
uvicorn is imported where a server starts (the CLI's start-up time).
"""

from __future__ import annotations

import copy
import logging
import socket
from importlib.util import find_spec
from typing import Any

from creditflow.errors import CreditflowError

logger = logging.getLogger(__name__)

LOOP, HTTP = "uvloop", "httptools"  # what uvicorn runs on when both are installed
FALLBACK = {LOOP: "asyncio", HTTP: "h11"}


def stack() -> tuple[str, str]:
    """(event loop, HTTP parser): uvloop and httptools, or uvicorn's pure-Python defaults when one is missing."""
    loop, http = (name if find_spec(name) else FALLBACK[name] for name in (LOOP, HTTP))
    return loop, http


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


def run(app: Any, sock: socket.socket, workers: int, access_log: bool = False, **settings: Any) -> None:
    """Serve `app` (an ASGI app, or an import string with `factory=True`) on `sock` (`listening_socket`) until
    interrupted."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    loop, http = stack()
    if (loop, http) != (LOOP, HTTP):
        logger.warning("%s not installed: serving on %s + %s, slower per request (pip install uvloop httptools)",
                       " and ".join(n for n in (LOOP, HTTP) if not find_spec(n)), loop, http)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, workers=workers, loop=loop, http=http, access_log=access_log,
                            timeout_worker_healthcheck=60, **settings)
    if workers == 1:
        uvicorn.Server(config).run(sockets=[sock])
    else:
        Multiprocess(config, sockets=[sock]).run()
