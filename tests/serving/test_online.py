"""Online prediction over real HTTP: `creditflow serve` and `mlflow models serve` subprocesses on free ports.

The session's champion and one server of each kind per module (start-up ~10 s each, started together).
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from creditflow.data.dataset import split_data
from creditflow.model.shap import raw_shap, reason_codes
from tests.conftest import (
    FIXTURES,
    VENV_BIN,
    ChampionStore,
    free_port,
    subprocess_env,
    tracking_at,
    wait_for_http,
    wait_for_lines,
)

# one worker runs the module: its endpoints are module fixtures, started once
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("online")]

MAX_BODY = 120_000
MAX_ROWS = 500
ODD = {"MonthlyIncome": 31337.25, "DebtRatio": 0.424242}  # applicant values that must never be echoed
JSON = "application/json"
PIDFD_GETFD = 438  # Linux syscall number (every architecture)


@dataclass(frozen=True)
class Served:
    ours: str
    plain: str
    ours_log: Path
    ours_pid: int
    store: str
    pipe: object
    exp: object
    X_test: pd.DataFrame
    X_train: pd.DataFrame
    version: str  # the champion's registered version


@pytest.fixture(scope="module")
def served(champion_store: ChampionStore, small_spec, small_data, tmp_path_factory) -> Served:
    """The session's champion (registered, aliased @champion; the servers only read its store), served both ways."""
    root = tmp_path_factory.mktemp("serving")
    store, exp = champion_store.uri, champion_store.exp
    with tracking_at(store):
        pipe = mlflow.pyfunc.load_model(champion_store.outcome.model_uri).unwrap_python_model().pipeline
    config = root / "online.yaml"
    config.write_text(f"max_body_bytes: {MAX_BODY}\nmax_rows: {MAX_ROWS}\n")
    uri = "models:/credit-default@champion"
    ports = free_port(), free_port()
    env = subprocess_env(MLFLOW_TRACKING_URI=store)
    commands = [
        [str(VENV_BIN / "creditflow"), "serve", "--config", str(config), "-m", uri, "-p", str(ports[0])],
        [str(VENV_BIN / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local", "-p", str(ports[1])],
    ]
    logs = [root / "ours.log", root / "plain.log"]
    procs = []
    for cmd, log in zip(commands, logs, strict=True):
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root))
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for url, proc in zip(urls, procs, strict=True):
            wait_for_http(f"{url}/ping", proc, timeout=120)
        split = split_data(small_data, exp.test_size, exp.seed)
        yield Served(urls[0], urls[1], logs[0], procs[0].pid, store, pipe, exp,
                     split.X_test[small_spec.raw_columns], split.X_train, champion_store.outcome.registered_version)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def post(url: str, body: bytes | str, content_type: str | None = JSON, **kw) -> requests.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return requests.post(f"{url}/invocations", data=body, headers=headers, timeout=30, **kw)


def split_body(X: pd.DataFrame) -> str:
    return json.dumps({"dataframe_split": json.loads(X.to_json(orient="split", index=False))})


def applicants(served: Served, n: int = 3) -> pd.DataFrame:
    return served.X_test.head(n).assign(**ODD)


# ---------------------------------------------------------------- the contract


@pytest.fixture(scope="module")
def spec(small_spec):
    return small_spec


def test_formats_return_probability_decision_and_reason_codes(served, spec) -> None:
    X = applicants(served, 5)
    X.iloc[0, X.columns.get_loc("NumberOfTimes90DaysLate")] = 4.0  # a risky applicant: reasons expected
    records = json.dumps({"dataframe_records": json.loads(X.to_json(orient="records"))})
    for url in (served.ours, served.plain):
        for body, content_type in ((split_body(X), JSON), (records, JSON), (X.to_csv(index=False), "text/csv")):
            response = post(url, body, content_type)
            check_contract(served, spec, X, response)
    assert "Times 90+ days late" in post(served.ours, split_body(X)).json()["predictions"][0]["reason_codes"]


def check_contract(served: Served, spec, X: pd.DataFrame, response: requests.Response) -> None:
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    ours = response.url.startswith(served.ours)  # creditflow serve names the answering version; MLflow's cannot
    fields = {"probability", "decision", "reason_codes", "reason_statements"} | ({"model_version"} if ours else set())
    assert [set(p) for p in predictions] == [fields] * len(X)
    if ours:
        assert {p["model_version"] for p in predictions} == {f"credit-default/{served.version}"}
    proba = np.asarray([p["probability"] for p in predictions])
    assert np.max(np.abs(proba - served.pipe.predict_proba(X)[:, 1])) <= 1e-9
    threshold = served.exp.threshold
    assert [p["decision"] for p in predictions] == ["decline" if q >= threshold else "approve" for q in proba]
    direct = raw_shap(served.pipe, spec, X, background=served.X_train)
    assert [p["reason_codes"] for p in predictions] == reason_codes(direct, spec, served.exp.reason_codes)


def test_the_models_own_serving_example_is_answered_as_mlflow_wrote_it(served, tmp_path: Path) -> None:
    with tracking_at(served.store):
        path = Path(mlflow.artifacts.download_artifacts(f"models:/credit-default/{served.version}",
                                                        dst_path=str(tmp_path)))
    examples = [path / "serving_input_example.json", FIXTURES / "model_before_layout" / "serving_input_example.json"]
    for example in examples:
        body = example.read_bytes()
        assert b"NaN" in body  # MLflow writes a missing income so
        response = post(served.ours, body)
        assert response.status_code == 200, response.text
        frame = pd.DataFrame(**{k: v for k, v in json.loads(body)["dataframe_split"].items() if k != "index"})
        expected = served.pipe.predict_proba(frame.astype(float))[:, 1]
        assert np.allclose([p["probability"] for p in response.json()["predictions"]], expected, rtol=0, atol=1e-9)


def test_nullable_columns_accept_null_or_may_be_left_out(served, spec) -> None:
    X = applicants(served, 2).assign(MonthlyIncome=np.nan, NumberOfDependents=np.nan)
    with_nulls = post(served.ours, split_body(X))
    check_contract(served, spec, X, with_nulls)
    left_out = post(served.ours, split_body(X.drop(columns=["MonthlyIncome", "NumberOfDependents"])))
    assert left_out.json() == with_nulls.json()


def test_health_version_and_load_time(served) -> None:
    for url in (served.ours, served.plain):
        for path in ("/ping", "/health"):
            assert requests.get(f"{url}{path}", timeout=5).status_code == 200
        version = requests.get(f"{url}/version", timeout=5)
        assert version.status_code == 200 and version.text == mlflow.__version__
    log = served.ours_log.read_text()
    assert f"loaded models:/credit-default@champion (credit-default/{served.version}) in" in log
    health = requests.get(f"{served.ours}/health", timeout=5).json()
    assert health["model_version"] == f"credit-default/{served.version}" and health["follows_registry"] is True


def test_served_on_uvloop_and_httptools_without_a_line_per_request(served) -> None:
    """The pinned server stack (`serving.stack`); no access log unless asked for: /metrics counts the requests."""
    for _ in range(3):
        assert post(served.ours, split_body(applicants(served, 1))).status_code == 200
    log = served.ours_log.read_text()
    assert "with 1 worker(s), uvloop + httptools" in log
    assert "POST /invocations" not in log


# ---------------------------------------------------------------- bad requests


def _row(served: Served) -> dict:
    return json.loads(applicants(served, 1).to_json(orient="records"))[0]


def _split(columns: list[str], data: list[list]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": columns, "data": data}}).encode()


def bad_requests(served: Served, spec) -> dict[str, tuple[bytes, str | None, int, str]]:
    """name -> (body, content type, expected status, words the message must contain)."""
    row = _row(served)
    cols, values = list(row), list(row.values())
    at = {c: i for i, c in enumerate(cols)}

    def with_value(col: str, value) -> bytes:
        data = list(values)
        data[at[col]] = value
        return _split(cols, [data])

    big_row = _split(cols, [values] * 2_000)  # ~ 300 KB: over the body limit
    many_rows = _split(cols, [values] * (MAX_ROWS + 1))
    assert len(big_row) > MAX_BODY > len(many_rows)
    return {
        "missing column": (_split(cols[1:], [values[1:]]), JSON, 400, "missing column(s): RevolvingUtil"),
        "unknown column": (_split([*cols, "Salary"], [[*values, 1.0]]), JSON, 400, "unknown column(s): Salary"),
        "text in a numeric column": (with_value("age", "forty"), JSON, 400, "column age must hold numbers"),
        "boolean in a numeric column": (with_value("age", True), JSON, 400, "holds true/false"),
        "negative value": (with_value("NumberRealEstateLoansOrLines", -2), JSON, 400,
                           "NumberRealEstateLoansOrLines below 0"),
        "absurd value": (with_value("age", 250), JSON, 400, "age above 120"),
        "fraction in a count": (with_value("NumberOfDependents", 1.5), JSON, 400,
                                "NumberOfDependents is not a whole number"),
        "infinite value": (_split(cols, [values]).replace(b"0.424242", b"1e999"), JSON, 400, "DebtRatio is infinite"),
        "required value missing": (with_value("age", None), JSON, 400, "age is missing"),
        "null everywhere": (_split(cols, [[None] * len(cols)]), JSON, 400, "is missing"),
        "empty list": (json.dumps({"dataframe_records": []}).encode(), JSON, 400, "no applicants"),
        "empty split": (_split(cols, []), JSON, 400, "no applicants"),
        "empty body": (b"", JSON, 400, "body is empty"),
        "not JSON": (b'{"dataframe_split": {"columns": ', JSON, 400, "not valid JSON"),
        "Infinity literal": (_split(cols, [values]).replace(b"0.424242", b"-Infinity"), JSON, 400,
                             "-Infinity is not a JSON value"),
        "NaN for a required value": (with_value("age", None).replace(b"null", b"NaN"), JSON, 400, "age is missing"),
        "wrong content type": (_split(cols, [values]), "text/plain", 415, "unsupported Content-Type"),
        "no content type": (_split(cols, [values]), None, 415, "missing Content-Type"),
        "unsupported charset": (_split(cols, [values]), "application/json; charset=latin-1", 415, "charset"),
        "top-level list": (json.dumps([row]).encode(), JSON, 400, "must be an object"),
        "nested object": (with_value("DebtRatio", {"value": 0.3}), JSON, 400, "holds an object"),
        "list in a cell": (with_value("DebtRatio", [0.3]), JSON, 400, "holds a list"),
        "duplicated column": (_split([*cols, "age"], [[*values, 40]]), JSON, 400, "given twice: age"),
        "duplicated key in a record": (
            json.dumps({"dataframe_records": [row]}).encode()[:-3] + b', "age": 41}]}', JSON, 400,
            "same key twice: age"),
        "records with different columns": (
            json.dumps({"dataframe_records": [row, {k: v for k, v in row.items() if k != "MonthlyIncome"}]}).encode(),
            JSON, 400, "different columns"),
        "ragged split row": (_split(cols, [values[:-1]]), JSON, 400, "has 9 values for 10 columns"),
        "tensor-style input": (json.dumps({"instances": [row]}).encode(), JSON, 400, "dataframe_split or"),
        "two formats at once": (json.dumps({"dataframe_split": {"columns": cols, "data": [values]},
                                            "dataframe_records": [row]}).encode(), JSON, 400, "exactly one"),
        "non-UTF-8 bytes": (_split(cols, [values]).replace(b"MonthlyIncome", b"Monthly\xff\xfeIncome"), JSON, 400,
                            "not UTF-8"),
        "text in a CSV number": (
            applicants(served, 1).assign(age="forty").to_csv(index=False).encode(), "text/csv", 400,
            "column age must hold numbers"),
        "ragged CSV": (b"age,DebtRatio\n40\n", "text/csv", 400, "CSV row 0 has 1 fields"),
        "body over the size limit": (big_row, JSON, 413, f"limit of {MAX_BODY} bytes"),
        "huge row count": (many_rows, JSON, 413, f"too many applicants in one request: {MAX_ROWS + 1}"),
    }


@pytest.fixture(scope="module")
def matrix(served, spec):
    return bad_requests(served, spec)


BAD_NAMES = [
    "missing column", "unknown column", "text in a numeric column", "boolean in a numeric column", "negative value",
    "absurd value", "fraction in a count", "infinite value", "required value missing", "null everywhere",
    "empty list", "empty split", "empty body", "not JSON", "Infinity literal", "NaN for a required value",
    "wrong content type", "no content type", "unsupported charset", "top-level list", "nested object",
    "list in a cell", "duplicated column",
    "duplicated key in a record", "records with different columns", "ragged split row", "tensor-style input",
    "two formats at once", "non-UTF-8 bytes", "text in a CSV number", "ragged CSV", "body over the size limit",
    "huge row count",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_request_gets_a_clean_4xx_and_the_server_keeps_serving(name, served, spec, matrix) -> None:
    body, content_type, status, words = matrix[name]
    response = post(served.ours, body, content_type)
    assert response.status_code == status, response.text
    message = response.json()["message"]
    assert words in message
    for value in ("31337", "0.424242", "forty"):  # nothing the applicant sent comes back
        assert value not in response.text
    X = applicants(served, 2)
    check_contract(served, spec, X, post(served.ours, split_body(X)))


def test_matrix_is_complete() -> None:
    assert len(BAD_NAMES) >= 20 and len(set(BAD_NAMES)) == len(BAD_NAMES)


def test_wrong_method_and_path_are_4xx(served) -> None:
    assert requests.get(f"{served.ours}/invocations", timeout=5).status_code == 405
    assert requests.post(f"{served.ours}/predict", data="{}", timeout=5).status_code == 404


# ---------------------------------------------------------------- transport: chunked bodies, Content-Length, rows


def raw_request(url: str, head: bytes, body: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (a lying header included) on one connection; (status, response body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + b"\r\n\r\n" + body)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_a_chunked_body_over_the_limit_is_413(served, spec) -> None:
    chunk = split_body(applicants(served, 50)).encode()
    sent = []

    def chunks():  # no Content-Length: the guard counts the bytes as they come
        for _ in range(MAX_BODY // len(chunk) + 3):
            sent.append(len(chunk))
            yield chunk

    response = requests.post(f"{served.ours}/invocations", data=chunks(), headers={"Content-Type": JSON}, timeout=30)
    assert response.status_code == 413 and "larger than the limit" in response.json()["message"]
    assert sum(sent) > MAX_BODY
    assert post(served.ours, split_body(applicants(served, 1))).status_code == 200  # still serving


def test_a_content_length_that_lies_or_is_not_a_number_is_400(served, spec) -> None:
    body = split_body(applicants(served, 2)).encode()
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close"
    short, text = raw_request(served.ours, head + b"\r\nContent-Length: " + str(len(body) // 2).encode(), body)
    assert short == 400 and b"not valid JSON" in text  # the body cut where the header says it ends
    not_a_number, _ = raw_request(served.ours, head + b"\r\nContent-Length: twelve", body)
    assert not_a_number == 400  # uvicorn's HTTP parser refuses it before the guard
    assert post(served.ours, split_body(applicants(served, 1))).status_code == 200


def test_more_than_100_rows_take_the_thread_path_with_the_same_answers(served, spec) -> None:
    X = applicants(served, 150)
    check_contract(served, spec, X, post(served.ours, split_body(X)))


def scraped(served: Served, name: str, **labels: str) -> float:
    """The sum of one metric's samples with these labels in the endpoint's /metrics."""
    text = requests.get(f"{served.ours}/metrics", timeout=5).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_count_scoring_requests_rows_and_decisions_but_not_themselves(served) -> None:
    ok = {"path": "/invocations", "status": "200"}
    bad = {"path": "/invocations", "status": "400"}
    version = f"credit-default/{served.version}"
    before = [scraped(served, "creditflow_requests_total", **ok), scraped(served, "creditflow_requests_total", **bad),
              scraped(served, "creditflow_rows_scored_total", model_version=version),
              scraped(served, "creditflow_request_seconds_count", path="/invocations")]
    X = applicants(served, 3)
    answer = post(served.ours, split_body(X)).json()["predictions"]
    assert post(served.ours, split_body(X.assign(age=-1.0))).status_code == 400
    declines = sum(p["decision"] == "decline" for p in answer)
    big = requests.get(f"{served.ours}/metrics", data=b"x" * (MAX_BODY + 1), timeout=5)  # no body limit here
    assert big.status_code == 200 and big.headers["content-type"].startswith("text/plain")
    after = [scraped(served, "creditflow_requests_total", **ok), scraped(served, "creditflow_requests_total", **bad),
             scraped(served, "creditflow_rows_scored_total", model_version=version),
             scraped(served, "creditflow_request_seconds_count", path="/invocations")]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 3, 2]  # the scrapes themselves: not counted
    assert scraped(served, "creditflow_decisions_total", model_version=version, decision="decline") >= declines
    assert scraped(served, "creditflow_model_info", role="champion", model_version=version) == 1
    assert "/metrics" not in requests.get(f"{served.ours}/metrics", timeout=5).text


def test_concurrent_requests_get_the_answers_they_get_one_by_one(served) -> None:
    X = served.X_test.head(48)
    bodies = [split_body(X.iloc[[i]]) for i in range(len(X))]
    bodies[7] = split_body(X.iloc[[7]].assign(age=-1.0))  # a bad request among them: its own 400, the others 200
    bodies[20] = split_body(X.iloc[20:23])  # and one of several applicants
    before = scraped(served, "creditflow_requests_per_call_sum")
    alone = [post(served.ours, body) for body in bodies]
    with ThreadPoolExecutor(8) as pool:  # eight connections at once: requests read together share a model call
        concurrent = list(pool.map(lambda body: post(served.ours, body), bodies))
    assert [(r.status_code, r.content) for r in concurrent] == [(r.status_code, r.content) for r in alone]
    assert [r.status_code for r in alone] == [400 if i == 7 else 200 for i in range(len(bodies))]
    assert len(alone[20].json()["predictions"]) == 3
    assert scraped(served, "creditflow_requests_per_call_sum") - before == 2 * len(bodies)  # each in one call


def test_plain_mlflow_serve_keeps_rule_errors_safe_but_echoes_its_own_parse_errors(served, matrix) -> None:
    """What plain `mlflow models serve` gives: our model's errors are safe; MLflow's parser repeats the input."""
    body, content_type, _, words = matrix["absurd value"]
    rule = post(served.plain, body, content_type)
    assert rule.status_code == 400 and words in rule.json()["message"] and "31337" not in rule.text
    body, content_type, _, _ = matrix["text in a numeric column"]
    assert "forty" in post(served.plain, body, content_type).text  # the privacy problem `creditflow serve` fixes
    assert "forty" not in post(served.ours, body, content_type).text
    truncated = split_body(applicants(served, 1))[:-5]  # not JSON: MLflow repeats the whole body
    assert "31337" in post(served.plain, truncated).text
    assert "31337" not in post(served.ours, truncated).text


def children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def server_socket_inode(server_port: int, client_port: int) -> str:
    """The inode of the server's end of one TCP connection, from the kernel's table of IPv4 sockets."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(f.split(":")[1], 16) for f in fields[1:3])
        if (local, remote) == (server_port, client_port):
            return fields[9]
    raise AssertionError(f"no server socket for the connection from port {client_port}")


def tcp_nodelay_in(pid: int, inode: str) -> int | None:
    """TCP_NODELAY of the process's socket with that inode, read on a duplicate of its descriptor (pidfd_getfd)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed since the listing (the worker's other threads open and close files)
            continue
        if target == f"socket:[{inode}]":
            pidfd = os.pidfd_open(pid)
            try:
                copy = ctypes.CDLL(None, use_errno=True).syscall(PIDFD_GETFD, pidfd, int(fd.name), 0)
                assert copy >= 0, os.strerror(ctypes.get_errno())
            finally:
                os.close(pidfd)
            with socket.socket(fileno=copy) as sock:
                return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    return None


def test_two_workers_answer_keep_alive_connections_with_tcp_nodelay(champion_store: ChampionStore,
                                                                     tmp_path: Path) -> None:
    """uvicorn's shared listener for -w N loses TCP_NODELAY (each keep-alive answer then waits ~40 ms for
    a delayed ACK; the figures are in serving/README.md): every worker's connection must have it set."""
    port, log = free_port(), tmp_path / "serve.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([str(VENV_BIN / "creditflow"), "serve", "-m", "models:/credit-default@champion", "-w",
                                 "2", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp_path,
                                env=subprocess_env(MLFLOW_TRACKING_URI=champion_store.uri))
    try:
        wait_for_lines(log, "Application startup complete", 2, proc, timeout=120)  # both workers accept connections
        options: dict[int, int] = {}
        for _ in range(40):  # new connections until both workers have answered one
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                for _ in range(2):  # two requests on one connection: keep-alive
                    conn.request("GET", "/ping")
                    assert conn.getresponse().read() == b"\n"
                inode = server_socket_inode(port, conn.sock.getsockname()[1])
                options.update((w, v) for w in children(proc.pid) if (v := tcp_nodelay_in(w, inode)) is not None)
            finally:
                conn.close()
            if len(options) == 2:
                break
        assert len(options) == 2 and set(options.values()) == {1}, options
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---------------------------------------------------------------- many requests (short; the soak is a benchmark)


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def hammer(url: str, body: str, concurrency: int, seconds: float) -> tuple[int, int]:
    """`concurrency` clients posting `body` for `seconds`; returns (requests, errors)."""
    stop = time.monotonic() + seconds
    counts = [0, 0]
    lock = threading.Lock()

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < stop:
            ok = session.post(f"{url}/invocations", data=body, headers={"Content-Type": JSON}, timeout=30).ok
            with lock:
                counts[0] += 1
                counts[1] += not ok

    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(client)
    return counts[0], counts[1]


def test_many_requests_without_errors_or_memory_growth(served) -> None:
    one, hundred = split_body(served.X_test.head(1)), split_body(served.X_test.head(100))
    hammer(served.ours, one, 4, 1.0)  # warm-up
    before = rss_mb(served.ours_pid)
    for body in (one, hundred):
        for concurrency in (1, 8, 32):
            total, errors = hammer(served.ours, body, concurrency, 1.5)
            assert total > 10 and errors == 0, (concurrency, total, errors)
    assert rss_mb(served.ours_pid) - before < 60  # MB; the bench's --soak mode runs this for 60 s per case


# ---------------------------------------------------------------- a model bug is not the client's fault


@pytest.fixture()
def broken_app(served, spec):
    """MLflow's scoring app (plain and guarded) for the champion with a corrupted coefficient vector,
    under uvicorn in a thread: a fault inside the model, not in the request."""
    import uvicorn
    from mlflow.pyfunc import scoring_server

    from creditflow.model.pyfunc import Scoring
    from creditflow.serving.live import LiveModel, Loaded
    from creditflow.serving.online import RequestGuard, ServingConfig

    mlflow.set_tracking_uri(served.store)
    model = mlflow.pyfunc.load_model("models:/credit-default@champion")
    python_model = model.unwrap_python_model()
    python_model.pipeline[-1].coef_ = python_model.pipeline[-1].coef_[:, :-1]
    python_model.scoring = Scoring.build(python_model.pipeline, python_model.dataset, python_model.config)
    servers, urls = [], []
    live = LiveModel("models:/credit-default/1", Loaded(model, "models:/credit-default/1", "credit-default/1", "1"))
    for app in (scoring_server.init(model), RequestGuard(scoring_server.init(model), live, ServingConfig())):
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        servers.append(server)
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        wait_for_http(f"{url}/ping", timeout=30)
    yield urls
    for server in servers:
        server.should_exit = True


class Held:
    """A model whose predict waits for `release`: scoring that outlasts any timeout, ended by the test (the pyfunc
    and the python model it wraps, which the server calls with the frame it typed itself)."""

    def __init__(self, model, release: threading.Event) -> None:
        self.model, self.release = model, release

    def predict(self, *args):
        assert self.release.wait(timeout=120), "the test never released the held scoring"
        return self.model.predict(*args)

    def answer_columns(self, *args):
        assert self.release.wait(timeout=120), "the test never released the held scoring"
        return self.model.answer_columns(*args)

    def answer_matrix(self, *args):
        assert self.release.wait(timeout=120), "the test never released the held scoring"
        return self.model.answer_matrix(*args)

    def unwrap_python_model(self):
        return Held(self.model.unwrap_python_model(), self.release)

    def __getattr__(self, name: str):
        return getattr(self.model, name)


def test_scoring_past_the_timeout_is_504_and_the_server_keeps_serving(served, spec) -> None:
    import dataclasses

    import uvicorn
    from mlflow.pyfunc import scoring_server

    from creditflow.serving.live import LiveModel, fetch
    from creditflow.serving.online import RequestGuard, ServingConfig

    with tracking_at(served.store):
        loaded = fetch("models:/credit-default@champion")
    release = threading.Event()
    held = dataclasses.replace(loaded, model=Held(loaded.model, release))
    app = RequestGuard(scoring_server.init(loaded.model), LiveModel("pinned", held), ServingConfig(timeout_seconds=0.5))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", timeout=30)
        late = post(f"http://127.0.0.1:{port}", split_body(applicants(served, 150)))  # held: only the timeout ends it
        assert late.status_code == 504 and "longer than the request timeout" in late.json()["message"]
        release.set()
        small = post(f"http://127.0.0.1:{port}", split_body(applicants(served, 2)))
        assert small.status_code == 200 and len(small.json()["predictions"]) == 2
    finally:
        release.set()
        server.should_exit = True


def test_model_bug_is_a_5xx_with_a_generic_message(served, broken_app) -> None:
    X = applicants(served, 2)
    for url in broken_app:  # plain MLflow app and creditflow's guarded app
        response = post(url, split_body(X))
        assert response.status_code == 500, response.text
        assert "internal error" in response.json()["message"] and "31337" not in response.text
        bad = post(url, split_body(X.assign(age=-1.0)))  # the client's own mistakes stay 4xx
        assert bad.status_code == 400 and "age below 0" in bad.json()["message"]


# ---------------------------------------------------------------- start-up mistakes: one line, exit 2


@pytest.mark.parametrize(("argv", "words"), [
    (["serve", "-m", "models:/no-such-model@champion"], "cannot load model models:/no-such-model@champion"),
    (["serve", "--config", "missing.yaml"], "serving config not found: missing.yaml"),
    (["serve", "-p", "70000"], "invalid field 'port'"),
])
def test_serve_mistakes_are_one_line_and_exit_2(argv, words, capsys, tmp_path) -> None:
    from creditflow.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # MLflow may log INFO lines too
    assert len(errors) == 1 and words in errors[0] and "Traceback" not in err
