"""Requests that arrive together, scored in one model call (opportunistic batching, no timer).

A model call costs about the same for one applicant as for eight (docs/performance.md, "Requests that arrive
together, scored in one call"). With several connections open, requests are read a few per event-loop iteration;
`Coalescer.score` queues each small request under the `Loaded` version it arrived on and its column labels
(`parse_body` shares one Index per spec, or per column list for frames with text), and the queue is flushed once it
has settled (`serving.settling`: once an iteration brought no one, after a few iterations, or at `max_rows`
applicants; no timer). The flush stacks the requests of a version and column list into one (one `np.concatenate` of
their raw matrices, float blocks or blocks of text, else `pd.concat`), makes one `columns` call per `max_rows`
applicants, splits the answer columns back per request and writes each body as it would be written alone (a row's
answer does not depend on the rows beside it: `model.linear`, `row_products`). If a combined call fails (one request
breaks a value rule, a model fault), each request of that call is scored alone: its own status and body, the others
still answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from functools import lru_cache
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import numpy as np
import pandas as pd

from creditflow.model.inputs import float_block
from creditflow.serving.settling import Settling
from creditflow.serving.typed import Applicants, Parsed, float_frame, stacked_blocks

logger = logging.getLogger(__name__)

Outcome = tuple[int, bytes, dict[str, list] | None]  # (status, body, answer columns or None)


def predict(loaded: Any, frame: Any) -> tuple[bytes, dict[str, list]]:
    """The answer body and columns, each prediction with its model_version (a `Loaded`, or a segments' `Routing`)."""
    columns = loaded.columns(frame)
    return answer_body(columns), columns


def answer_body(columns: Mapping[str, list]) -> bytes:
    """`{"predictions": [...]}` from an answer's columns, byte for byte as MLflow's `predictions_to_json` writes the
    answer's frame (which it turns into records with pandas, then encodes with MLflow's `NumpyEncoder`)."""
    names = list(columns)
    rows = [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    return "".join(_encoder()({"predictions": rows}, 0)).encode()


@lru_cache(maxsize=1)
def _encoder() -> Callable[[Any, int], list[str]]:
    """MLflow's `NumpyEncoder` with json.dumps' defaults as the C encoder its `encode` builds on every call, built
    once; no circular-reference check (an answer is lists of plain values). Same text: tests/serving/test_answers.py."""
    from mlflow.utils.proto_json_utils import NumpyEncoder

    mlflow_encoder = NumpyEncoder()
    return c_make_encoder(None, mlflow_encoder.default, encode_basestring_ascii, None, ": ", ", ", False, False, True)


class Waiting:
    """One queued request: its rows and the future its handler awaits."""

    __slots__ = ("frame", "future")

    def __init__(self, frame: Parsed, future: asyncio.Future):
        self.frame, self.future = frame, future


def stacked(frames: list[Parsed]) -> Parsed:
    """Requests of the same columns as one, rows in order: their raw matrices concatenated (`Applicants`, as
    `parse_body` types a numeric request), one float block's arrays, each block's arrays (text columns), or pandas'
    concat."""
    if all(isinstance(f, Applicants) for f in frames):
        return Applicants(np.concatenate([f.matrix for f in frames]), frames[0].columns)
    blocks = [float_block(f) for f in frames]
    if all(b is not None for b in blocks):
        return float_frame(np.concatenate(blocks), frames[0].columns)
    same = stacked_blocks(frames)  # text columns: each block's arrays stacked
    return pd.concat(frames, ignore_index=True) if same is None else same


def split(columns: Mapping[str, list], sizes: list[int]) -> list[dict[str, list]]:
    """A combined answer's columns cut back into each request's, in order."""
    parts, start = [], 0
    for size in sizes:
        parts.append({name: values[start:start + size] for name, values in columns.items()})
        start += size
    return parts


def batches(queued: list[Waiting], max_rows: int) -> list[list[Waiting]]:
    """Queued requests in arrival order, cut into calls of at most `max_rows` applicants."""
    out: list[list[Waiting]] = []
    rows = max_rows
    for waiting in queued:
        if rows + len(waiting.frame) > max_rows:
            out.append([])
            rows = 0
        out[-1].append(waiting)
        rows += len(waiting.frame)
    return out


class Coalescer:
    """Scores the small requests read together (`serving.settling`): one model call per version and per
    `max_rows` applicants; `alone(loaded, frame)` answers a request by itself (a batch of one, or after a combined
    call failed) with its status, body and answer columns, never raising."""

    def __init__(self, alone: Callable[[Any, pd.DataFrame], Outcome], max_rows: int,
                 observe: Callable[[int], None] | None = None):
        self.alone, self.max_rows, self.observe = alone, max_rows, observe
        # by the version each request arrived on and its column labels (`parse_body` shares one Index per column list)
        self.queued: dict[tuple[int, int], tuple[Any, list[Waiting]]] = {}
        self.settling = Settling(self.flush, max_rows)

    async def score(self, loaded: Any, frame: pd.DataFrame) -> Outcome:
        """This request's (status, body, answer columns or None), scored with those queued beside it."""
        loop = asyncio.get_running_loop()
        self.settling.joined(loop, len(frame))
        waiting = Waiting(frame, loop.create_future())
        key = (id(loaded), id(frame.columns))
        if key in self.queued:
            self.queued[key][1].append(waiting)
        else:
            self.queued[key] = (loaded, [waiting])
        return await waiting.future

    def flush(self) -> None:
        """Score everything queued: per version and column list, per call of at most `max_rows` applicants."""
        queued, self.queued = self.queued, {}
        for loaded, waiting in queued.values():
            live = [w for w in waiting if not w.future.done()]  # a handler cancelled meanwhile (client gone)
            for batch in batches(live, self.max_rows) if live else ():
                outcomes = self.together(loaded, [w.frame for w in batch])
                for w, outcome in zip(batch, outcomes, strict=True):
                    if not w.future.done():
                        w.future.set_result(outcome)

    def together(self, loaded: Any, frames: list[pd.DataFrame]) -> list[Outcome]:
        """Each frame's outcome from one model call; each scored alone if that call fails."""
        if self.observe is not None:
            self.observe(len(frames))
        if len(frames) == 1:
            return [self.alone(loaded, frames[0])]
        try:
            columns = loaded.columns(stacked(frames))
            return [(200, answer_body(part), part) for part in split(columns, [len(f) for f in frames])]
        except Exception as exc:  # a value rule one request breaks, or a fault: each request answered on its own
            logger.debug("a call of %d requests failed (%s): scoring them one by one", len(frames), exc)
            return [self.alone(loaded, frame) for frame in frames]
