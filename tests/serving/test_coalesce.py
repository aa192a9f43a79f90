"""Requests that arrive together, scored in one model call: on a real event loop with the session's champion, every
request gets the body it gets alone, a bad one its own 400; requests read in the next loop iterations join the queue,
and no request waits more than a few iterations."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pandas as pd

from creditflow.serving.coalesce import Coalescer, predict
from creditflow.serving.live import Loaded
from creditflow.serving.online import INLINE_ROWS, answered
from creditflow.serving.requests import parse_body
from creditflow.serving.typed import frame_of

JSON = "application/json"


class Counted:
    """A `Loaded` whose model calls are counted (rows per call)."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded, self.calls = loaded, []

    def columns(self, frame: pd.DataFrame) -> dict[str, list]:
        self.calls.append(len(frame))
        return self.loaded.columns(frame)


def frames(loaded: Loaded, X: pd.DataFrame, rows: int = 1) -> list[pd.DataFrame]:
    """`X` as requests of `rows` applicants each, parsed as the endpoint parses them."""
    bodies = [json.dumps({"dataframe_split": json.loads(X.iloc[i:i + rows].to_json(orient="split", index=False))})
              for i in range(0, len(X), rows)]
    return [parse_body(body.encode(), JSON, loaded.spec, 1_000) for body in bodies]


def together(coalescer: Coalescer, requests: list[tuple[object, pd.DataFrame]]) -> list[tuple]:
    """The outcomes of requests handed to the coalescer in one event-loop iteration, as concurrent handlers do."""
    async def arrive() -> list[tuple]:
        return await asyncio.gather(*(coalescer.score(loaded, frame) for loaded, frame in requests))
    return asyncio.run(arrive())


def staggered(coalescer: Coalescer, requests: list[tuple[object, pd.DataFrame]]) -> list[tuple]:
    """The outcomes of requests whose handlers start one loop iteration apart, as when each I/O poll reads one."""
    async def arrive() -> list[tuple]:
        handlers = []
        for loaded, frame in requests:
            handlers.append(asyncio.ensure_future(coalescer.score(loaded, frame)))
            await asyncio.sleep(0)  # one loop iteration; no time passes, no timer is armed
        return await asyncio.gather(*handlers)
    return asyncio.run(arrive())


def assert_together_as_alone(loaded: Loaded, parsed: list[pd.DataFrame]) -> None:
    """Requests arriving together are one model call, each answered with the bytes it gets alone."""
    counted = Counted(loaded)
    outcomes = together(Coalescer(answered, INLINE_ROWS), [(counted, f) for f in parsed])
    assert counted.calls == [sum(len(f) for f in parsed)]
    for (status, body, columns), frame in zip(outcomes, parsed, strict=True):
        assert status == 200 and (body, columns) == predict(loaded, frame)


def test_requests_queued_together_are_one_call_with_each_body_as_alone(champion) -> None:
    loaded, X = champion
    parsed = frames(loaded, X.head(8))
    assert_together_as_alone(loaded, parsed)
    assert len({predict(loaded, f)[0] for f in parsed}) == 8  # eight applicants, eight different answers


def test_a_bad_request_gets_its_400_and_the_others_their_answers(champion) -> None:
    loaded, X = champion
    counted = Counted(loaded)
    good = frames(loaded, X.head(4))
    bad = frames(loaded, X.iloc[[4, 5]].assign(age=[40.0, -1.0]), rows=2)[0]  # breaks a value rule in its row 1
    outcomes = together(Coalescer(answered, INLINE_ROWS), [(counted, f) for f in (good[0], good[1], bad, *good[2:])])
    assert counted.calls == [6, 1, 1, 2, 1, 1]  # the call together failed: each request alone
    status, body, columns = outcomes[2]
    assert status == 400 and columns is None and (status, body, columns) == answered(loaded, bad)
    assert json.loads(body)["message"] == "1 applicant(s) break the value rules; first: row 1: age below 0"
    for (status, body, _), frame in zip(outcomes[:2] + outcomes[3:], good, strict=True):
        assert status == 200 and body == predict(loaded, frame)[0]


def test_a_model_fault_is_a_500_for_the_requests_it_hits_only(champion) -> None:
    loaded, X = champion

    class FailsOnAge(Counted):
        def columns(self, frame: pd.DataFrame) -> dict[str, list]:
            if (frame_of(frame)["age"] == 77.0).any():
                raise RuntimeError("a model bug")
            return super().columns(frame)

    counted, parsed = FailsOnAge(loaded), frames(loaded, X.head(3))
    parsed[1].matrix[:, loaded.spec.raw_columns.index("age")] = 77.0
    outcomes = together(Coalescer(answered, INLINE_ROWS), [(counted, f) for f in parsed])
    assert [status for status, _, _ in outcomes] == [200, 500, 200]
    assert b"internal error" in outcomes[1][1] and outcomes[0][1] == predict(loaded, parsed[0])[0]


def test_a_request_alone_is_scored_within_four_loop_iterations(champion) -> None:
    loaded, X = champion
    counted, frame = Counted(loaded), frames(loaded, X.head(1))[0]

    async def alone() -> tuple[int, tuple]:
        pending = asyncio.ensure_future(Coalescer(answered, INLINE_ROWS).score(counted, frame))
        iterations = 0
        while not pending.done():
            await asyncio.sleep(0)  # gives the loop one iteration; no time passes, no timer is armed
            iterations += 1
        return iterations, pending.result()

    iterations, outcome = asyncio.run(alone())
    assert iterations <= 4 and counted.calls == [1] and outcome == (200, *predict(loaded, frame))


def test_requests_read_in_the_next_iterations_join_the_queue(champion) -> None:
    loaded, X = champion
    counted, parsed = Counted(loaded), frames(loaded, X.head(5))
    outcomes = staggered(Coalescer(answered, INLINE_ROWS), [(counted, f) for f in parsed])
    assert counted.calls == [5]
    assert [body for _, body, _ in outcomes] == [predict(loaded, f)[0] for f in parsed]


def test_a_queue_of_a_full_call_is_scored_without_waiting_for_more(champion) -> None:
    loaded, X = champion
    counted, parsed = Counted(loaded), frames(loaded, X.head(180), rows=30)
    staggered(Coalescer(answered, INLINE_ROWS), [(counted, f) for f in parsed])
    assert counted.calls[:2] == [90, 30] and sum(counted.calls) == 180  # scored once 120 rows (>= 100) were queued


def test_more_rows_than_one_call_takes_are_several_calls_in_order(champion) -> None:
    loaded, X = champion
    counted, parsed = Counted(loaded), frames(loaded, X.head(150), rows=30)
    outcomes = together(Coalescer(answered, INLINE_ROWS), [(counted, f) for f in parsed])
    assert counted.calls == [90, 60]  # at most INLINE_ROWS applicants a call, requests never cut
    assert [body for _, body, _ in outcomes] == [predict(loaded, f)[0] for f in parsed]


def test_versions_are_called_apart_and_numeric_requests_in_any_column_order_together(champion) -> None:
    loaded, X = champion
    old, new = Counted(loaded), Counted(dataclasses.replace(loaded, label="credit-default/99"))
    parsed = frames(loaded, X.head(4))
    reordered = frames(loaded, X.iloc[4:6][X.columns[::-1]])  # the same columns in another order
    arriving = [(old, parsed[0]), (new, parsed[1]), (old, parsed[2]), (new, parsed[3]), *((old, f) for f in reordered)]
    outcomes = together(Coalescer(answered, INLINE_ROWS), arriving)
    assert old.calls == [4] and new.calls == [2]  # numbers are typed in the model's column order, whatever was sent
    versions = [[p["model_version"] for p in json.loads(body)["predictions"]] for _, body, _ in outcomes]
    assert versions == [[loaded.label], ["credit-default/99"], [loaded.label], ["credit-default/99"],
                        [loaded.label], [loaded.label]]
    assert outcomes[0][1] == predict(loaded, parsed[0])[0] and outcomes[4][1] == predict(loaded, reordered[0])[0]


def test_the_metrics_count_requests_per_call(champion) -> None:
    from creditflow.serving.metrics import Metrics

    loaded, X = champion
    metrics = Metrics()
    coalescer = Coalescer(answered, INLINE_ROWS, metrics.coalesced.observe)
    together(coalescer, [(loaded, f) for f in frames(loaded, X.head(5))])
    assert metrics.registry.get_sample_value("creditflow_requests_per_call_sum") == 5
    assert metrics.registry.get_sample_value("creditflow_requests_per_call_count") == 1
