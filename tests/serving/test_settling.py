"""When a queue is acted on: on a real event loop, requests that join one loop iteration apart share one act; a
request alone waits two iterations; a steady stream is acted on every few iterations; a full queue at once."""

from __future__ import annotations

import asyncio

from creditflow.serving.settling import POLLS, Settling


def acts(joins: list[int], max_rows: int = 100) -> tuple[list[list[int]], int]:
    """Requests of `joins[i]` rows joining one loop iteration apart: the requests (indexes) of each act, and the loop
    iterations from the last join to the last act."""
    done: list[list[int]] = []
    waiting: list[int] = []

    def act() -> None:
        done.append(list(waiting))
        waiting.clear()

    async def arrive() -> int:
        loop, settling = asyncio.get_running_loop(), Settling(act, max_rows)
        for i, rows in enumerate(joins):
            waiting.append(i)
            settling.joined(loop, rows)
            await asyncio.sleep(0)  # one loop iteration; no time passes, no timer is armed
        iterations = 1
        while waiting:
            await asyncio.sleep(0)
            iterations += 1
        return iterations

    return done, asyncio.run(arrive())


def test_a_request_alone_is_acted_on_two_iterations_after_it_joined() -> None:
    assert acts([1]) == ([[0]], 2)


def test_requests_joining_one_iteration_apart_share_one_act() -> None:
    done, iterations = acts([1] * 5)
    assert done == [[0, 1, 2, 3, 4]] and iterations == 2


def test_a_steady_stream_is_acted_on_every_few_iterations_never_held_back() -> None:
    done, _ = acts([1] * (3 * POLLS))
    assert [len(d) for d in done[:2]] == [POLLS + 1] * 2  # the first, then one from each iteration waited
    assert sum(done, []) == list(range(3 * POLLS))


def test_a_queue_of_max_rows_is_acted_on_without_waiting_for_more() -> None:
    done, _ = acts([30] * 6, max_rows=100)
    assert done == [[0, 1, 2, 3], [4, 5]]  # acted on once 120 rows (>= 100) waited
