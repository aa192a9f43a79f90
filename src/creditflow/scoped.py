"""Process-wide settings changed for a block only, and restored after it."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def environ(name: str, value: str | None) -> Iterator[None]:
    """An environment variable set (None: unset) for the block only, then as it was."""
    before = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@contextmanager
def sys_path() -> Iterator[None]:
    """`sys.path` as it was before the block (loading an MLflow model prepends its code folder to it)."""
    before = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = before


@contextmanager
def tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's tracking URI for the block only: the variable and MLflow's own setting, which wins over it.

    A process that runs task after task (a Spark Python worker) keeps what an earlier task set: MLflow's
    `spark_udf` sets the driver's URI inside the worker, and the variable alone would not override it.
    """
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with environ("MLFLOW_TRACKING_URI", uri), _use_tracking_uri(uri):
        yield


@contextmanager
def log_level(name: str, level: int) -> Iterator[None]:
    """A logger's level (and so its children's, unless they set their own) for the block only, then as it was."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
