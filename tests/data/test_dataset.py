"""Loading and validation: the real file's format, every user mistake as one line, value rules."""

from pathlib import Path

import pandas as pd
import pytest

from creditflow.data.dataset import coerce_columns, load_dataset, read_applicants, records_frame, split_data
from creditflow.data.io import read_table
from creditflow.data.synthetic import generate_credit_data
from creditflow.errors import DataError, SpecError
from creditflow.specs import DatasetSpec


@pytest.fixture(scope="module")
def raw_frame() -> pd.DataFrame:
    return generate_credit_data(2_000, seed=3).frame


def _csv(tmp_path: Path, frame: pd.DataFrame) -> Path:
    """Write like cs-training.csv (blank first header cell, NA for missing), whatever columns remain."""
    path = tmp_path / "cs-training.csv"
    frame.rename(columns={"Id": ""}).to_csv(path, index=False, na_rep="NA")
    return path


def test_reads_the_kaggle_layout(tmp_path: Path, raw_frame: pd.DataFrame, small_spec: DatasetSpec) -> None:
    data = load_dataset(small_spec, _csv(tmp_path, raw_frame))
    assert list(data.X.columns) == small_spec.raw_columns
    assert data.ids.tolist() == raw_frame["Id"].tolist()
    assert data.y.tolist() == raw_frame["SeriousDlqin2yrs"].tolist()
    assert data.X["MonthlyIncome"].isna().sum() == raw_frame["MonthlyIncome"].isna().sum()
    assert data.source.endswith("cs-training.csv")


def test_parquet_and_directories_read_the_same(tmp_path: Path, raw_frame: pd.DataFrame) -> None:
    raw_frame.to_parquet(tmp_path / "a.parquet")
    (tmp_path / "csvs").mkdir()
    raw_frame.iloc[:1000].to_csv(tmp_path / "csvs" / "1.csv", index=False)
    raw_frame.iloc[1000:].to_csv(tmp_path / "csvs" / "2.csv", index=False)
    assert len(read_table(tmp_path / "a.parquet")) == len(read_table(tmp_path / "csvs")) == 2_000


def test_generated_default_is_deterministic(small_spec: DatasetSpec) -> None:
    a, b = load_dataset(small_spec), load_dataset(small_spec)
    pd.testing.assert_frame_equal(a.X, b.X)
    assert a.true_probability is not None and len(a.true_probability) == len(a.X)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["age"]), r"missing column\(s\): age"),
        (lambda f: f.assign(DebtRatio=f["DebtRatio"].astype(object).where(f.index != 5, "lots")),
         r"column 'DebtRatio' has 1 non-numeric value"),
        (lambda f: f.assign(SeriousDlqin2yrs=f["SeriousDlqin2yrs"] * 2), r"must be binary with positive value 1"),
        (lambda f: f.assign(SeriousDlqin2yrs=0), r"must be binary"),
        (lambda f: f.iloc[:0], r"header but no rows"),
    ],
    ids=["missing-column", "non-numeric", "target-not-0-1", "one-class", "no-rows"],
)
def test_bad_files_stop_with_one_line(tmp_path, raw_frame, small_spec, mutate, message) -> None:
    with pytest.raises(DataError, match=message) as info:
        load_dataset(small_spec, _csv(tmp_path, mutate(raw_frame.copy())))
    assert "\n" not in str(info.value)


def test_empty_and_missing_files(tmp_path: Path, small_spec: DatasetSpec) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty.csv: the file is empty"):
        load_dataset(small_spec, tmp_path / "empty.csv")
    with pytest.raises(DataError, match="nowhere.csv: no such file"):
        load_dataset(small_spec, tmp_path / "nowhere.csv")
    (tmp_path / "bin.parquet").write_bytes(b"\x00\x01 not parquet")
    with pytest.raises(DataError, match="bin.parquet: cannot be read"):
        load_dataset(small_spec, tmp_path / "bin.parquet")


def test_rule_breaking_rows_are_counted_not_trained_on(tmp_path, raw_frame, small_spec) -> None:
    frame = raw_frame.copy()
    frame.loc[:9, "age"] = -1
    data = load_dataset(small_spec, _csv(tmp_path, frame))
    assert data.n_rule_violations == 10
    assert len(data.X) == len(frame) - 10 and (data.X["age"] >= 0).all()


def test_split_is_stratified_and_fixed(small_data) -> None:
    a, b = split_data(small_data, 0.2, 7), split_data(small_data, 0.2, 7)
    assert a.X_test.index.equals(b.X_test.index)
    assert abs(a.y_test.mean() - a.y_train.mean()) < 0.005


def test_a_spec_without_an_id_column_identifies_training_rows_by_number(tmp_path: Path, raw_frame: pd.DataFrame,
                                                                        small_spec: DatasetSpec) -> None:
    """Many public credit files have no id column: training reads them as they are; reading by id says why not."""
    spec = small_spec.model_copy(update={"id_column": None})
    path = tmp_path / "no-ids.csv"
    raw_frame.drop(columns=["Id"]).assign(age=raw_frame.age.where(raw_frame.index != 5, -1.0)).to_csv(path, index=False)
    data = load_dataset(spec, path)
    assert data.n_rule_violations == 1 and len(data.ids) == len(raw_frame) - 1
    assert data.ids.tolist()[:6] == ["0", "1", "2", "3", "4", "6"]  # the file's row numbers: row 5 broke a rule
    assert data.y.tolist() == raw_frame.SeriousDlqin2yrs.drop(index=5).tolist()
    assert list(read_applicants(path, spec).columns) == spec.raw_columns
    with pytest.raises(SpecError, match=f"dataset spec '{spec.name}' names no id_column: reading applicants by id"):
        read_applicants(path, spec, ids=True)


def test_records_are_typed_as_coerce_columns_types_their_frame(small_spec: DatasetSpec, housing_spec: DatasetSpec,
                                                               raw_frame: pd.DataFrame) -> None:
    """The stream's fast builder: same columns, dtypes and values, and the same one-line errors."""
    numbers = raw_frame[small_spec.raw_columns].head(4)
    records = numbers.astype(object).where(numbers.notna(), None).to_dict("records")
    records[0]["age"] = 41  # an int, as JSON gives whole numbers
    del records[1]["MonthlyIncome"]  # absent: missing
    records[2]["DebtRatio"] = float("nan")
    with_housing = [{**r, "Housing": h} for r, h in zip(records, ["own", None, 3, "rent"], strict=True)]
    texts = [{**records[0], "age": "41"}, {**records[1], "NumberOfDependents": True}]
    cases = [(small_spec, records), (small_spec, []), (housing_spec, with_housing), (small_spec, texts)]
    for spec, rows in cases:
        fast = records_frame(rows, spec, origin="stream")
        pd.testing.assert_frame_equal(fast, coerce_columns(pd.DataFrame(rows, columns=spec.raw_columns), spec))
    assert records_frame(with_housing, housing_spec)["Housing"].tolist() == ["own", None, "3", "rent"]
    with pytest.raises(DataError, match="stream: column 'age' has 1 non-numeric value"):
        records_frame([{**records[0], "age": "old"}], small_spec, origin="stream")
