"""The prediction table: atomic batch replacement, latest prediction by applicant, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from creditflow.cli import main
from creditflow.predictions import (
    PredictionNotFound,
    PredictionTable,
    TableError,
    default_table_url,
    parquet_rows,
    publish,
    reason_codes_json,
    safe_url,
)


def staged(path: Path, ids: list[str], probability: float, files: int = 1) -> Path:
    """A scored batch as Spark writes it: part files of applicant_id, probability, decision, reason_codes."""
    path.mkdir(parents=True)
    per_file = -(-len(ids) // files)
    for i in range(files):
        part = ids[i * per_file:(i + 1) * per_file]
        table = pa.table({
            "applicant_id": pa.array(part, pa.string()),
            "probability": pa.array([probability] * len(part), pa.float64()),
            "decision": pa.array(["decline" if probability >= 0.2 else "approve"] * len(part)),
            "reason_codes": pa.array([["Age", "Debt ratio"] if j % 2 else [] for j in range(len(part))],
                                     pa.list_(pa.string())),
        })
        pq.write_table(table, path / f"part-{i:05d}.parquet")
    return path


def lineage(version: str, when: str) -> dict[str, str]:
    return {"model_name": "credit-default", "model_version": version, "run_id": "r" * 32, "scored_at": when}


def check_replace_and_latest(table: PredictionTable, tmp_path: Path) -> None:
    ids = [str(i) for i in range(1, 301)]
    day = "2026-01-0{}T00:00:00Z".format
    assert table.replace_batch("b1", staged(tmp_path / "a", ids, 0.1, files=3), lineage("1", day(1))) == 300
    assert table.replace_batch("b2", staged(tmp_path / "b", ids[:50], 0.3), lineage("2", day(2))) == 50
    # rerun of b1 with fewer rows: replaced, never duplicated; b2 untouched
    assert table.replace_batch("b1", staged(tmp_path / "c", ids[:120], 0.05), lineage("1", day(3))) == 120
    assert (table.count("b1"), table.count("b2"), table.count()) == (120, 50, 170)

    latest = table.get_latest("8")  # in b1 (Jan 3) and b2 (Jan 2): the newer one wins
    assert latest["batch_id"] == "b1" and latest["probability"] == pytest.approx(0.05)
    assert latest["decision"] == "approve" and latest["model_version"] == "1"
    assert latest["reason_codes"] == ["Age", "Debt ratio"]  # odd row positions carry codes
    assert latest["scored_at"].startswith("2026-01-03T00:00:00")
    assert table.get_latest("1")["reason_codes"] == []
    with pytest.raises(PredictionNotFound, match="applicant 200"):
        table.get_latest("200")  # was in b1's first version only: replaced away


def test_sqlite_replace_batch_and_latest(tmp_path: Path) -> None:
    check_replace_and_latest(PredictionTable(f"sqlite:///{tmp_path / 'p.db'}"), tmp_path)


@pytest.mark.integration
def test_postgres_replace_batch_and_latest(postgres_db: str, tmp_path: Path) -> None:
    table = PredictionTable(postgres_db)
    check_replace_and_latest(table, tmp_path)
    assert table.get_latest("8")["scored_at"] == "2026-01-03T00:00:00Z"  # TIMESTAMPTZ back as ISO UTC


def test_reason_codes_json_is_valid_json_even_with_quotes() -> None:
    plain = pa.array([["Age", "Debt ratio"], [], None, ["Times 90+ days late"]], pa.list_(pa.string()))
    assert [json.loads(s) for s in reason_codes_json(plain).to_pylist()] == [
        ["Age", "Debt ratio"], [], [], ["Times 90+ days late"]]
    tricky = pa.array([['Say "no"', "back\\slash"], []], pa.list_(pa.string()))
    assert [json.loads(s) for s in reason_codes_json(tricky).to_pylist()] == [['Say "no"', "back\\slash"], []]


def test_publish_swaps_a_partition(tmp_path: Path) -> None:
    final = tmp_path / "scored" / "batch_id=b"
    publish(staged(tmp_path / "s1", ["1", "2"], 0.1), final, tmp_path / "trash1")
    publish(staged(tmp_path / "s2", ["3"], 0.1), final, tmp_path / "trash2")
    assert parquet_rows(final) == 1 and not (tmp_path / "trash2").exists()
    assert sorted(p.name for p in (tmp_path / "scored").iterdir()) == ["batch_id=b"]


def test_bad_urls_and_missing_tables_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(TableError, match="unsupported table URL"):
        PredictionTable("mysql://x@y/z")
    assert safe_url("postgresql://u:secret@h:5432/db") == "postgresql://u@h:5432/db"
    assert main(["predictions", "get", "--id", "1", "--output", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no prediction table at") and "\n" not in err
    assert not (tmp_path / "none").exists()  # reading never creates a table


def test_predictions_get_prints_the_latest_as_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = PredictionTable(default_table_url(tmp_path))
    table.replace_batch("b1", staged(tmp_path / "a", ["A-17", "A-18"], 0.4), lineage("3", "2026-02-01T10:00:00Z"))
    assert main(["predictions", "get", "--id", "A-17", "--output", str(tmp_path)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["applicant_id"] == "A-17" and record["decision"] == "decline"
    assert record["model_name"] == "credit-default" and record["model_version"] == "3"
    assert main(["predictions", "get", "--id", "nobody", "--output", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == "error: no prediction stored for applicant nobody"


LOADER = """
import sys
from pathlib import Path
from creditflow.predictions import PredictionTable
table = PredictionTable(sys.argv[1])
lineage = {"model_name": "m", "model_version": "2", "run_id": "r", "scored_at": "2026-03-01T00:00:00Z"}
table.replace_batch("b1", Path(sys.argv[2]), lineage, lambda done, total: print(done, total, flush=True))
"""


@pytest.mark.slow
def test_a_load_killed_midway_leaves_the_previous_batch(tmp_path: Path) -> None:
    """SIGKILL while a batch is being inserted: readers still see the old batch whole, then a rerun replaces it."""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    table = PredictionTable(url)
    table.replace_batch("b1", staged(tmp_path / "old", [f"o{i}" for i in range(1000)], 0.1),
                        lineage("1", "2026-01-01T00:00:00Z"))
    new = staged(tmp_path / "new", [f"n{i}" for i in range(300_000)], 0.3, files=3)
    proc = subprocess.Popen([sys.executable, "-c", LOADER, url, str(new)], stdout=subprocess.PIPE, text=True)
    first = proc.stdout.readline().split()  # one chunk inserted, transaction still open
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert first and int(first[0]) < 300_000, "the loader finished before it could be killed"
    assert table.count("b1") == 1000 and table.get_latest("o5")["model_version"] == "1"
    with pytest.raises(PredictionNotFound):
        table.get_latest("n5")
    assert table.replace_batch("b1", new, lineage("2", "2026-03-01T00:00:00Z")) == 300_000
    assert table.count() == 300_000 and table.get_latest("n5")["model_version"] == "2"
