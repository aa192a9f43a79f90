"""The Parquet partitions of a batch job's output: one directory per batch, published whole.

A batch is written into a staging directory and published by `publish`, which makes it the
partition `<root>/batch_id=<id>` so that readers always find a whole batch there, old or new.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

AT_FDCWD = -100  # <fcntl.h>: paths relative to the working directory
RENAME_EXCHANGE = 2  # <linux/fs.h>


def partition_dir(root: Path, batch_id: str) -> Path:
    return root / f"batch_id={batch_id}"


def published_batches(root: Path) -> dict[str, Path]:
    """The published partitions under `root` by batch id, in id order (staging and trash are not partitions)."""
    return {p.name.removeprefix("batch_id="): p for p in sorted(root.glob("batch_id=*")) if p.is_dir()}


def read_partition(path: Path, columns: list[str]) -> pa.Table:
    """The given columns of a published partition's Parquet files (a partition of no rows reads as empty)."""
    files = sorted(path.glob("*.parquet"))
    tables = [pq.read_table(f, columns=columns) for f in files if pq.ParquetFile(f).metadata.num_rows]
    return pa.concat_tables(tables) if tables else pa.table({c: pa.array([], pa.string()) for c in columns})


def parquet_rows(path: Path) -> int:
    """Rows in a Parquet directory (or file), from the file footers only."""
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def publish(staged: Path, final: Path, trash: Path, exchanged: Callable[[], None] = lambda: None) -> None:
    """Make a staged directory the final one, so that `final` always holds a whole batch, old or new.

    An existing partition is exchanged with the staged one in one atomic step (Linux renameat2
    RENAME_EXCHANGE); the old one, now at `staged`, is moved to `trash` and, after `exchanged()`
    (the batch job's step hook), removed. Where the exchange is not supported it falls back to two
    renames, between which a killed job would leave no partition until its rerun.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        staged.rename(final)
    elif exchange(staged, final):
        staged.rename(trash)
    else:
        final.rename(trash)
        staged.rename(final)
    exchanged()
    shutil.rmtree(trash, ignore_errors=True)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 with RENAME_EXCHANGE); False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    done = renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0
    if not done:
        logger.info("atomic exchange not available here (%s): publishing with two renames",
                    os.strerror(ctypes.get_errno()))
    return done
