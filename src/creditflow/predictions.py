"""The prediction table: scored batches kept as Parquet partitioned by batch and as a SQL table by applicant.

Layout under a job's output directory:
    scored/batch_id=<id>/*.parquet       the predictions of each batch (the Parquet copy)
    quarantine/batch_id=<id>/*.parquet   rows that broke the dataset spec's value rules, with the reason
    predictions.db                       the SQL table (SQLite default; PostgreSQL through a URL)

A batch is written aside first and becomes visible in one step: the SQL rows of a batch are replaced
in one transaction (delete + insert, committed together), the Parquet partition by a directory
rename. A job killed at any point leaves either the previous batch or the new one, never a mix.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from creditflow.errors import CreditflowError

TABLE = "predictions"
DB_FILE = "predictions.db"
SCORED_DIR = "scored"
QUARANTINE_DIR = "quarantine"
STAGING_DIR = "_staging"  # Spark and pyarrow readers skip names starting with "_"
COLUMNS = ("applicant_id", "batch_id", "probability", "decision", "reason_codes",
           "model_name", "model_version", "run_id", "scored_at")
PER_BATCH = ("model_name", "model_version", "run_id", "scored_at")  # one value for a whole batch
LOAD_ROWS = 100_000  # rows per insert chunk: bounds the loader's memory
LOAD_CACHE_KB = 65_536  # SQLite page cache of the loading connection: a fixed bound, reached by any big batch
UNSAFE_FOR_JSON_JOIN = r'["\\\x00-\x1f]'

Progress = Callable[[int, int], None]


class TableError(CreditflowError):
    """The prediction table cannot be opened, read or written."""


class PredictionNotFound(CreditflowError):
    """No stored prediction for an applicant (exit 1, as grep does for no match)."""

    exit_code = 1


def default_table_url(output: str | Path) -> str:
    """The SQLite file under the job's output directory."""
    return f"sqlite:///{Path(output) / DB_FILE}"


def safe_url(url: str) -> str:
    """A table URL without its password, for messages and logs."""
    scheme, _, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}://{creds.split(':')[0]}{at}{host}" if at else url


def partition_dir(root: Path, batch_id: str) -> Path:
    return root / f"batch_id={batch_id}"


def parquet_rows(path: Path) -> int:
    """Rows in a Parquet directory (or file), from the file footers only."""
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def publish(staged: Path, final: Path, trash: Path) -> None:
    """Make a staged directory the final one: the old partition moves aside, the new one renames in."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        final.rename(trash)
    staged.rename(final)
    shutil.rmtree(trash, ignore_errors=True)


# ---------------------------------------------------------------- SQL


@dataclass(frozen=True)
class Dialect:
    """What differs between SQLite and PostgreSQL for our few statements."""

    name: str
    mark: str  # parameter placeholder
    real: str
    timestamp: str


SQLITE = Dialect("sqlite", "?", "REAL", "TEXT")
POSTGRES = Dialect("postgresql", "%s", "DOUBLE PRECISION", "TIMESTAMPTZ")


def _ddl(d: Dialect) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {TABLE} (applicant_id TEXT NOT NULL, batch_id TEXT NOT NULL, "
        f"probability {d.real} NOT NULL, decision TEXT NOT NULL, reason_codes TEXT NOT NULL, "
        f"model_name TEXT NOT NULL, model_version TEXT NOT NULL, run_id TEXT NOT NULL, "
        f"scored_at {d.timestamp} NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_applicant_idx ON {TABLE} (applicant_id, scored_at)",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_batch_idx ON {TABLE} (batch_id)",
    ]


class PredictionTable:
    """The SQL prediction table behind a URL: `sqlite:///path.db` or `postgresql://user@host:port/db`."""

    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite:///"):
            self.dialect, self._target = SQLITE, url.removeprefix("sqlite:///")
        elif url.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://")):
            self.dialect, self._target = POSTGRES, "postgresql://" + url.split("://", 1)[1]
        else:
            raise TableError(f"unsupported table URL '{url}': use sqlite:///path.db or postgresql://user@host/db")

    def _connect(self, create: bool = False) -> Any:
        if self.dialect is SQLITE and not create and not Path(self._target).is_file():
            raise PredictionNotFound(f"no prediction table at {self._target} (run a batch job, or pass --table)")
        try:
            if self.dialect is SQLITE:
                Path(self._target).parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self._target, timeout=60, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")  # readers keep seeing the old batch while one loads
                return conn
            import psycopg2

            conn = psycopg2.connect(self._target, connect_timeout=10)
            conn.autocommit = True  # transactions are explicit: BEGIN ... COMMIT
            return conn
        except Exception as exc:  # sqlite3.Error, psycopg2.Error, OSError: all mean "cannot open"
            raise TableError(f"cannot open prediction table {self._safe_url()}: {str(exc).splitlines()[0]}") from None

    def _safe_url(self) -> str:
        return safe_url(self.url)

    def replace_batch(self, batch_id: str, parquet: Path, lineage: dict[str, str],
                      progress: Progress | None = None) -> int:
        """Replace a batch's rows with those of a Parquet directory, in one transaction; return the rows."""
        total = parquet_rows(parquet)
        conn = self._connect(create=True)
        try:
            cur = conn.cursor()
            if self.dialect is SQLITE:
                cur.execute(f"PRAGMA cache_size=-{LOAD_CACHE_KB}")  # index pages stay in memory while loading
                cur.execute("PRAGMA synchronous=NORMAL")  # WAL: atomic and never corrupt; fsync at checkpoints
            cur.execute("BEGIN IMMEDIATE" if self.dialect is SQLITE else "BEGIN")
            for statement in _ddl(self.dialect):
                cur.execute(statement)
            cur.execute(f"DELETE FROM {TABLE} WHERE batch_id = {self.dialect.mark}", (batch_id,))
            loaded = 0
            for chunk in _chunks(parquet):
                self._insert(cur, chunk, batch_id, lineage)
                loaded += chunk.num_rows
                if progress:
                    progress(loaded, total)
            cur.execute("COMMIT")
            return loaded
        except (sqlite3.Error, _pg_error()) as exc:
            raise TableError(f"could not write batch {batch_id} to {self._safe_url()}: "
                             f"{str(exc).splitlines()[0]}") from None
        finally:
            conn.close()

    def _insert(self, cur: Any, chunk: pa.Table, batch_id: str, lineage: dict[str, str]) -> None:
        n = chunk.num_rows
        ids = chunk["applicant_id"].to_pylist()
        codes = reason_codes_json(chunk["reason_codes"])
        if self.dialect is SQLITE:
            rows = zip(ids, repeat(batch_id, n), chunk["probability"].to_pylist(), chunk["decision"].to_pylist(),
                       codes.to_pylist(), *(repeat(lineage[k], n) for k in PER_BATCH), strict=False)
            cur.executemany(f"INSERT INTO {TABLE} VALUES ({', '.join('?' * len(COLUMNS))})", rows)
            return
        table = pa.table({
            "applicant_id": chunk["applicant_id"], "batch_id": pa.array([batch_id] * n),
            "probability": chunk["probability"], "decision": chunk["decision"], "reason_codes": codes,
            **{k: pa.array([lineage[k]] * n) for k in PER_BATCH},
        })
        buffer = io.BytesIO()
        pacsv.write_csv(table, buffer)
        buffer.seek(0)
        cur.copy_expert(f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT csv, HEADER true)", buffer)

    def get_latest(self, applicant_id: str) -> dict[str, Any]:
        """The most recent stored prediction for an applicant (by scored-at time, then batch id)."""
        conn = self._connect()
        try:
            cur = conn.cursor()
            cur.execute(f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE applicant_id = {self.dialect.mark} "
                        "ORDER BY scored_at DESC, batch_id DESC LIMIT 1", (str(applicant_id),))
            row = cur.fetchone()
        except (sqlite3.Error, _pg_error()) as exc:
            if "no such table" in str(exc) or "does not exist" in str(exc):
                raise PredictionNotFound(f"no predictions stored yet in {self._safe_url()}") from None
            raise TableError(f"cannot read {self._safe_url()}: {str(exc).splitlines()[0]}") from None
        finally:
            conn.close()
        if row is None:
            raise PredictionNotFound(f"no prediction stored for applicant {applicant_id}")
        record = dict(zip(COLUMNS, row, strict=True))
        record["reason_codes"] = json.loads(record["reason_codes"])
        record["scored_at"] = _iso(record["scored_at"])
        return record

    def count(self, batch_id: str | None = None) -> int:
        """Rows stored, in one batch or in all."""
        conn = self._connect()
        try:
            cur = conn.cursor()
            where = f" WHERE batch_id = {self.dialect.mark}" if batch_id is not None else ""
            cur.execute(f"SELECT COUNT(*) FROM {TABLE}{where}", (batch_id,) if batch_id is not None else ())
            return int(cur.fetchone()[0])
        except (sqlite3.Error, _pg_error()) as exc:
            if "no such table" in str(exc) or "does not exist" in str(exc):
                return 0
            raise TableError(f"cannot read {self._safe_url()}: {str(exc).splitlines()[0]}") from None
        finally:
            conn.close()


def _pg_error() -> type[Exception]:
    """psycopg2's base error, imported only when it is installed (it is a dependency, but lazily loaded)."""
    try:
        import psycopg2

        return psycopg2.Error
    except ImportError:  # pragma: no cover - psycopg2-binary is a declared dependency
        return sqlite3.Error


def _iso(value: Any) -> str:
    return value.isoformat().replace("+00:00", "Z") if hasattr(value, "isoformat") else str(value)


def _chunks(parquet: Path) -> Iterator[pa.Table]:
    """The scored rows, LOAD_ROWS at a time, one file and row group after another (no read-ahead)."""
    columns = ["applicant_id", "probability", "decision", "reason_codes"]
    for path in sorted(parquet.rglob("*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=LOAD_ROWS, columns=columns):
            yield pa.Table.from_batches([batch])


def reason_codes_json(codes: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Lists of labels as JSON text, built column-wise (json.dumps per row would dominate the load)."""
    codes = codes.combine_chunks() if isinstance(codes, pa.ChunkedArray) else codes
    flat = pc.list_flatten(codes)
    if len(flat) and pc.any(pc.match_substring_regex(flat, UNSAFE_FOR_JSON_JOIN)).as_py():
        return pa.array([None if v is None else json.dumps(v) for v in codes.to_pylist()], pa.string())
    joined = pc.binary_join(codes, '", "')
    quoted = pc.binary_join_element_wise('["', joined, '"]', "")
    empty = pc.fill_null(pc.equal(pc.list_value_length(codes), 0), True)
    return pc.if_else(empty, "[]", quoted)


def staging_dir(output: Path, batch_id: str) -> Path:
    """A fresh directory for one attempt at a batch; earlier attempts' leftovers are removed."""
    root = output / STAGING_DIR
    for stale in root.glob(f"{batch_id}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    path = root / f"{batch_id}.{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path
