"""Scoring requests read at the edge: a raw `/invocations` body becomes typed rows (`serving.typed`: the model's
raw matrix for a spec without categorical columns, else a typed frame), or a `BadRequest`.

`parse_body` reads JSON (`dataframe_split`/`dataframe_records`) or CSV, checking its shape: content
type, UTF-8, JSON syntax, format keys, duplicated, unknown and missing columns, value types (no
booleans, text or nested objects in numeric columns), row count. `creditflow serve` uses it instead
of MLflow's parser, which repeats the input in its errors and silently turns `true` into 1.0.
Messages name columns and rows (0-based positions); they never repeat a submitted value.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from creditflow.errors import BadRequest
from creditflow.model.inputs import MAX_NAME, shown_names
from creditflow.serving.typed import Applicants, Parsed, RoutedRows, blocks_frame, column_index, float_frame
from creditflow.specs import DatasetSpec

JSON_TYPES = ("application/json",)
CSV_TYPES = ("text/csv",)
FORMATS = ("dataframe_split", "dataframe_records")
PLAIN_NUMBERS = {float, type(None)}  # the JSON values a numeric cell holds, ints in range apart (`_numeric_json`)
PLAIN_TEXTS = {str, type(None)}  # the JSON values a categorical (or segment) cell holds


def _kind(value: Any) -> str:
    """What a JSON value is, without saying what it holds."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int):
        return "a number out of range"
    return type(value).__name__


@lru_cache(maxsize=32)  # a client sends the same header every time; a refused one raises, which is not cached
def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header; 415 for anything but UTF-8 JSON or CSV."""
    if not content_type:
        raise BadRequest("missing Content-Type: send application/json or text/csv", 415)
    mime, *params = [part.strip().lower() for part in content_type.split(";")]
    if mime not in JSON_TYPES + CSV_TYPES:
        raise BadRequest(f"unsupported Content-Type '{mime[:MAX_NAME]}': send application/json or text/csv", 415)
    for param in params:
        key, _, value = param.partition("=")
        if key.strip() != "charset" or value.strip().strip('"') not in ("utf-8", "utf8"):
            raise BadRequest("unsupported Content-Type parameter: only charset=utf-8 is accepted", 415)
    return mime


def parse_body(body: bytes, content_type: str | None, spec: DatasetSpec, max_rows: int, segment: str = "") -> Parsed:
    """A raw scoring body as the model's typed rows (`Applicants` for a spec without categorical columns, else a
    typed frame), or BadRequest naming the problem.

    `segment`: a segmented deployment's routing column, required in addition (text or null): the answer is then
    `RoutedRows`, the frame and each row's segment value apart.
    """
    mime = media_type(content_type)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the body is not UTF-8 text") from None
    if not text or text.isspace():
        raise BadRequest("the body is empty: send applicants as dataframe_split, dataframe_records or CSV")
    csv_text = mime in CSV_TYPES
    columns, rows = _csv_rows(text) if csv_text else _json_rows(text)
    return _typed(columns, rows, spec, max_rows, segment, csv_text)


def parse_records(records: Any, spec: DatasetSpec, max_rows: int, segment: str = "") -> Parsed:
    """Records already decoded (a by-id request's stored features) typed and checked as `parse_body` types a
    `dataframe_records` body, without writing them as JSON to read them again."""
    return _typed(*_record_rows(records), spec, max_rows, segment, csv_text=False)


def _typed(columns: list[str], rows: list[list[Any]], spec: DatasetSpec, max_rows: int, segment: str,
           csv_text: bool) -> Parsed:
    """Rows of a request, checked (count, columns, value types) and typed (`_frame`)."""
    if not rows:
        raise BadRequest("the request holds no applicants")
    if len(rows) > max_rows:
        raise BadRequest(f"too many applicants in one request: {len(rows)} (at most {max_rows})", 413)
    layout = _layout(tuple(columns), _Same(spec), segment)
    if layout.problem:
        raise BadRequest(layout.problem)
    _check_values(layout, rows, text_cells=csv_text)
    return _frame(layout, rows, csv_text)


class _Same:
    """A spec as a cache key by identity (specs hold dicts: no hash); the key keeps it alive, so its id is its own."""

    __slots__ = ("spec",)

    def __init__(self, spec: DatasetSpec):
        self.spec = spec

    def __hash__(self) -> int:
        return id(self.spec)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.spec is self.spec


@dataclass(frozen=True)
class Layout:
    """What a request's column list is for a spec, worked out once per column list: what is wrong with it, where its
    numbers and texts are, and the labels of the frame it makes."""

    columns: tuple[str, ...]
    problem: str  # why the columns do not fit the spec ("" when they do)
    numbers: list[int]  # the request's positions of numeric columns
    texts: list[int]  # ... of text columns (categorical, and the segment column)
    labels: pd.Index  # the frame's columns: the request's without the segment column (one Index per list: `Coalescer`)
    segment_at: int  # the segment column's position (-1: no segment column)
    categories: list[int]  # the request's positions of categorical columns (the texts but the segment column)
    raw_labels: pd.Index  # the spec's raw columns (one Index per spec: a numeric request's frame, in the model's order)
    raw_taken: np.ndarray  # the raw columns (positions) the request gives; the others are absent (nullable: missing)
    raw_from: np.ndarray  # ... and the request positions they are read from
    in_raw_order: bool  # the request gives the spec's raw columns in its order, nothing else
    numeric_spec: bool  # the spec has no categorical column: numeric requests are typed as `Applicants`

    def frame_places(self, positions: list[int]) -> list[int]:
        """Where request columns (positions) sit in the frame: after the segment column, one place earlier."""
        return [j - (0 <= self.segment_at < j) for j in positions]


@lru_cache(maxsize=64)
def _layout(columns: tuple[str, ...], spec: _Same, segment: str) -> Layout:
    text = [c == segment or c in spec.spec.columns and spec.spec.columns[c].group == "categorical" for c in columns]
    at = columns.index(segment) if segment in columns else -1
    texts = [j for j, t in enumerate(text) if t]
    raw = spec.spec.raw_columns
    taken = [i for i, c in enumerate(raw) if c in columns]
    return Layout(columns, _column_problem(list(columns), spec.spec, segment), [j for j, t in enumerate(text) if not t],
                  texts, column_index(tuple(c for c in columns if c != segment)), at, [j for j in texts if j != at],
                  column_index(tuple(raw)), np.asarray(taken, dtype=np.intp),
                  np.asarray([columns.index(raw[i]) for i in taken], dtype=np.intp), list(columns) == raw,
                  all(c.group != "categorical" for c in spec.spec.columns.values()))


def _frame(layout: Layout, rows: list[list[Any]], csv_text: bool) -> Parsed:
    """Checked rows as the model's raw matrix (`Applicants`: numbers only, a spec without categorical columns) or a
    frame: numeric columns float64 (None and empty cells NaN), categorical text or None; the segment column's values
    apart (`RoutedRows`)."""
    if csv_text:
        rows = [[None if cell.strip() == "" else cell for cell in row] for row in rows]
    kept = layout.numbers
    if len(kept) == len(layout.labels):  # numbers only (and the segment column): in the model's order
        block = _raw_block(layout, rows)
        if layout.numeric_spec and layout.segment_at < 0:
            return Applicants(block, layout.raw_labels)
        frame = float_frame(block, layout.raw_labels)
    else:
        block = np.array([[row[j] for j in kept] for row in rows], dtype="float64").reshape(len(rows), len(kept))
        frame = _mixed_frame(layout, block, rows)
    if layout.segment_at < 0:
        return frame
    return RoutedRows(frame, [row[layout.segment_at] for row in rows])


def _raw_block(layout: Layout, rows: list[list[Any]]) -> np.ndarray:
    """Numeric rows as the model's raw matrix: the spec's columns in its order, an absent (nullable) column missing.
    `model.inputs.applicant_matrix` then reads the frame's block as it is."""
    given = np.array(rows, dtype="float64" if layout.segment_at < 0 else object).reshape(len(rows), -1)
    if layout.in_raw_order:
        return given
    block = np.full((len(rows), len(layout.raw_labels)), np.nan)
    block[:, layout.raw_taken] = given[:, layout.raw_from]
    return block


def _mixed_frame(layout: Layout, block: np.ndarray, rows: list[list[Any]]) -> pd.DataFrame:
    """Numbers (the float block's columns) and texts (object, None for missing) in the request's column order: one
    float block and one object block, as pandas' constructors consolidate them (`blocks_frame`)."""
    cells = np.empty((len(rows), len(layout.categories)), dtype=object)
    cells[:] = [[row[j] for j in layout.categories] for row in rows]
    return blocks_frame([(block, layout.frame_places(layout.numbers)), (cells, layout.frame_places(layout.categories))],
                        layout.labels)


def _no_constants(name: str) -> None:
    """`NaN` is read as null, a missing value (MLflow writes it so in a model's serving_input_example.json);
    `Infinity` and `-Infinity` are refused."""
    if name == "NaN":
        return None
    raise BadRequest(f"the body is not valid JSON: {name} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        keys = [k for k, _ in pairs]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        raise BadRequest(f"a JSON object gives the same key twice: {shown_names(dupes)}")
    return out


def _json_rows(text: str) -> tuple[list[str], list[list[Any]]]:
    try:
        doc = _decoder().decode(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise BadRequest("the body is not valid JSON (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"the JSON body must be an object with one of {', '.join(FORMATS)}; got {_kind(doc)}")
    given = [k for k in doc if k in FORMATS]
    other = [k for k in doc if k not in FORMATS]
    if other:
        tf_style = {"instances", "inputs"} & set(other)
        hint = " (this model takes dataframe_split or dataframe_records)" if tf_style else ""
        raise BadRequest(f"unknown top-level field(s): {shown_names(other)}{hint}")
    if len(given) != 1:
        raise BadRequest(f"the JSON body must hold exactly one of {', '.join(FORMATS)}")
    if given[0] == "dataframe_split":
        return _split_rows(doc["dataframe_split"])
    return _record_rows(doc["dataframe_records"])


@lru_cache(maxsize=1)
def _decoder() -> json.JSONDecoder:
    """The strict decoder, built once (`json.loads` with hooks builds one per call)."""
    return json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constants)


def _split_rows(split: Any) -> tuple[list[str], list[list[Any]]]:
    if not isinstance(split, dict):
        raise BadRequest(f"dataframe_split must be an object with 'columns' and 'data'; got {_kind(split)}")
    extra = [k for k in split if k not in ("columns", "data", "index")]
    if extra:
        raise BadRequest(f"dataframe_split has unknown field(s): {shown_names(extra)}")
    columns, data = split.get("columns"), split.get("data")
    if not isinstance(columns, list) or not all(map(isinstance, columns, repeat(str))):
        raise BadRequest("dataframe_split needs 'columns': a list of column names")
    if not isinstance(data, list):
        raise BadRequest("dataframe_split needs 'data': a list of rows")
    for i, row in enumerate(data):
        if not isinstance(row, list):
            raise BadRequest(f"dataframe_split row {i} is {_kind(row)}, not a list of values")
        if len(row) != len(columns):
            raise BadRequest(f"dataframe_split row {i} has {len(row)} values for {len(columns)} columns")
    return columns, data


def _record_rows(records: Any) -> tuple[list[str], list[list[Any]]]:
    if not isinstance(records, list):
        raise BadRequest(f"dataframe_records must be a list of objects; got {_kind(records)}")
    columns: list[str] = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise BadRequest(f"dataframe_records item {i} is {_kind(record)}, not an object")
        if i == 0:
            columns = list(record)
        elif record.keys() != set(columns):
            raise BadRequest(f"dataframe_records item {i} has different columns from item 0")
    return columns, [[record[c] for c in columns] for record in records]


def _csv_rows(text: str) -> tuple[list[str], list[list[Any]]]:
    try:
        table = list(csv.reader(io.StringIO(text), strict=True))
    except csv.Error as exc:
        raise BadRequest(f"the body is not valid CSV ({str(exc).split(':')[0]})") from None
    table = [row for row in table if row]
    header, rows = table[0], table[1:]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise BadRequest(f"CSV row {i} has {len(row)} fields for {len(header)} columns")
    return header, rows


def _column_problem(columns: list[str], spec: DatasetSpec, segment: str = "") -> str:
    """What is wrong with a request's column list ("" when nothing)."""
    if len(set(columns)) != len(columns):
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        return f"column(s) given twice: {shown_names(dupes)}"
    if segment and segment not in columns:
        return (f"missing the segment column {segment[:MAX_NAME]}: this deployment routes each applicant "
                "by it (null sends the applicant to the global model)")
    unknown = [c for c in columns if c not in spec.columns and c != segment]
    if unknown:
        return f"unknown column(s): {shown_names(unknown)} (the model takes the raw applicant columns)"
    missing = [c for c, col in spec.columns.items() if c not in columns and not col.nullable]
    if missing:
        return f"missing column(s): {shown_names(missing)}"
    return ""


def _check_values(layout: Layout, rows: list[list[Any]], text_cells: bool) -> None:
    numbers, texts, names = layout.numbers, layout.texts, layout.columns
    if not text_cells and (_plain_numbers(rows) if not texts else _plain_json(rows, numbers, texts)):
        return
    for i, row in enumerate(rows):
        for j in numbers:
            value = row[j]
            ok = _numeric_cell(value) if text_cells else _numeric_json(value)
            if not ok:
                shown = "text" if text_cells else _kind(value)
                raise BadRequest(f"column {names[j][:MAX_NAME]} must hold numbers or null; row {i} holds {shown}")
        for j in texts:
            if type(row[j]) not in PLAIN_TEXTS:
                raise BadRequest(f"column {names[j][:MAX_NAME]} must hold text or null; row {i} holds "
                                 f"{_kind(row[j])}")


def _plain_numbers(rows: list[list[Any]]) -> bool:
    """`_plain_json` of rows of numbers only."""
    return all(set(map(type, row)) <= PLAIN_NUMBERS for row in rows)


def _plain_json(rows: list[list[Any]], numbers: list[int], texts: list[int]) -> bool:
    """JSON rows of floats or nulls and texts or nulls where each belongs (the usual request), at a glance; anything
    else gets the cell-by-cell checks."""
    return all({type(row[j]) for j in numbers} <= PLAIN_NUMBERS and {type(row[j]) for j in texts} <= PLAIN_TEXTS
               for row in rows)


def _numeric_json(value: Any) -> bool:
    if type(value) is int:  # not bool
        return abs(value) < 2**63  # larger integers overflow pandas' parser
    return type(value) in PLAIN_NUMBERS


def _numeric_cell(value: str) -> bool:
    if value.strip() == "":
        return True
    try:
        return not math.isnan(float(value))
    except ValueError:
        return False


