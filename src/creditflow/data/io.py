"""Files of applicants: CSV or Parquet, one file or a directory of one kind, read with one-line errors.

`input_files` is the one rule for what counts as an input; `read_table` reads it with pandas,
`inspect_input` reads only its headers or footers (the batch job plans with it before Spark starts).
`id_header` is the one rule for Kaggle's blank id header.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from creditflow.errors import DataError, first_line

Format = Literal["parquet", "csv"]
PARQUET_SUFFIXES = (".parquet", ".pq")
BLANK_ID_HEADERS = ("", "Unnamed: 0", "_c0")  # cs-training.csv's blank first header: as written, by pandas, by Spark


def id_header(columns: Sequence[str], wanted: str) -> str | None:
    """The column holding the id `wanted`: itself, else a blank first header (Kaggle's cs-training.csv); or None."""
    if wanted in columns:
        return wanted
    return columns[0] if columns and columns[0] in BLANK_ID_HEADERS else None


def input_files(path: str | Path) -> tuple[Format, list[Path]]:
    """The input's format and files: a .csv or .parquet file, or a directory holding files of one kind."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        parquet, text = sorted(path.glob("*.parquet")), sorted(path.glob("*.csv"))
        if not (parquet or text):
            raise DataError(f"{path}: directory holds no .csv or .parquet files")
        return ("parquet", parquet) if parquet else ("csv", text)
    if path.suffix in PARQUET_SUFFIXES:
        return "parquet", [path]
    if path.suffix == ".csv":
        return "csv", [path]
    raise DataError(f"{path}: not a .csv or .parquet file")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file (or a directory of them) with a one-line error for any failure."""
    fmt, files = input_files(path)
    try:
        read = pd.read_parquet if fmt == "parquet" else pd.read_csv
        frames = [read(f) for f in files]
        frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot be read ({first_line(exc)})") from None
    if frame.empty:
        raise DataError(f"{path}: the file has a header but no rows")
    return frame


@dataclass(frozen=True)
class InputFiles:
    """A CSV or Parquet file, or a directory of one kind, with its columns read from headers/footers."""

    path: Path
    format: Format
    files: tuple[Path, ...]
    columns: tuple[str, ...]
    types: dict[str, pa.DataType] = field(default_factory=dict)  # Parquet only (CSV cells are text)


def inspect_input(path: str | Path) -> InputFiles:
    """The input's files and columns, reading only Parquet footers or the CSV header line."""
    path = Path(path).absolute()  # Spark resolves relative paths against its JVM's start directory
    fmt, files = input_files(path)
    if fmt == "parquet":
        schemas = [_parquet_schema(f) for f in files]
        columns = [tuple(s.names) for s in schemas]
        types = {n: t for s in schemas for n, t in zip(s.names, s.types, strict=True)}
    else:
        columns, types = [_csv_header(f) for f in files], {}
    different = [f.name for f, c in zip(files, columns, strict=True) if c != columns[0]]
    if different:
        raise DataError(f"{path}: files differ in their columns from {files[0].name}: {', '.join(different[:5])}")
    return InputFiles(path, fmt, tuple(files), columns[0], types)


def _parquet_schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot be read as Parquet ({first_line(exc)})") from None


def _csv_header(path: Path) -> tuple[str, ...]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({first_line(exc)})") from None
    if not header:
        raise DataError(f"{path}: the file is empty")
    return tuple(header)
