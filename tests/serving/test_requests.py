"""The request parser: text columns among the numbers are typed per column, in the order sent; a segmented
deployment's routing column comes back apart from the frame the models read."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from creditflow.model.inputs import float_block
from creditflow.serving.requests import parse_body
from creditflow.serving.typed import Applicants, RoutedRows, float_frame, frame_of, stacked_blocks
from creditflow.specs import DatasetSpec


def labels(columns: list[str]) -> pd.Index:
    """Column labels as the parser gives them: object dtype (pandas 3 would infer its string dtype)."""
    return pd.Index(columns, dtype=object)


def split_body(columns: list[str], rows: list[list]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()


def test_the_segment_column_comes_apart_and_the_frame_is_the_numbers_alone(small_spec: DatasetSpec) -> None:
    numbers = small_spec.raw_columns
    columns = [*numbers[:3], "Region", *numbers[3:]]
    data = [[float(i) + 0.5 for i in range(len(numbers))], [None] * len(numbers)]
    rows = [[*r[:3], region, *r[3:]] for r, region in zip(data, ["R07", None], strict=True)]

    parsed = parse_body(split_body(columns, rows), "application/json", small_spec, 10, segment="Region")

    assert isinstance(parsed, RoutedRows) and len(parsed) == 2 and parsed.segments == ["R07", None]
    plain = parse_body(split_body(numbers, data), "application/json", small_spec, 10)
    pd.testing.assert_frame_equal(parsed.frame, plain.frame)
    assert parsed.frame.columns.tolist() == numbers and parsed.frame.dtypes.eq(np.float64).all()
    assert parsed.frame._mgr.nblocks == 1  # one float block: what a single-model request gives the model
    assert parsed.frame.loc[0, numbers[4]] == 4.5 and parsed.frame.loc[1, numbers].isna().all()


def test_a_categorical_column_keeps_its_place_beside_the_segment_column(housing_spec: DatasetSpec) -> None:
    numbers = [c for c in housing_spec.raw_columns if c != "Housing"]
    columns = ["Region", *numbers[:2], "Housing", *numbers[2:]]
    rows = [["R02", *[1.0] * 2, "rent", *[2.0] * (len(numbers) - 2)],
            [None, *[None] * 2, None, *[3.0] * (len(numbers) - 2)]]

    parsed = parse_body(split_body(columns, rows), "application/json", housing_spec, 10, segment="Region")

    expected = pd.DataFrame([r[1:] for r in rows], columns=labels(columns[1:]), dtype=object).astype(
        dict.fromkeys(numbers, "float64"))
    pd.testing.assert_frame_equal(parsed.frame, expected)
    assert parsed.segments == ["R02", None] and parsed.frame["Housing"].tolist() == ["rent", None]


def test_a_csv_segment_cell_left_empty_is_missing(small_spec: DatasetSpec) -> None:
    numbers = small_spec.raw_columns
    text = "\n".join([",".join([*numbers, "Region"]), ",".join(["1"] * len(numbers) + ["R03"]),
                      ",".join(["2"] * len(numbers) + [" "])])

    parsed = parse_body(text.encode(), "text/csv", small_spec, 10, segment="Region")

    assert parsed.segments == ["R03", None] and parsed.frame.columns.tolist() == numbers
    assert parsed.frame.iloc[:, 0].tolist() == [1.0, 2.0]


def test_text_columns_between_numbers_give_the_frame_pandas_public_constructors_give(housing_spec: DatasetSpec) -> None:
    numbers = [c for c in housing_spec.raw_columns if c != "Housing"]
    columns = [numbers[0], "Housing", *numbers[1:]]
    rows = [[0.5, "own", *[1.0] * (len(numbers) - 1)], [None, None, *[2.5] * (len(numbers) - 1)],
            [7.0, "castle", *[None] * (len(numbers) - 1)]]

    frame = parse_body(split_body(columns, rows), "application/json", housing_spec, 10)

    expected = pd.DataFrame(rows, columns=labels(columns), dtype=object).astype(dict.fromkeys(numbers, "float64"))
    pd.testing.assert_frame_equal(frame, expected)
    assert frame["Housing"].tolist() == ["own", None, "castle"] and frame._mgr.nblocks == 2  # floats in one block


def test_parsed_requests_with_text_columns_stack_into_the_frame_pandas_concat_gives(housing_spec: DatasetSpec) -> None:
    numbers = [c for c in housing_spec.raw_columns if c != "Housing"]
    columns = [numbers[0], "Housing", *numbers[1:]]
    rows = [[0.5, "own", *[1.0] * (len(numbers) - 1)], [None, None, *[2.5] * (len(numbers) - 1)],
            [7.0, "castle", *[None] * (len(numbers) - 1)]]
    parsed = [parse_body(split_body(columns, [row]), "application/json", housing_spec, 10) for row in rows]

    stacked = stacked_blocks(parsed)

    pd.testing.assert_frame_equal(stacked, pd.concat(parsed, ignore_index=True))
    assert stacked["Housing"].tolist() == ["own", None, "castle"] and stacked.loc[2, numbers[0]] == 7.0
    other_order = parse_body(split_body(housing_spec.raw_columns, [[1.0 if c != "Housing" else "rent"
                                                                    for c in housing_spec.raw_columns]]),
                             "application/json", housing_spec, 10)
    assert stacked_blocks([parsed[0], other_order]) is None  # the same columns in other places: pandas' concat


def test_a_float_frame_is_the_frame_the_public_constructor_gives_of_the_same_block(small_spec: DatasetSpec) -> None:
    block = np.array([[0.5, np.nan, 3.0], [1.0, 2.0, -4.25]])
    columns = labels(small_spec.raw_columns[:3])

    frame = float_frame(block, columns)

    pd.testing.assert_frame_equal(frame, pd.DataFrame(block, columns=columns), check_exact=True)
    assert frame._mgr.nblocks == 1 and frame.columns is columns and frame.index.equals(pd.RangeIndex(2))
    assert frame.to_numpy().tolist()[1] == [1.0, 2.0, -4.25]


def test_a_float_frames_block_is_its_numbers_and_other_frames_have_none(housing_spec: DatasetSpec) -> None:
    block = np.array([[0.5, np.nan, 3.0], [1.0, 2.0, -4.25]])
    frame = float_frame(block, labels(["a", "b", "c"]))

    assert float_block(frame) is not None and np.shares_memory(float_block(frame), block)
    np.testing.assert_array_equal(float_block(frame), frame.to_numpy())
    reordered = frame[["c", "a", "b"]]  # a new block of its own, in its column order
    np.testing.assert_array_equal(float_block(reordered), reordered.to_numpy())
    assert float_block(pd.DataFrame({"a": [1.0], "b": [2]})) is None  # a float and an integer block
    assert float_block(pd.DataFrame({"a": ["x"], "b": [2.0]})) is None
    mixed = parse_body(split_body(housing_spec.raw_columns, [[1.0 if c != "Housing" else "own"
                                                              for c in housing_spec.raw_columns]]),
                       "application/json", housing_spec, 10)
    assert float_block(mixed) is None


def test_a_parsed_frame_has_object_labels_shared_by_requests_alike(small_spec: DatasetSpec) -> None:
    body = split_body(small_spec.raw_columns, [[1.0] * len(small_spec.raw_columns)])

    first = parse_body(body, "application/json", small_spec, 10)
    second = parse_body(body, "application/json", small_spec, 10)

    assert first.columns.dtype == object and first.columns is second.columns  # the coalescer groups requests by it
    assert first.columns.tolist() == small_spec.raw_columns


def test_numbers_are_typed_in_the_models_order_an_absent_nullable_column_missing(small_spec: DatasetSpec) -> None:
    from creditflow.model.inputs import applicant_matrix

    raw = small_spec.raw_columns
    absent = next(c for c in raw if small_spec.columns[c].nullable)
    sent = [c for c in reversed(raw) if c != absent]
    rows = [[float(raw.index(c)) + 0.5 for c in sent], [None] * len(sent)]

    parsed = parse_body(split_body(sent, rows), "application/json", small_spec, 10)

    assert isinstance(parsed, Applicants) and len(parsed) == 2 and parsed.columns.tolist() == raw
    expected = pd.DataFrame(rows, columns=labels(sent)).reindex(columns=labels(raw)).astype("float64")
    np.testing.assert_array_equal(parsed.matrix, applicant_matrix(expected, small_spec))  # what the model reads
    assert np.isnan(parsed.matrix[:, raw.index(absent)]).all() and parsed.matrix[0, 1] == 1.5
    pd.testing.assert_frame_equal(parsed.frame, expected)
    assert float_block(parsed.frame) is not None and frame_of(parsed.frame) is not None
    in_order = parse_body(split_body(raw, [[1.0] * len(raw)]), "application/json", small_spec, 10)
    assert in_order.columns is parsed.columns  # one Index per spec: requests in any column order are scored together


def test_numbers_for_a_spec_with_categorical_columns_stay_a_frame(housing_spec: DatasetSpec) -> None:
    numbers = [c for c in housing_spec.raw_columns if c != "Housing"]  # Housing, nullable, left out
    parsed = parse_body(split_body(numbers, [[1.0] * len(numbers)]), "application/json", housing_spec, 10)
    assert isinstance(parsed, pd.DataFrame) and parsed.columns.tolist() == housing_spec.raw_columns
    assert np.isnan(parsed["Housing"]).all()
