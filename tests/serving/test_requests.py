"""The request parser: a body with text columns among the numbers is typed per column, in the order sent."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from creditflow.serving.requests import parse_body
from creditflow.specs import DatasetSpec


def test_a_text_column_among_numbers_keeps_its_place_and_every_cell(small_spec: DatasetSpec) -> None:
    numbers = small_spec.raw_columns
    columns = [*numbers[:3], "Region", *numbers[3:]]
    data = [[float(i) + 0.5 for i in range(len(numbers))], [None] * len(numbers)]
    rows = [[*r[:3], region, *r[3:]] for r, region in zip(data, ["R07", None], strict=True)]
    body = json.dumps({"dataframe_split": {"columns": columns, "data": rows}}).encode()

    frame = parse_body(body, "application/json", small_spec, 10, segment="Region")

    expected = pd.DataFrame(rows, columns=columns, dtype=object).astype(dict.fromkeys(numbers, "float64"))
    pd.testing.assert_frame_equal(frame, expected)
    assert frame["Region"].tolist() == ["R07", None] and frame[numbers].dtypes.eq(np.float64).all()
    assert frame.loc[0, numbers[4]] == 4.5 and frame.loc[1, numbers].isna().all()
