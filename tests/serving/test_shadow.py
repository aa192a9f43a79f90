"""The shadow's comparison and its runner: row-by-row differences, tallies, the bounded queue, MLflow runs."""

from __future__ import annotations

import queue

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from creditflow.data.dataset import CreditData
from creditflow.registry.evidence import shadow_evidence
from creditflow.serving.live import LiveModel, fetch
from creditflow.serving.metrics import Metrics
from creditflow.serving.shadow import Answered, ShadowRunner, ShadowScorer, ShadowTally, compare
from creditflow.train.run import TrainingOutcome

CHAMPION = "models:/credit-default@champion"


def answers(probability: list[float], decision: list[str], reasons: list[list[str]]) -> pd.DataFrame:
    return pd.DataFrame({"probability": probability, "decision": decision, "reason_codes": reasons})


def test_compare_counts_flips_deltas_and_first_reasons() -> None:
    champion = answers([0.10, 0.60, 0.30, 0.55], ["approve", "decline", "approve", "decline"],
                       [[], ["late", "debt"], ["income"], ["late"]])
    shadow = answers([0.12, 0.40, 0.30, 0.58], ["approve", "approve", "approve", "decline"],
                     [[], ["debt", "late"], ["income", "age"], ["late"]])
    c = compare(champion, shadow)
    assert (c.rows, c.flips, c.top_reason_diffs) == (4, 1, 1)
    assert np.allclose(c.abs_delta, [0.02, 0.20, 0.0, 0.03])


def test_the_tally_adds_up_and_bounds_the_p99_within_a_bin() -> None:
    tally = ShadowTally()
    deltas = np.linspace(0, 0.5, 1000)
    for part in np.array_split(deltas, 4):
        n = len(part)
        frame = answers([0.0] * n, ["approve"] * n, [[]] * n)
        tally.add(compare(frame, frame.assign(probability=part)), requests=1)
    totals = tally.totals(dropped=3)
    assert (totals.requests, totals.rows, totals.flips, totals.dropped) == (4, 1000, 0, 3)
    assert totals.mean_abs_delta == pytest.approx(0.25)
    assert np.quantile(deltas, 0.99) <= totals.p99_abs_delta <= np.quantile(deltas, 0.99) + 2e-4
    assert ShadowTally().totals().p99_abs_delta == 0.0


def test_the_champion_as_its_own_shadow_never_differs_and_the_runs_hold_the_totals(
        own_champion_store: tuple[str, TrainingOutcome], small_data: CreditData) -> None:  # it writes runs
    champion = LiveModel(CHAMPION, fetch(CHAMPION))
    inbox, outbox = queue.Queue(), queue.Queue()
    X = small_data.X.head(60)
    for chunk in np.array_split(np.arange(60), 6):
        frame = X.iloc[chunk].reset_index(drop=True)
        inbox.put(Answered(frame, champion.current.model.predict(frame), champion.current.label, 4))
    inbox.put(None)  # the worker's stop: what is queued is compared, then the last window written
    ShadowScorer(LiveModel(CHAMPION, fetch(CHAMPION), role="shadow"), window_seconds=3600).serve(inbox, outbox)
    reports = [outbox.get_nowait() for _ in range(outbox.qsize())]
    assert sum(r.requests for r in reports) == 6 and sum(r.comparison.rows for r in reports) == 60
    assert {r.health["model_version"] for r in reports} == {champion.current.label}
    evidence = shadow_evidence(MlflowClient(), champion.current.label)
    assert evidence is not None and evidence.champions == (champion.current.label,)
    t = evidence.totals
    assert (t.requests, t.rows, t.flips, t.top_reason_diffs, t.dropped) == (6, 60, 0, 0, 4)
    assert t.mean_abs_delta <= 1e-12 and t.p99_abs_delta <= 1e-4  # one batch vs six: the last bits may differ


def test_a_full_queue_drops_the_request_and_counts_it(small_data: CreditData) -> None:
    metrics = Metrics()
    runner = ShadowRunner({"uri": CHAMPION}, metrics, queue_size=2)
    frame = small_data.X.head(1)
    answer = answers([0.1], ["approve"], [[]])
    for _ in range(5):  # the shadow process is not started: nothing leaves the queue
        runner.offer(frame, answer, "credit-default/1")
    assert runner.dropped == 3
    assert metrics.registry.get_sample_value("creditflow_shadow_dropped_total") == 3
    assert [runner.inbox.get(timeout=5).dropped for _ in range(2)] == [0, 0]  # the two queued, in order
