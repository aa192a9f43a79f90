"""The endpoint's metrics: what a request and an answer add, as /metrics shows it."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from creditflow.serving.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple, float]:
    body, _ = metrics.exposition()
    return {(s.name, *sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_requests_are_counted_by_path_and_status_and_timed() -> None:
    metrics = Metrics()
    for status, seconds in ((200, 0.0005), (200, 0.003), (400, 0.0002)):
        metrics.request("/invocations", status, seconds)
    got = samples(metrics)
    assert got[("creditflow_requests_total", ("path", "/invocations"), ("status", "200"))] == 2
    assert got[("creditflow_requests_total", ("path", "/invocations"), ("status", "400"))] == 1
    assert got[("creditflow_request_seconds_count", ("path", "/invocations"))] == 3
    assert got[("creditflow_request_seconds_bucket", ("le", "0.001"), ("path", "/invocations"))] == 2


def test_answers_are_counted_by_the_version_that_made_each_row() -> None:
    metrics = Metrics()
    metrics.answered({"decision": ["approve", "decline", "approve"], "model_version": ["m/1", "m/1", "m/2"]})
    metrics.answered({"decision": ["decline"], "model_version": ["m/1"]})
    got = samples(metrics)
    assert got[("creditflow_rows_scored_total", ("model_version", "m/1"))] == 3
    assert got[("creditflow_rows_scored_total", ("model_version", "m/2"))] == 1
    assert got[("creditflow_decisions_total", ("decision", "decline"), ("model_version", "m/1"))] == 2
    assert got[("creditflow_decisions_total", ("decision", "approve"), ("model_version", "m/2"))] == 1
