"""The batch job: read, check the value rules, quarantine, score on Spark, load the prediction table, publish.

`score_batch(spark, model_uri, input, output)` is the one-call entry. Rows that break the dataset
spec's value rules go to `<output>/quarantine/`; the others are scored with the model's `spark_udf`
(a segmented batch: one pandas UDF holding every model of the deployment, `serving.batch.routed`)
and published as Parquet under `<output>/scored/batch_id=...` and as rows of the SQL prediction
table (`serving.batch.table`), only once the whole batch is complete: the SQL rows commit first,
then the scored partition is published, then the quarantine partition. `on_step` is called at each
of those steps (the hook of the kill tests). pyspark is imported where used (start-up time).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pyarrow.parquet as pq

from creditflow.data.io import BLANK_ID_HEADERS
from creditflow.errors import without_password
from creditflow.registry.client import ModelRef
from creditflow.registry.lease import Step, no_step
from creditflow.serving.batch.columns import (
    applicant_id,
    breaks_a_rule,
    read_input,
    rule_checks,
    score_rows,
    violation_reason,
)
from creditflow.serving.batch.partitions import parquet_rows, partition_dir, publish
from creditflow.serving.batch.plan import BatchPlan, plan_batch
from creditflow.serving.batch.routed import routed_rows
from creditflow.serving.batch.spark import BatchError, job_group, progress, spark_errors
from creditflow.serving.batch.table import QUARANTINE_DIR, SCORED_DIR, PredictionTable, staging_dir

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

logger = logging.getLogger(__name__)

BROKEN = "_breaks_a_rule"
APPLICANT_ID = "_applicant_id"
ROW_GROUP_BYTES = str(16 * 2**20)  # row groups of the scored Parquet: what the table loader holds at once
STATS_KEPT = ("applicant_id",)  # scored Parquet columns with min/max statistics: the one readers filter row groups by
UNIQUE_COLUMNS = ("applicant_id", "probability")  # scored columns with (nearly) every value distinct: no dictionary
POLL_SECONDS = 0.5  # how often the table loader looks for scored files of finished tasks


@dataclass(frozen=True)
class BatchResult:
    batch_id: str
    model_uri: str
    rows_in: int
    rows_scored: int
    rows_quarantined: int
    seconds: float
    scored_path: Path
    quarantine_path: Path
    table_url: str

    @property
    def rows_per_second(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"batch {self.batch_id}: rows in {self.rows_in:,} = scored {self.rows_scored:,} "
                f"+ quarantined {self.rows_quarantined:,} ({self.seconds:.1f} s, {self.rows_per_second:,.0f} rows/s); "
                f"model {self.model_uri}; predictions {self.scored_path} and {without_password(self.table_url)}; "
                f"quarantine {self.quarantine_path}")


def run_batch(spark: SparkSession, plan: BatchPlan, progress_seconds: float = 5.0,
              on_step: Step = no_step) -> BatchResult:
    """Score a planned batch and publish it (SQL table, scored and quarantine Parquet) only when it is complete.

    Steps: "committed" (the SQL rows), then for scored and quarantine in turn "exchanged-<name>" (the
    new partition in place, the old one not yet removed) and "published-<name>".
    """
    start = time.perf_counter()
    with spark_errors("reading the input"):
        raw, id_column = read_input(spark, plan.source), plan.id_column
        rows_in = raw.count()
    spec_id = plan.model.dataset.id_column
    if spec_id and id_column != spec_id and id_column in BLANK_ID_HEADERS:  # Kaggle's blank header
        id_column = spec_id  # (Spark reads it as _c0): the spec's id name
        raw = raw.withColumnRenamed(raw.columns[0], id_column)
    checks = rule_checks(raw, plan.model.dataset, id_column)  # built once: each is a few hundred JVM calls
    checked, reason = raw.withColumn(BROKEN, breaks_a_rule(checks)), violation_reason(checks)
    stage = staging_dir(plan.output, plan.batch_id)
    try:
        logger.info("[batch %s] %s rows from %s; model %s", plan.batch_id, f"{rows_in:,}", plan.source.path,
                    plan.models_label)
        quarantine = partial(_write_quarantine, checked, reason, stage / QUARANTINE_DIR, plan.batch_id)
        scored, quarantined = _score_and_load(spark, checked.withColumnRenamed(id_column, APPLICANT_ID), plan, stage,
                                              rows_in, quarantine, progress_seconds)
        on_step("committed")
        for name in (SCORED_DIR, QUARANTINE_DIR):  # the SQL rows are committed: now the Parquet partitions
            publish(stage / name, partition_dir(plan.output / name, plan.batch_id), stage / f"replaced-{name}",
                    partial(on_step, f"exchanged-{name}"))
            on_step(f"published-{name}")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return BatchResult(plan.batch_id, plan.models_label, rows_in, scored, quarantined, time.perf_counter() - start,
                       partition_dir(plan.output / SCORED_DIR, plan.batch_id),
                       partition_dir(plan.output / QUARANTINE_DIR, plan.batch_id), plan.table_url)


def _write_quarantine(checked: DataFrame, reason: Column, path: Path, batch_id: str, needed: bool) -> int:
    """Rows breaking a value rule, as read, with the rule; a JVM-only pass (no model, no Python).

    Not `needed` when every row was scored: then none broke a rule, and the input is not read again.
    """
    from pyspark.sql import functions as F

    bad = checked.filter(F.col(BROKEN)).withColumn("reason", reason).drop(BROKEN)
    if needed:
        with spark_errors("quarantine"), job_group(checked.sparkSession, f"quarantine-{batch_id}", "quarantine"):
            bad.write.mode("overwrite").parquet(str(path))
    else:  # an empty file with the columns, as Spark writes for no rows: readers see an empty partition
        from pyspark.sql.pandas.types import to_arrow_schema

        path.mkdir(parents=True)
        pq.write_table(to_arrow_schema(bad.schema).empty_table(), path / "part-00000-empty.parquet")
    rows = parquet_rows(path)
    logger.info("[quarantine] %s rows broke the dataset spec's value rules", f"{rows:,}")
    return rows



def _write_scored(spark: SparkSession, checked: DataFrame, plan: BatchPlan, path: Path, expected: int,
                  progress_seconds: float) -> int:
    from pyspark.sql import functions as F

    valid = checked.filter(~F.col(BROKEN))
    keep = [applicant_id(valid, APPLICANT_ID).alias("applicant_id")]
    if plan.segment_column:
        scored = routed_rows(spark, valid, plan, keep)
    else:
        scored = _scored_by(spark, valid, plan.model, keep)
    scored = scored.select(*scored.columns, F.lit(plan.scored_at).alias("scored_at"))
    started = time.perf_counter()
    group = f"score-{plan.batch_id}"
    with (spark_errors("scoring"), job_group(spark, group, f"creditflow batch scoring ({expected} rows)"),
          progress(spark, group, expected, progress_seconds)):
        scored.write.mode("overwrite").options(**scored_parquet_options()).parquet(str(path))
    rows, seconds = parquet_rows(path), time.perf_counter() - started
    logger.info("[score] %s rows scored in %.1f s (%s rows/s)", f"{rows:,}", seconds,
                f"{rows / max(seconds, 1e-9):,.0f}")
    return rows


def _scored_by(spark: SparkSession, rows: DataFrame, model: ModelRef, keep: list[Column]) -> DataFrame:
    """`keep`, the model's answers and its lineage (model name, version, run) on each row."""
    from pyspark.sql import functions as F

    scored = score_rows(spark, rows, model, keep)
    return scored.select(*scored.columns, *[F.lit(v).alias(k) for k, v in model.lineage.items()])


def scored_parquet_options() -> dict[str, str]:
    """Row group size, statistics only where a reader can use them (each value costs the writer a compare),
    and no dictionary for columns of distinct values (the writer hashes ~1 MB of them, then falls back to plain)."""
    return {"parquet.block.size": ROW_GROUP_BYTES, "parquet.size.statistics.enabled": "false",
            "parquet.column.statistics.enabled": "false",
            **{f"parquet.column.statistics.enabled#{c}": "true" for c in STATS_KEPT},
            **{f"parquet.enable.dictionary#{c}": "false" for c in UNIQUE_COLUMNS}}


@dataclass
class _Outcome:
    """Shared by the scoring thread (rows or error, then `finished`) and the loading thread (quarantined)."""

    finished: threading.Event = field(default_factory=threading.Event)
    rows: int = 0
    error: BaseException | None = None
    quarantined: int = 0


def _score_and_load(spark: SparkSession, checked: DataFrame, plan: BatchPlan, stage: Path, rows_in: int,
                    quarantine: Callable[[bool], int], progress_seconds: float) -> tuple[int, int]:
    """Score on Spark and load the SQL table at the same time; return the rows scored and quarantined.

    Spark's output committer (algorithm 2) moves each task's file into the staging directory when the
    task ends, so the loader takes files while later tasks still score. Rows that break a rule are
    written out after scoring, when fewer rows were scored than came in. The SQL transaction commits
    only once both are done and rows in = scored + quarantined; any failure rolls it back.
    """
    path, group = stage / SCORED_DIR, f"score-{plan.batch_id}"
    outcome = _Outcome()

    def score() -> None:
        try:
            outcome.rows = _write_scored(spark, checked, plan, path, rows_in, progress_seconds)
        except BaseException as exc:  # handed to the loading thread, which raises it
            outcome.error = exc
        finally:
            outcome.finished.set()

    def verify(loaded: int) -> None:
        outcome.quarantined = quarantine(outcome.rows < rows_in)
        if outcome.rows + outcome.quarantined != rows_in or loaded != outcome.rows:
            raise BatchError(f"batch {plan.batch_id}: {rows_in} rows in but {outcome.rows} scored, "
                             f"{outcome.quarantined} quarantined and {loaded} loaded into the table; nothing published")

    thread = threading.Thread(target=score, name="batch-scoring", daemon=True)
    thread.start()
    try:
        _load_table(plan, _committed_files(path, outcome), rows_in, progress_seconds, verify)
    finally:
        while thread.is_alive():  # the loader failed: stop scoring too (again, if its job had not started yet)
            spark.sparkContext.cancelJobGroup(group)
            thread.join(POLL_SECONDS)
    return outcome.rows, outcome.quarantined



def _committed_files(path: Path, outcome: _Outcome) -> Iterator[Path]:
    """The scored Parquet files as their tasks commit them, until the Spark job has ended (or failed)."""
    seen: set[Path] = set()
    while True:
        ended = outcome.finished.wait(POLL_SECONDS)
        if outcome.error is not None:
            raise outcome.error
        for file in sorted(path.glob("*.parquet")) if path.is_dir() else []:
            if file not in seen:
                seen.add(file)
                yield file
        if ended:
            return


def _load_table(plan: BatchPlan, files: Iterator[Path], expected: int, progress_seconds: float,
                verify: Callable[[int], None]) -> None:
    """The batch's SQL rows in one transaction, with progress lines."""
    lineage = {**plan.model.lineage, "scored_at": plan.scored_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    table = PredictionTable(plan.table_url)
    started = last = time.perf_counter()

    def report(done: int, _: int) -> None:
        nonlocal last
        if time.perf_counter() - last >= progress_seconds and done < expected:
            last = time.perf_counter()
            logger.info("[table] %s of %s rows loaded, %s rows/s", f"{done:,}", f"{expected:,}",
                        f"{done / (last - started):,.0f}")

    loaded = table.replace_batch(plan.batch_id, files, lineage, report, verify)
    logger.info("[table] batch %s: %s rows in %s (%.1f s from the start of scoring)", plan.batch_id, f"{loaded:,}",
                without_password(table.url), time.perf_counter() - started)



def score_batch(spark: SparkSession, model_uri: str, input_path: str | Path, output: str | Path,
                **options: Any) -> BatchResult:
    """Score a file or directory of applicants with the model into `output` (the one-call library entry).

    Options: batch_id, id_column, table, deployment (plan_batch), progress_seconds and on_step (run_batch).
    """
    every, on_step = options.pop("progress_seconds", 5.0), options.pop("on_step", no_step)
    return run_batch(spark, plan_batch(model_uri, input_path, output, **options), every, on_step)


def log_batch(run_id: str | None, result: BatchResult) -> None:
    """Under `mlflow run`, record the batch on the project's run: which batch, which model, counts, speed."""
    if not run_id:
        return
    with mlflow.start_run(run_id=run_id):
        mlflow.log_params({"batch.id": result.batch_id, "batch.model_uri": result.model_uri,
                           "batch.scored_path": str(result.scored_path),
                           "batch.table": without_password(result.table_url)})
        mlflow.log_metrics({"rows_in": result.rows_in, "rows_scored": result.rows_scored,
                            "rows_quarantined": result.rows_quarantined, "batch_seconds": result.seconds})

