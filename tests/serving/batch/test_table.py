"""The prediction table: atomic batch replacement, latest prediction by applicant, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from creditflow.cli import main
from creditflow.errors import without_password
from creditflow.serving.batch import table as predictions
from creditflow.serving.batch.partitions import exchange, parquet_rows, publish
from creditflow.serving.batch.table import (
    COLUMNS,
    PredictionNotFound,
    PredictionTable,
    TableError,
    check_scored_layout,
    default_table_url,
)


def staged(path: Path, ids: list[str], probability: float, files: int = 1) -> Path:
    """A scored batch as Spark writes it: part files of applicant_id, probability, decision, reasons (JSON)."""
    path.mkdir(parents=True)
    per_file = -(-len(ids) // files)
    for i in range(files):
        part = ids[i * per_file:(i + 1) * per_file]
        table = pa.table({
            "applicant_id": pa.array(part, pa.string()),
            "probability": pa.array([probability] * len(part), pa.float64()),
            "decision": pa.array(["decline" if probability >= 0.2 else "approve"] * len(part)),
            "reason_codes": pa.array(['["Age", "Debt ratio"]' if j % 2 else "[]" for j in range(len(part))],
                                     pa.string()),
            "reason_statements": pa.array([STATEMENTS if j % 2 else "[]" for j in range(len(part))], pa.string()),
        })
        pq.write_table(table, path / f"part-{i:05d}.parquet")
    return path


STATEMENTS = '["Age", "Debt ratio too high"]'


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
    assert latest["reason_statements"] == json.loads(STATEMENTS)
    assert latest["scored_at"].startswith("2026-01-03T00:00:00")
    assert table.get_latest("1")["reason_codes"] == []
    with pytest.raises(PredictionNotFound, match="applicant 200"):
        table.get_latest("200")  # was in b1's first version only: replaced away

    # b3 after b1; rerunning b1 (now between b2 and b3) leaves its neighbours' rows alone
    assert table.replace_batch("b3", staged(tmp_path / "d", ids[:10], 0.5), lineage("3", day(4))) == 10
    assert table.replace_batch("b1", staged(tmp_path / "e", ids[:70], 0.05), lineage("1", day(5))) == 70
    assert (table.count("b1"), table.count("b2"), table.count("b3"), table.count()) == (70, 50, 10, 130)
    assert table.get_latest("5")["batch_id"] == "b1" and table.get_latest("60")["batch_id"] == "b1"
    with pytest.raises(PredictionNotFound):
        table.get_latest("71")  # in b1's second version only


def view_rows(table: PredictionTable, sql: str, *params: str) -> tuple[list[str], list[tuple]]:
    """What any SQL reader of the view sees: column names and rows."""
    conn = table._connect()
    try:
        cur = conn.cursor()
        cur.execute(sql.replace("?", table.dialect.mark), params)
        return [c[0] for c in cur.description], cur.fetchall()
    finally:
        conn.close()


def check_view(table: PredictionTable) -> None:
    """Every row read through the view carries all 10 fields; counts kept per batch match the rows."""
    names, rows = view_rows(table, "SELECT * FROM predictions WHERE applicant_id = ?", "8")
    assert names == list(COLUMNS)
    assert sorted((r[1], r[5], r[6], r[7]) for r in rows) == [
        ("b1", "credit-default", "1", "r" * 32), ("b2", "credit-default", "2", "r" * 32),
        ("b3", "credit-default", "3", "r" * 32)]
    _, per_batch = view_rows(table, "SELECT batch_id, COUNT(*) FROM predictions GROUP BY batch_id ORDER BY batch_id")
    assert per_batch == [("b1", 70), ("b2", 50), ("b3", 10)]


def test_sqlite_replace_batch_and_latest(tmp_path: Path) -> None:
    table = PredictionTable(f"sqlite:///{tmp_path / 'p.db'}")
    check_replace_and_latest(table, tmp_path)
    check_view(table)


@pytest.mark.integration
def test_postgres_replace_batch_and_latest(postgres_db: str, tmp_path: Path) -> None:
    table = PredictionTable(postgres_db)
    check_replace_and_latest(table, tmp_path)
    check_view(table)
    assert table.get_latest("1")["scored_at"] == "2026-01-05T00:00:00Z"  # TIMESTAMPTZ back as ISO UTC


def test_a_batch_is_stored_once_and_its_rows_are_contiguous(tmp_path: Path) -> None:
    """The lineage lives in prediction_batches; a batch's rows are one rowid range, which a rerun deletes."""
    db = tmp_path / "p.db"
    table = PredictionTable(f"sqlite:///{db}")
    ids = [str(i) for i in range(1000)]
    table.replace_batch("b1", staged(tmp_path / "a", ids, 0.1, files=2), lineage("1", "2026-01-01T00:00:00Z"))
    table.replace_batch("b2", staged(tmp_path / "b", ids[:333], 0.3), lineage("2", "2026-01-02T00:00:00Z"))
    table.replace_batch("b1", staged(tmp_path / "c", ids[:401], 0.1), lineage("3", "2026-01-03T00:00:00Z"))
    with sqlite3.connect(db) as conn:
        batches = conn.execute("SELECT batch_id, model_version, rows, first_row, last_row FROM prediction_batches "
                               "ORDER BY batch_id").fetchall()
        assert batches == [("b1", "3", 401, 1334, 1734), ("b2", "2", 333, 1001, 1333)]
        for _, _, rows, first, last in batches:
            assert conn.execute("SELECT COUNT(*) FROM prediction_rows WHERE rowid BETWEEN ? AND ?",
                                (first, last)).fetchone()[0] == rows
        assert conn.execute("SELECT COUNT(*) FROM prediction_rows").fetchone()[0] == 734  # b1's first 1000 gone
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                              "AND tbl_name = 'prediction_rows'")}
        assert indexes == {"prediction_rows_applicant_idx"}  # no batch index to maintain


def test_ids_in_random_order_are_inserted_sorted_each_with_its_own_row(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Shuffled ids go into the table in applicant order, chunk by chunk (index locality); rows keep their values."""
    monkeypatch.setattr(predictions, "LOAD_ROWS", 1000)
    ids = [str(i) for i in random.Random(7).sample(range(10_000), 3000)]
    odd = [int(i) % 2 == 1 for i in ids]
    path = tmp_path / "shuffled"
    path.mkdir()
    pq.write_table(pa.table({
        "applicant_id": ids, "probability": [int(i) / 10_000 for i in ids],
        "decision": ["decline" if o else "approve" for o in odd],
        "reason_codes": [json.dumps([f"code {i}"] if o else []) for i, o in zip(ids, odd, strict=True)],
        "reason_statements": [json.dumps([f"statement {i}"] if o else []) for i, o in zip(ids, odd, strict=True)],
    }), path / "part-00000.parquet")
    db = tmp_path / "p.db"
    assert PredictionTable(f"sqlite:///{db}").replace_batch("b1", path, lineage("1", "2026-01-01T00:00:00Z")) == 3000
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT applicant_id, probability, decision, reason_codes FROM prediction_rows "
                            "ORDER BY rowid").fetchall()
        span = conn.execute("SELECT first_row, last_row FROM prediction_batches").fetchone()
    assert span == (1, 3000)
    assert [r[0] for r in rows] == sorted(ids[:1000]) + sorted(ids[1000:2000]) + sorted(ids[2000:])  # per chunk
    for applicant, probability, decision, codes in rows:
        declined = int(applicant) % 2 == 1
        assert probability == int(applicant) / 10_000
        assert (decision, json.loads(codes)) == (("decline", [f"code {applicant}"]) if declined else ("approve", []))


def test_loading_into_a_file_that_is_not_a_database_is_a_one_line_error_and_leaves_it(tmp_path: Path) -> None:
    notes = tmp_path / "notes.db"
    notes.write_text("not a database\n" * 100)
    with pytest.raises(TableError, match=r"cannot open prediction table .*notes\.db: .*file is not a database$"):
        PredictionTable(f"sqlite:///{notes}").replace_batch("b1", staged(tmp_path / "a", ["1"], 0.1),
                                                            lineage("1", "2026-01-01T00:00:00Z"))
    assert notes.read_text() == "not a database\n" * 100


def test_an_empty_batch_replaces_the_old_one(tmp_path: Path) -> None:
    table = PredictionTable(f"sqlite:///{tmp_path / 'p.db'}")
    table.replace_batch("b1", staged(tmp_path / "a", ["1", "2"], 0.1), lineage("1", "2026-01-01T00:00:00Z"))
    assert table.replace_batch("b1", staged(tmp_path / "b", [], 0.1), lineage("2", "2026-01-02T00:00:00Z")) == 0
    assert table.count("b1") == 0 and table.count() == 0
    with pytest.raises(PredictionNotFound):
        table.get_latest("1")


OLD_LAYOUT = ("CREATE TABLE predictions (applicant_id TEXT NOT NULL, batch_id TEXT NOT NULL, "
              "probability REAL NOT NULL, decision TEXT NOT NULL, reason_codes TEXT NOT NULL, "
              "model_name TEXT NOT NULL, model_version TEXT NOT NULL, run_id TEXT NOT NULL, scored_at TEXT NOT NULL)")


def test_a_database_in_the_old_layout_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with sqlite3.connect(tmp_path / "predictions.db") as conn:
        conn.execute(OLD_LAYOUT)
        conn.execute("INSERT INTO predictions VALUES ('1', 'b0', 0.1, 'approve', '[]', 'm', '1', 'r', '2025')")
    table = PredictionTable(default_table_url(tmp_path))
    for attempt in (lambda: table.replace_batch("b1", staged(tmp_path / "a", ["1"], 0.1), lineage("1", "2026")),
                    lambda: table.get_latest("1"), lambda: table.count()):
        with pytest.raises(TableError, match="old layout .* table named 'predictions'"):
            attempt()
    assert main(["predictions", "get", "--id", "1", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: sqlite:///") and "old layout" in err and "\n" not in err
    with sqlite3.connect(tmp_path / "predictions.db") as conn:  # nothing was changed
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["predictions"]


def check_a_table_from_before_statements_gains_them(table: PredictionTable, tmp_path: Path) -> None:
    """Rows loaded before reason statements existed read as none; a new batch writes them; nothing is lost."""
    assert table.replace_batch("b1", staged(tmp_path / "new", ["7", "8"], 0.3), lineage("2", "2026-01-02")) == 2
    assert table.get_latest("8")["reason_statements"] == json.loads(STATEMENTS)
    assert table.get_latest("1")["reason_statements"] == [] and table.get_latest("1")["reason_codes"] == ["Age"]
    assert table.count() == 3


def test_sqlite_table_from_before_statements_gains_them(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    table = PredictionTable(f"sqlite:///{db}")
    table.replace_batch("b0", staged(tmp_path / "old", ["1"], 0.3), lineage("1", "2026-01-01"))
    with sqlite3.connect(db) as conn:  # as the layout before statements left it
        conn.execute("DROP VIEW predictions")
        conn.execute("ALTER TABLE prediction_rows DROP COLUMN reason_statements")
        conn.execute("UPDATE prediction_rows SET reason_codes = '[\"Age\"]'")
        conn.execute("CREATE VIEW predictions AS SELECT r.applicant_id, b.batch_id, r.probability, r.decision, "
                     "r.reason_codes, b.model_name, b.model_version, b.run_id, b.scored_at FROM prediction_rows r "
                     "JOIN prediction_batches b USING (batch_key)")
    check_a_table_from_before_statements_gains_them(table, tmp_path)


@pytest.mark.integration
def test_postgres_table_from_before_statements_gains_them(postgres_db: str, tmp_path: Path) -> None:
    import psycopg2

    table = PredictionTable(postgres_db)
    table.replace_batch("b0", staged(tmp_path / "old", ["1"], 0.3), lineage("1", "2026-01-01T00:00:00Z"))
    with psycopg2.connect(postgres_db) as conn, conn.cursor() as cur:
        cur.execute("DROP VIEW predictions")
        cur.execute("ALTER TABLE prediction_rows DROP COLUMN reason_statements")
        cur.execute("UPDATE prediction_rows SET reason_codes = '[\"Age\"]'")
        cur.execute("CREATE VIEW predictions AS SELECT r.applicant_id, b.batch_id, r.probability, r.decision, "
                    "r.reason_codes, b.model_name, b.model_version, b.run_id, b.scored_at FROM prediction_rows r "
                    "JOIN prediction_batches b USING (batch_key)")
    check_a_table_from_before_statements_gains_them(table, tmp_path)


@pytest.mark.integration
def test_postgres_old_layout_is_a_one_line_error(postgres_db: str, tmp_path: Path) -> None:
    import psycopg2

    with psycopg2.connect(postgres_db) as conn, conn.cursor() as cur:
        cur.execute(OLD_LAYOUT)
    table = PredictionTable(postgres_db)
    with pytest.raises(TableError, match="old layout"):
        table.replace_batch("b1", staged(tmp_path / "a", ["1"], 0.1), lineage("1", "2026-01-01T00:00:00Z"))
    with pytest.raises(TableError, match="old layout"):
        table.get_latest("1")


def test_an_output_whose_batches_hold_reason_codes_as_lists_is_refused_in_one_line(tmp_path: Path) -> None:
    check_scored_layout(tmp_path)  # nothing scored yet
    publish(staged(tmp_path / "s1", ["1", "2"], 0.1), tmp_path / "scored" / "batch_id=new", tmp_path / "trash")
    check_scored_layout(tmp_path)  # JSON text: the current layout
    old = tmp_path / "scored" / "batch_id=old"
    old.mkdir()
    pq.write_table(pa.table({"applicant_id": ["3"], "reason_codes": pa.array([["Age"]], pa.list_(pa.string()))}),
                   old / "part-00000.parquet")
    shutil.rmtree(tmp_path / "scored" / "batch_id=new")
    with pytest.raises(TableError, match=r"reason_codes as list<.*write to a new output directory$"):
        check_scored_layout(tmp_path)
    (old / "part-00000.parquet").write_text("not parquet")
    with pytest.raises(TableError, match=r"cannot read .*part-00000\.parquet: "):
        check_scored_layout(tmp_path)


def test_exchange_swaps_two_directories_in_one_step(tmp_path: Path) -> None:
    for name, content in (("a", "old"), ("b", "new")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "part").write_text(content)
    assert exchange(tmp_path / "a", tmp_path / "b") is True  # Linux renameat2 on this filesystem
    assert (tmp_path / "a" / "part").read_text() == "new" and (tmp_path / "b" / "part").read_text() == "old"
    assert exchange(tmp_path / "a", tmp_path / "nowhere") is False  # nothing to exchange with: refused, no change
    assert (tmp_path / "a" / "part").read_text() == "new"


def test_publish_never_leaves_the_partition_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At every rename of a republish the final partition exists: a job killed between them leaves a whole batch."""
    final = tmp_path / "scored" / "batch_id=b"
    publish(staged(tmp_path / "s1", ["1", "2"], 0.1), final, tmp_path / "trash1")
    seen: list[bool] = []
    rename = Path.rename

    def watched(self: Path, target: Path) -> Path:
        seen.append(final.exists())
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", watched)
    publish(staged(tmp_path / "s2", ["3"], 0.1), final, tmp_path / "trash2")
    monkeypatch.undo()
    assert seen and all(seen) and parquet_rows(final) == 1 and not (tmp_path / "trash2").exists()


def test_publish_swaps_a_partition(tmp_path: Path) -> None:
    final = tmp_path / "scored" / "batch_id=b"
    publish(staged(tmp_path / "s1", ["1", "2"], 0.1), final, tmp_path / "trash1")
    publish(staged(tmp_path / "s2", ["3"], 0.1), final, tmp_path / "trash2")
    assert parquet_rows(final) == 1 and not (tmp_path / "trash2").exists()
    assert sorted(p.name for p in (tmp_path / "scored").iterdir()) == ["batch_id=b"]


def test_bad_urls_and_missing_tables_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(TableError, match="unsupported table URL"):
        PredictionTable("mysql://x@y/z")
    assert without_password("postgresql://u:secret@h:5432/db") == "postgresql://u@h:5432/db"
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
from creditflow.serving.batch.table import PredictionTable
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
