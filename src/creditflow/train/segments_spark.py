"""Segments trained on Spark: one `applyInPandas` over the segment column, each group a task that trains its
segment's model and logs it, as a nested run, to the same tracking server (the way past one machine).

The rows travel through Spark, with their part of the split and their place in it, so that a segment trains on the
same rows in the same order as on one machine. pyspark is imported only by the caller's session.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import TYPE_CHECKING

import pandas as pd

from creditflow.data.dataset import CreditData, Split
from creditflow.train.run import TrainingOutcome
from creditflow.train.segments import Task, outcome_or_reason, run_task, task_name

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SEGMENT, PART, ORDER, ROW, ID, TARGET = "__segment", "__part", "__order", "__row", "__id", "__target"
RESULT_SCHEMA = "segment string, outcome string, reason string"
Trained = list[tuple[TrainingOutcome | None, str]]


def rows_of(tasks: list[Task]) -> pd.DataFrame:
    """Every task's rows: raw columns, target, id, segment, part of the split (train/test) and place in it."""
    frames = []
    for task in tasks:
        for part, X, y in (("train", task.split.X_train, task.split.y_train),
                           ("test", task.split.X_test, task.split.y_test)):
            frames.append(X.assign(**{TARGET: y.to_numpy(), ID: task.data.ids.loc[X.index].astype(str).to_numpy(),
                                      SEGMENT: task.nested.segment, PART: part, ORDER: range(len(X)), ROW: X.index}))
    return pd.concat(frames, ignore_index=True)


def task_of(template: Task, pdf: pd.DataFrame) -> Task:
    """A segment's task rebuilt from its group's rows (the data in file order, the split in its own order)."""
    ds = template.ds
    by_row = pdf.sort_values(ROW).set_index(ROW).rename_axis(None)
    data = replace(template.data, X=by_row[ds.raw_columns], y=by_row[TARGET].astype("int64"), ids=by_row[ID],
                   segments=by_row[SEGMENT], true_probability=None)
    parts = pdf.sort_values([PART, ORDER]).set_index(ROW).rename_axis(None)
    train = parts[PART] == "train"
    X, y = parts[ds.raw_columns], parts[TARGET].astype("int64")
    return replace(template, data=data, split=Split(X[train], X[~train], y[train], y[~train]), threads=1)


def spark_trainer(spark: SparkSession) -> Callable[[list[Task]], Trained]:
    """Train tasks as one `applyInPandas` over their segments on `spark` (for `train_segments`)."""

    def train(tasks: list[Task]) -> Trained:
        if not tasks:
            return []
        empty = CreditData(pd.DataFrame(), pd.Series(dtype="int64"), pd.Series(dtype=object), "")
        templates = {t.nested.segment: replace(t, data=replace(empty, source=t.data.source,
                                                               n_rule_violations=t.data.n_rule_violations),
                                               split=None) for t in tasks}

        def fit_group(pdf: pd.DataFrame) -> pd.DataFrame:
            segment = str(pdf[SEGMENT].iloc[0])
            task = task_of(templates[segment], pdf)
            outcome, reason = outcome_or_reason(lambda: run_task(task), task_name(task))
            return pd.DataFrame({"segment": [segment], "outcome": [json.dumps(asdict(outcome)) if outcome else ""],
                                 "reason": [reason]})

        frame = spark.createDataFrame(rows_of(tasks))
        found = {r["segment"]: r for r in frame.groupBy(SEGMENT).applyInPandas(fit_group, RESULT_SCHEMA).collect()}
        return [(TrainingOutcome(**json.loads(found[t.nested.segment]["outcome"])), "")
                if found[t.nested.segment]["outcome"] else (None, found[t.nested.segment]["reason"]) for t in tasks]

    return train
