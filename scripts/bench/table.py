"""Prediction table benchmark: loading a scored batch into SQLite, the former loader vs the current one.

For each size, scored rows are generated as Parquet the way the batch job's Spark step leaves them
(4 part files, 16 MB row groups; applicant ids "1".."N" in order, or shuffled with `--ids random`;
P(default) ~ Beta(1, 8); `decline` at 0.2, reason codes for declined rows only, as with
`reason_codes_for: declined`, as JSON text), written chunk by chunk.
Then, in this one process and interleaved run by run:
  sqlite3  the former loader: Python's sqlite3, 200-row INSERT statements of Python values, rows in
           file order (a copy kept here as the baseline; same tables, transaction and PRAGMAs)
  adbc     `PredictionTable.replace_batch`: ADBC ingest of Arrow columns, each chunk in applicant order
  adbc-file-order  the same, each chunk ingested in file order (no sorting; docs/performance.md)
Each run loads the batch into a fresh database (first load), then loads it again into the same
database (rerun: the batch's rows are replaced). Medians of `--repeats` runs; also CPU seconds
(the machine may be shared). The loader's peak resident memory is measured apart: one more load
of each kind in a fresh child process (its VmHWM, and its resident memory just before loading).
The Parquet is generated in a child process too.

    .venv/bin/python scripts/bench/table.py                          # 1M and 5M rows (~10 min)
    .venv/bin/python scripts/bench/table.py --sizes 1000000 --ids random   # applicant ids in random order
    .venv/bin/python scripts/bench/table.py --sizes 200000 --repeats 1   # a quick look
    .venv/bin/python scripts/bench/table.py --sizes 1000000 --ids random --loaders adbc,adbc-file-order
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from creditflow.serving.batch.table import COLUMNS, LOAD_CACHE_KB, ROWS, PredictionTable, _chunks, _table_rows

LABELS = ["Times 90+ days late", "Revolving utilization", "Debt ratio", "Age", "Monthly income",
          "Times 30-59 days late", "Open credit lines"]
LINEAGE = {"model_name": "credit-default", "model_version": "3", "run_id": "0123456789abcdef" * 2,
           "scored_at": "2026-11-24T10:00:00.000000Z"}
BATCH = "applicants-20261124"
FILES = 4
ROW_GROUP_ROWS = 400_000  # about 16 MB of these columns, the batch job's row group size
GEN_ROWS = 250_000  # rows generated at a time


def write_scored(path: Path, rows: int, shuffled: bool, seed: int = 0) -> None:
    """`rows` scored rows as part files under `path`, generated GEN_ROWS at a time."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    ids = rng.permutation(rows) + 1 if shuffled else np.arange(1, rows + 1)
    labels = np.array(LABELS)
    per_file = -(-rows // FILES)
    for f in range(FILES):
        lo, hi = f * per_file, min(rows, (f + 1) * per_file)
        writer = None
        for start in range(lo, hi, GEN_ROWS):
            n = min(GEN_ROWS, hi - start)
            p = rng.beta(1, 8, n)
            declined = p >= 0.2
            lengths = np.where(declined, 3, 0)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            picked = labels[rng.integers(0, len(LABELS), offsets[-1])]
            lists = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), pa.array(picked)), '", "')
            codes = pc.if_else(declined, pc.binary_join_element_wise('["', lists, '"]', ""), "[]")  # JSON text
            table = pa.table({
                "applicant_id": pa.array(ids[start:start + n].astype(str)),
                "probability": pa.array(p),
                "decision": pa.array(np.where(declined, "decline", "approve")),
                "reason_codes": codes,
            })
            writer = writer or pq.ParquetWriter(path / f"part-{f:05d}.parquet", table.schema)
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        if writer:
            writer.close()


# ---------------------------------------------------------------- the former loader (baseline)

ROWS_PER_INSERT = 200


class Sqlite3Table(PredictionTable):
    """The loader as it was: Python's sqlite3, INSERTs of ROWS_PER_INSERT rows of Python values, file order."""

    def _connect(self, create: bool = False, bulk: bool = False) -> Any:
        if not bulk:
            return super()._connect(create)
        conn = sqlite3.connect(self._target, timeout=60, isolation_level=None)
        for pragma in ("journal_mode=WAL", f"cache_size=-{LOAD_CACHE_KB}", "synchronous=NORMAL"):
            conn.execute(f"PRAGMA {pragma}")
        return conn

    @staticmethod
    def _insert_sqlite(cur: Any, chunk: pa.Table, batch_key: int) -> None:
        n = chunk.num_rows
        values: list[Any] = [None] * (4 * n)
        values[0::4] = chunk["applicant_id"].to_pylist()
        values[1::4] = chunk["probability"].to_pylist()
        values[2::4] = chunk["decision"].to_pylist()
        values[3::4] = chunk["reason_codes"].to_pylist()
        for start in range(0, len(values), 4 * ROWS_PER_INSERT):
            part = values[start:start + 4 * ROWS_PER_INSERT]
            cur.execute(f"INSERT INTO {ROWS} VALUES " + ", ".join([f"(?, {batch_key}, ?, ?, ?)"] * (len(part) // 4)),
                        part)


class FileOrderTable(PredictionTable):
    """The current loader with each chunk ingested as it comes, applicant ids not sorted."""

    @staticmethod
    def _insert_sqlite(cur: Any, chunk: pa.Table, batch_key: int) -> None:
        cur.adbc_ingest(ROWS, _table_rows(chunk, batch_key), mode="append")


def sqlite3_replace_batch(db: Path, batch_id: str, parquet: Path, lineage: dict[str, str]) -> int:
    return Sqlite3Table(f"sqlite:///{db}").replace_batch(batch_id, parquet, lineage)


def adbc_replace_batch(db: Path, batch_id: str, parquet: Path, lineage: dict[str, str]) -> int:
    return PredictionTable(f"sqlite:///{db}").replace_batch(batch_id, parquet, lineage)


def file_order_replace_batch(db: Path, batch_id: str, parquet: Path, lineage: dict[str, str]) -> int:
    return FileOrderTable(f"sqlite:///{db}").replace_batch(batch_id, parquet, lineage)


LOADERS: dict[str, Callable[[Path, str, Path, dict[str, str]], int]] = {
    "sqlite3": sqlite3_replace_batch, "adbc": adbc_replace_batch, "adbc-file-order": file_order_replace_batch}


# ---------------------------------------------------------------- measuring


def rss_bytes(field: str = "VmRSS") -> int:
    """This process's resident memory now (VmRSS) or at its peak (VmHWM; unlike ru_maxrss, not inherited
    from the parent across fork and exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(f"{field}:"))


def peak_rss(name: str, parquet: Path, db: Path) -> dict[str, int]:
    """Load once in a fresh process: its resident memory before the load and its peak (bytes)."""
    out = subprocess.run([sys.executable, __file__, "--rss-of", name, str(parquet), str(db)],
                         check=True, capture_output=True, text=True).stdout
    remove_db(db)
    return json.loads(out.splitlines()[-1])


def rss_child(name: str, parquet: Path, db: Path) -> None:
    before = rss_bytes()
    LOADERS[name](db, BATCH, parquet, LINEAGE)
    print(json.dumps({"before": before, "peak": rss_bytes("VmHWM")}))


def remove_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def timed(loader: Callable[..., int], db: Path, parquet: Path, rows: int) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    loaded = loader(db, BATCH, parquet, LINEAGE)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert loaded == rows, (loaded, rows)
    return {"seconds": wall, "cpu": cpu}


def check(db: Path, rows: int) -> None:
    """Both loaders leave the batch once, and the view answers the reader's query with the 9 columns."""
    with sqlite3.connect(db) as conn:
        cur = conn.execute("SELECT * FROM predictions WHERE applicant_id = ?", (str(rows // 2),))
        found = cur.fetchall()
        assert [c[0] for c in cur.description] == list(COLUMNS), cur.description
        assert len(found) == 1 and found[0][1] == BATCH, found
        assert conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == rows


Results = dict[str, dict[str, list[dict[str, float]]]]


def bench(size: int, work: Path, repeats: int, ids: str,
          loaders: list[str]) -> tuple[Results, dict[str, dict[str, int]]]:
    parquet = work / f"scored-{size}-{ids}"
    if not parquet.exists():
        print(f"generating {size:,} scored rows, applicant ids {ids}", flush=True)
        subprocess.run([sys.executable, __file__, "--generate", str(size), str(parquet), ids], check=True)
    for _ in _chunks(sorted(parquet.glob("*.parquet"))):  # warm up: file cache, Arrow pool; neither loader pays them
        pass
    results: Results = {name: {"first": [], "rerun": []} for name in loaders}
    for run in range(repeats):
        for name in loaders if run % 2 == 0 else loaders[::-1]:  # alternating: neither always goes first
            loader = LOADERS[name]
            db = work / f"{name}-{size}.db"
            remove_db(db)
            first = timed(loader, db, parquet, size)
            rerun = timed(loader, db, parquet, size)
            check(db, size)
            results[name]["first"].append(first)
            results[name]["rerun"].append(rerun)
            print(f"  {size:>9,} rows  run {run + 1}  {name}: first load {first['seconds']:6.2f} s "
                  f"(cpu {first['cpu']:.2f}), rerun {rerun['seconds']:6.2f} s (cpu {rerun['cpu']:.2f}), "
                  f"db {db.stat().st_size / 2**20:,.0f} MiB", flush=True)
            remove_db(db)
    return results, {name: peak_rss(name, parquet, work / f"rss-{name}.db") for name in loaders}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ids", choices=["sequential", "random"], default="sequential",
                        help="applicant ids 1..N in order, or shuffled")
    parser.add_argument("--loaders", default="sqlite3,adbc",
                        help=f"comma-separated, the first is the baseline of the ratios ({', '.join(LOADERS)})")
    parser.add_argument("--work", type=Path, help="where the Parquet and databases go (default: a temp dir)")
    parser.add_argument("--generate", nargs=3, metavar=("ROWS", "PATH", "IDS"), help=argparse.SUPPRESS)
    parser.add_argument("--rss-of", nargs=3, metavar=("LOADER", "PARQUET", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        write_scored(Path(args.generate[1]), int(args.generate[0]), args.generate[2] == "random")
        return
    if args.rss_of:
        rss_child(args.rss_of[0], Path(args.rss_of[1]), Path(args.rss_of[2]))
        return

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at start", flush=True)
        loaders = [name for name in args.loaders.split(",") if name]
        unknown = [name for name in loaders if name not in LOADERS]
        if unknown:
            raise SystemExit(f"error: unknown loader(s) {', '.join(unknown)} (known: {', '.join(LOADERS)})")
        table = {size: bench(size, work, args.repeats, args.ids, loaders) for size in args.sizes}
        print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)

    median = statistics.median
    print(f"\nmedian of {args.repeats} runs, applicant ids {args.ids}: rows/s, seconds (cpu seconds)")
    for size, (results, rss) in table.items():
        rate = {}
        for name, phases in results.items():
            for phase, runs in phases.items():
                seconds = median(r["seconds"] for r in runs)
                rate[name, phase] = size / seconds
                print(f"{size:>9,} {name:15} {phase:5}: {size / seconds:>10,.0f} rows/s  {seconds:6.2f} s "
                      f"(cpu {median(r['cpu'] for r in runs):.2f} s)")
        for name, mem in rss.items():
            print(f"{size:>9,} {name:15} loader peak RSS {mem['peak'] / 2**20:,.0f} MiB "
                  f"({mem['before'] / 2**20:,.0f} MiB before loading)")
        base = loaders[0]
        for name in loaders[1:]:
            print(f"{size:>9,} {name}/{base} in rows/s: first load {rate[name, 'first'] / rate[base, 'first']:.2f}x, "
                  f"rerun {rate[name, 'rerun'] / rate[base, 'rerun']:.2f}x")


if __name__ == "__main__":
    main()
