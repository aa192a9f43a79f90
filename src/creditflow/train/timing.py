"""Seconds of each training stage, kept for logging as metrics (and shown as progress lines)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)


@contextmanager
def timed(facts: dict[str, float], key: str, label: str = "") -> Iterator[None]:
    """Time the block into facts[key]; with a label, log a line when it starts and when it ends."""
    start = time.perf_counter()
    if label:
        logger.info("[%s] ...", label)
    yield
    facts[key] = seconds = round(time.perf_counter() - start, 3)
    if label:
        logger.info("[%s] done in %.1f s", label, seconds)
    else:
        logger.debug("%s: %.2f s", key, seconds)
