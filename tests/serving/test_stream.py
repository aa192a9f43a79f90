"""Streaming prediction: events on a real Redis stream, batch + streaming features, predictions out.

Real Redis on this machine (database 15); each test has its own streams and applicant ids, removed afterwards.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import redis
import yaml

from creditflow.cli import main
from creditflow.data.dataset import CreditData
from creditflow.errors import SpecError
from creditflow.serving.features import FeatureStore
from creditflow.serving.live import LiveModel, fetch
from creditflow.serving.stream import StreamScorer
from creditflow.serving.stream_config import StreamConfig, load_stream_config
from creditflow.specs import DatasetSpec
from creditflow.train.run import TrainingOutcome
from tests.conftest import ON_REDIS, REDIS, ROOT, VENV_BIN, subprocess_env

pytestmark = [pytest.mark.integration, ON_REDIS]  # every test runs against the real Redis

CHAMPION = "models:/credit-default@champion"
LATE_90 = "NumberOfTimes90DaysLate"
OPEN_LINES = "NumberOfOpenCreditLinesAndLoans"


@pytest.fixture
def config() -> Iterator[StreamConfig]:
    """The shipped serving/stream.yaml on streams of this test's own (deleted afterwards)."""
    tag = uuid.uuid4().hex[:8]
    config = load_stream_config(ROOT / "serving" / "stream.yaml", store=REDIS, events_stream=f"t-{tag}:events",
                                predictions_stream=f"t-{tag}:predictions", rejected_stream=f"t-{tag}:rejected")
    yield config
    client = redis.Redis.from_url(REDIS)
    keys = [config.events_stream, config.predictions_stream, config.rejected_stream,
            *client.scan_iter(f"creditflow:stream:applied:{config.events_stream}:*")]
    client.delete(*keys)


@pytest.fixture
def applicants(small_spec: DatasetSpec, small_data: CreditData) -> Iterator[pd.DataFrame]:
    """Three applicants with no late payments and two open lines, their batch features in the store."""
    ids = [f"s-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    clean = small_data.X[(small_data.X[LATE_90] == 0) & (small_data.X[OPEN_LINES] == 2)].head(3)
    frame = clean.assign(Id=ids).reset_index(drop=True)
    FeatureStore(REDIS, small_spec.name).put(frame, "Id")
    yield frame
    client = redis.Redis.from_url(REDIS)
    client.delete(*[f"creditflow:features:{small_spec.name}:{i}" for i in ids],
                  *[f"creditflow:stream:{small_spec.name}:{i}" for i in ids])


def scorer(config: StreamConfig, consumer: str = "test") -> StreamScorer:
    return StreamScorer(config, LiveModel(CHAMPION, fetch(CHAMPION)), consumer)


def send(config: StreamConfig, *events: dict[str, str]) -> list[str]:
    client = redis.Redis.from_url(REDIS)
    return [client.xadd(config.events_stream, event).decode() for event in events]


def entries(stream: str) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()}
            for _, fields in redis.Redis.from_url(REDIS).xrange(stream)]


def expected(row: pd.Series, **added: float) -> dict:
    """What the model answers for the applicant's batch features plus `added`."""
    changed = row.drop("Id").copy()
    for column, amount in added.items():
        changed[column] += amount
    return mlflow.pyfunc.load_model(CHAMPION).predict(changed.to_frame().T.astype(float)).iloc[0].to_dict()


def test_events_add_to_the_applicants_columns_and_each_is_scored_with_them(
        model: TrainingOutcome, config: StreamConfig, applicants: pd.DataFrame) -> None:
    first, second = applicants.iloc[0], applicants.iloc[1]
    ids = send(config, {"applicant_id": first.Id, "event": "late_payment_90"},
               {"applicant_id": first.Id, "event": "late_payment_90"},
               {"applicant_id": second.Id, "event": "mortgage_opened"})
    tally = scorer(config).run(max_events=3)
    assert (tally.scored, tally.rejected) == (3, 0)
    out = entries(config.predictions_stream)
    assert [e["event_id"] for e in out] == ids
    once, twice = expected(first, **{LATE_90: 1}), expected(first, **{LATE_90: 2})  # read together, each its own
    # a batch of rows and one row may differ in the last bit (BLAS sums them in another order): to 1e-12
    assert [float(e["probability"]) for e in out[:2]] == pytest.approx([once["probability"], twice["probability"]],
                                                                         rel=1e-12)
    assert twice["probability"] > once["probability"] > expected(first)["probability"]  # late payments raise risk
    mortgage = expected(second, **{OPEN_LINES: 1, "NumberRealEstateLoansOrLines": 1})
    assert float(out[2]["probability"]) == pytest.approx(mortgage["probability"], rel=1e-12)
    assert out[2]["decision"] == mortgage["decision"]
    assert [json.loads(out[1][k]) for k in ("reason_codes", "reason_statements")] == \
        [list(twice["reason_codes"]), list(twice["reason_statements"])]  # each entry carries its statements
    version = model.registered_version
    assert out[2]["event"] == "mortgage_opened" and out[2]["model_uri"] == f"models:/credit-default/{version}"
    assert {e["model_version"] for e in out} == {f"credit-default/{version}"}  # the version behind @champion
    assert not redis.Redis.from_url(REDIS).xpending(config.events_stream, config.group)["pending"]


def test_a_read_takes_the_events_there_without_waiting_to_fill_a_batch(
        model: TrainingOutcome, config: StreamConfig, applicants: pd.DataFrame) -> None:
    waiting = scorer(config.model_copy(update={"batch_size": 100, "block_ms": 20_000}))
    waiting.ensure_group()
    send(config, {"applicant_id": applicants.iloc[0].Id, "event": "late_payment_90"})
    started = time.monotonic()
    assert len(waiting.read(pending=False)) == 1
    assert time.monotonic() - started < 5  # one event, at once: not held until 100 arrive or 20 s pass


def test_a_dead_scorers_event_is_claimed_scored_and_counted_once(
        model: TrainingOutcome, config: StreamConfig, applicants: pd.DataFrame, small_spec: DatasetSpec) -> None:
    applicant = applicants.iloc[0]
    send(config, {"applicant_id": applicant.Id, "event": "late_payment_90"})
    crashed = scorer(config, consumer="worker-1")
    crashed.ensure_group()
    (entry_id, fields), = crashed.read(pending=False)
    event, _ = crashed.parse(entry_id, fields)
    crashed.apply([event])  # ... and dies before publishing and acknowledging

    assert scorer(config, consumer="worker-2").run(idle_seconds=0.3).scored == 0  # not idle long enough to claim

    tally = scorer(config.model_copy(update={"claim_idle_ms": 0}), consumer="worker-2").run(idle_seconds=0.3)
    assert tally.scored == 1  # another scorer claimed the dead one's event
    sums = redis.Redis.from_url(REDIS).hgetall(f"creditflow:stream:{small_spec.name}:{applicant.Id}")
    assert sums == {LATE_90.encode(): b"1"}
    assert float(entries(config.predictions_stream)[0]["probability"]) == expected(
        applicant, **{LATE_90: 1})["probability"]


def test_unscorable_events_are_rejected_with_the_reason_and_the_rest_scored(
        model: TrainingOutcome, config: StreamConfig, applicants: pd.DataFrame) -> None:
    ok, closing = applicants.iloc[0].Id, applicants.iloc[1].Id
    send(config, {"applicant_id": ok, "event": "credit_line_opened"},
         {"applicant_id": ok, "event": "won_the_lottery_€😀"},  # text beyond ASCII comes back as sent
         {"event": "late_payment_90"},
         {"applicant_id": "nobody-" + uuid.uuid4().hex, "event": "late_payment_90"},
         *[{"applicant_id": closing, "event": "credit_line_closed"}] * 3)  # two open lines, three closed
    tally = scorer(config).run(idle_seconds=0.5)
    assert (tally.scored, tally.rejected) == (3, 4)  # the two lines closed are scored, the third closing is not
    rejected = entries(config.rejected_stream)
    reasons = [e["reason"] for e in rejected]
    assert reasons[0].startswith("unknown event type 'won_the_lottery_€😀'") and reasons[1] == "no applicant_id field"
    assert rejected[0]["event"] == "won_the_lottery_€😀"
    assert reasons[2].startswith("no precomputed features for applicant nobody-")
    assert reasons[3:] == [f"the applicant's features would break a value rule: {OPEN_LINES} below 0"]
    assert not redis.Redis.from_url(REDIS).xpending(config.events_stream, config.group)["pending"]


def test_config_mistakes_are_one_line(model: TrainingOutcome, config: StreamConfig, tmp_path: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SpecError, match="event 'x' adds to Salary, not numeric columns"):
        scorer(config.model_copy(update={"events": {"x": {"Salary": 1.0}}}))
    capsys.readouterr()  # the in-process model download above writes a progress bar (the CLI turns it off)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"events": {"x": {OPEN_LINES: 1}}, "batch_size": 0}))
    cases = [(["--config", str(tmp_path / "bad.yaml")], "invalid field 'batch_size'"),
             (["--config", str(tmp_path / "none.yaml")], "stream config not found"),
             (["--config", str(ROOT / "serving" / "stream.yaml"), "--store", "redis://127.0.0.1:1/0"],
              "feature store redis://127.0.0.1:1/0 setup failed")]
    for argv, words in cases:
        assert main(["stream", "score", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err


def test_the_stream_command_scores_until_idle(model: TrainingOutcome, config: StreamConfig,
                                              applicants: pd.DataFrame, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(config.model_dump()))
    send(config, *[{"applicant_id": i, "event": "late_payment_30_59"} for i in applicants.Id])
    assert main(["stream", "score", "--config", str(path), "--idle-seconds", "1"]) == 0
    assert "3 events: 3 scored, 0 rejected" in capsys.readouterr().out
    assert len(entries(config.predictions_stream)) == 3


# ---------------------------------------------------------------- poison entries and per-event semantics


def test_poison_entries_are_rejected_and_acknowledged_and_the_rest_scored(
        model: TrainingOutcome, config: StreamConfig, applicants: pd.DataFrame, small_spec: DatasetSpec) -> None:
    good, corrupt = applicants.iloc[0].Id, applicants.iloc[1].Id
    client = redis.Redis.from_url(REDIS)
    record = json.loads(client.get(f"creditflow:features:{small_spec.name}:{corrupt}"))
    client.set(f"creditflow:features:{small_spec.name}:{corrupt}", json.dumps({**record, "age": "old"}))
    send(config, {"applicant_id": good, "event": "late_payment_90"},
         {"applicant_id": b"\xff\xfe", "event": "late_payment_90"},  # not UTF-8
         {"applicant_id": corrupt, "event": "late_payment_90"},  # a record the model cannot read
         {"applicant_id": good, "event": "credit_line_opened"})
    tally = scorer(config).run(idle_seconds=0.5)
    assert (tally.scored, tally.rejected) == (2, 2)
    out = entries(config.predictions_stream)
    assert [e["event"] for e in out] == ["late_payment_90", "credit_line_opened"]
    row = applicants.iloc[0]  # handled one at a time after the batch failed: the second event sees the first's sums
    assert float(out[1]["probability"]) == pytest.approx(expected(row, **{LATE_90: 1, OPEN_LINES: 1})["probability"],
                                                         rel=1e-12)
    rejected = entries(config.rejected_stream)
    assert rejected[0]["applicant_id"] == "base64:" + base64.b64encode(b"\xff\xfe").decode()
    assert rejected[0]["reason"] == "a field is not UTF-8 text (kept as base64)"
    assert rejected[1]["applicant_id"] == corrupt and rejected[1]["reason"].startswith("internal error")
    assert not client.xpending(config.events_stream, config.group)["pending"]


def test_an_entry_delivered_too_often_is_dead_lettered(
        model: TrainingOutcome, config: StreamConfig, applicants: pd.DataFrame) -> None:
    (entry,) = send(config, {"applicant_id": applicants.iloc[0].Id, "event": "late_payment_90"})
    crashing = scorer(config.model_copy(update={"max_deliveries": 2}))
    crashing.ensure_group()
    crashing.read(pending=False)
    for _ in range(2):  # a scorer that died on it twice: read again from its pending list at each restart
        crashing.read(pending=True)
    tally = crashing.run(idle_seconds=0.3)
    assert (tally.scored, tally.rejected) == (0, 1)
    (dead,) = entries(config.rejected_stream)
    assert dead["event_id"] == entry and "delivered 4 times" in dead["reason"] and "dead-lettered" in dead["reason"]
    assert not redis.Redis.from_url(REDIS).xpending(config.events_stream, config.group)["pending"]


def test_each_prediction_describes_the_state_its_event_left_however_events_are_batched(
        model: TrainingOutcome, config: StreamConfig, applicants: pd.DataFrame, small_spec: DatasetSpec) -> None:
    """Two open lines; closed three times (the third would make -1: rejected, nothing changed) then opened."""
    sequence = ["credit_line_closed", "late_payment_90", "credit_line_closed", "credit_line_closed",
                "credit_line_opened"]
    outcomes = []
    for batch_size in (1, 100):
        twin = applicants.iloc[[0]].assign(Id=f"s-{uuid.uuid4().hex[:8]}")  # same features, own sums
        FeatureStore(REDIS, small_spec.name).put(twin, "Id")
        streams = {k: f"{getattr(config, k)}-{batch_size}" for k in
                   ("events_stream", "predictions_stream", "rejected_stream")}
        run = config.model_copy(update={**streams, "batch_size": batch_size})
        send(run, *[{"applicant_id": twin.Id.iloc[0], "event": kind} for kind in sequence])
        tally = scorer(run).run(idle_seconds=0.5)
        out = [(e["event"], e["probability"], e["decision"], e["reason_codes"])
               for e in entries(run.predictions_stream)]
        outcomes.append((tally.scored, tally.rejected, out, [e["reason"] for e in entries(run.rejected_stream)]))
        twin_id = twin.Id.iloc[0]
        redis.Redis.from_url(REDIS).delete(*streams.values(), f"creditflow:features:{small_spec.name}:{twin_id}",
                                           f"creditflow:stream:{small_spec.name}:{twin_id}")
    (scored, rejected, out, reasons), (*counts, out_100, reasons_100) = outcomes
    assert (scored, rejected, reasons) == (*counts, reasons_100)  # one at a time or all at once: the same
    assert [(e[0], e[2], e[3]) for e in out] == [(e[0], e[2], e[3]) for e in out_100]
    assert np.allclose([float(e[1]) for e in out], [float(e[1]) for e in out_100], rtol=0, atol=1e-12)
    assert (scored, rejected) == (4, 1) and [e[0] for e in out] == [k for i, k in enumerate(sequence) if i != 3]
    assert reasons == [f"the applicant's features would break a value rule: {OPEN_LINES} below 0"]
    row = applicants.iloc[0]
    states = [{OPEN_LINES: -1}, {OPEN_LINES: -1, LATE_90: 1}, {OPEN_LINES: -2, LATE_90: 1},
              {OPEN_LINES: -1, LATE_90: 1}]  # after each scored event (the rejected one changed nothing)
    assert np.allclose([float(e[1]) for e in out], [expected(row, **s)["probability"] for s in states], atol=1e-12)


# ---------------------------------------------------------------- real kills


@pytest.mark.slow
@pytest.mark.parametrize("step", ["scored", "published"])
def test_a_scorer_killed_at_any_step_loses_and_duplicates_nothing(
        step: str, store: tuple[str, TrainingOutcome], model: TrainingOutcome, config: StreamConfig,
        applicants: pd.DataFrame, small_spec: DatasetSpec, tmp_path: Path) -> None:
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump({**config.model_dump(), "claim_idle_ms": 0}))  # a restart claims at once
    events = [{"applicant_id": applicants.iloc[i].Id, "event": kind}
              for i in (0, 1) for kind in ("late_payment_90", "credit_line_opened")]
    ids = send(config, *events)
    env = subprocess_env(MLFLOW_TRACKING_URI=store[0])
    command = ["--config", str(path), "--idle-seconds", "1"]
    killed = subprocess.run([sys.executable, str(ROOT / "tests" / "stream_driver.py"), "--die-at", step, "--",
                             *command], env=env, capture_output=True, text=True, timeout=180)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    restarted = subprocess.run([str(VENV_BIN / "creditflow"), "stream", "score", *command], env=env,
                               capture_output=True, text=True, timeout=180)  # another name: it claims the events
    assert restarted.returncode == 0, restarted.stderr
    published = [e["event_id"] for e in entries(config.predictions_stream)]
    assert sorted(published) == sorted(ids)  # every event once: none lost, none twice
    client = redis.Redis.from_url(REDIS)
    for i in (0, 1):  # each event's sums applied once
        sums = client.hgetall(f"creditflow:stream:{small_spec.name}:{applicants.iloc[i].Id}")
        assert {k.decode(): float(v) for k, v in sums.items()} == {LATE_90: 1.0, OPEN_LINES: 1.0}
    ttl = config.applied_ttl_days * 86400
    markers = [client.ttl(f"creditflow:stream:applied:{config.events_stream}:{i}") for i in ids]
    assert all(ttl - 300 < t <= ttl for t in markers), markers  # each applied-marker keeps its expiry
    assert not client.xpending(config.events_stream, config.group)["pending"]


def test_a_segmented_scorer_routes_each_event_to_its_segments_model(segment_store, config: StreamConfig,
                                                                     applicants: pd.DataFrame, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    from tests.conftest import tracking_at

    path = tmp_path / "stream.yaml"
    segments = {"column": "Region", "model": "models:/credit-default-{segment}@champion", "values": ["R01", "R02"]}
    path.write_text(yaml.safe_dump({**config.model_dump(exclude={"model_uri"}), "segments": segments}))
    first = applicants.Id[0]
    send(config, {"applicant_id": first, "event": "late_payment_90", "Region": "R01"},
         {"applicant_id": first, "event": "late_payment_90", "Region": "R02"},  # no champion: the fallback
         {"applicant_id": first, "event": "late_payment_90"})  # no segment named: the fallback
    with tracking_at(segment_store.uri):
        assert main(["stream", "score", "--config", str(path), "--idle-seconds", "1"]) == 0
        answers = [mlflow.pyfunc.load_model(f"models:/credit-default{s}@champion").predict(
            applicants.iloc[[0]].drop(columns="Id").assign(**{LATE_90: n}).astype(float)).probability[0]
            for s, n in (("-R01", 1.0), ("", 2.0), ("", 3.0))]
    assert "3 events: 3 scored, 0 rejected" in capsys.readouterr().out
    out = entries(config.predictions_stream)
    r01 = f"credit-default-R01/{segment_store.versions['R01']}"
    assert [(e["model_version"], e["segment_model"]) for e in out] == [
        (r01, "true"), (segment_store.fallback, "false"), (segment_store.fallback, "false")]
    assert out[0]["model_uri"] == f"models:/{r01}"
    assert [float(e["probability"]) for e in out] == pytest.approx(answers, rel=1e-12)  # a batch against one row
