"""The batch job's Spark columns: the value rules as Spark expressions, the batch copy's config overrides."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from creditflow.data.dataset import CreditData
from creditflow.data.rules import rule_violations
from creditflow.serving.batch.columns import (
    BATCH_CONFIG,
    batch_overrides,
    breaks_a_rule,
    rule_checks,
    violation_reason,
)
from creditflow.serving.batch.plan import plan_batch
from creditflow.specs import DatasetSpec
from creditflow.train.run import TrainingOutcome
from tests.conftest import CHAMPION
from tests.serving.batch import applicants


def rule_breakers(spec: DatasetSpec, valid: pd.Series) -> pd.DataFrame:
    """One row per (column, broken rule) plus rows breaking two rules and rows using allowed sentinels."""
    rows = [valid.copy()]
    for raw, col in spec.columns.items():
        values = [np.nan, np.inf, -np.inf, -1.0, 0.5 + (col.min or 0), *col.sentinels, (col.max or 1e6) + 1]
        for value in values:
            row = valid.copy()
            row[raw] = value
            rows.append(row)
    double = valid.copy()
    double[spec.raw_columns[0]], double[spec.raw_columns[-1]] = -5.0, np.nan
    rows.append(double)
    return pd.DataFrame(rows).reset_index(drop=True)


@pytest.mark.spark
def test_spark_rules_match_rule_violations(spark, small_spec: DatasetSpec, small_data: CreditData) -> None:
    frame = pd.concat([rule_breakers(small_spec, small_data.X.iloc[0]), small_data.X.head(200)], ignore_index=True)
    expected = rule_violations(frame, small_spec).tolist()
    df = spark.createDataFrame(frame.assign(Id=np.arange(len(frame))))
    checks = rule_checks(df, small_spec, "Id")
    rows = df.select(violation_reason(checks), breaks_a_rule(checks)).collect()
    assert [r[0] for r in rows] == expected
    assert [r[1] for r in rows] == [r != "" for r in expected]  # the filter agrees with the reasons
    assert sum(r != "" for r in expected) > 40  # the frame really breaks many rules


@pytest.mark.spark
def test_text_cells_are_numbers_missing_markers_or_quarantined(spark, small_spec: DatasetSpec) -> None:
    cells = ["45", " 45 ", "NA", "", "abc", "4.5e1", "-1"]
    rows = [{c: "1" for c in small_spec.raw_columns} | {"Id": str(i), "age": v} for i, v in enumerate(cells)]
    rows.append({c: "1" for c in small_spec.raw_columns} | {"Id": None})
    df = spark.createDataFrame(pd.DataFrame(rows).astype(object))
    got = [r[0] for r in df.select(violation_reason(rule_checks(df, small_spec, "Id"))).collect()]
    assert got == ["", "", "age is missing", "age is missing", "age is not a number", "", "age below 0",
                   "Id is missing"]


def test_the_batch_copy_overrides_only_the_config_keys_the_model_reads(model: TrainingOutcome,
                                                                      small_data: CreditData, tmp_path: Path) -> None:
    """A model logged before a key would not know it: it gets no override for it, and answers as it always did."""
    applicants(small_data, 5).to_parquet(tmp_path / "in.parquet", index=False)
    ref = plan_batch(CHAMPION, tmp_path / "in.parquet", tmp_path / "out").model
    assert batch_overrides(ref) == {**BATCH_CONFIG, "reason_codes_for": "declined"}  # the spec left it unset
    before = replace(ref, config_keys=ref.config_keys - {"reason_codes_as"})
    assert batch_overrides(before) == {"reason_codes_for": "declined"}
    every_row = replace(ref, unset_keys=ref.unset_keys - {"reason_codes_for"})  # a spec asking for all keeps it
    assert batch_overrides(every_row) == BATCH_CONFIG
