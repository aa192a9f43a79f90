"""Batch scoring on Spark with `mlflow.pyfunc.spark_udf`: the same pyfunc the online endpoint serves.

`score_batch(spark, model_uri, input, output)` reads a CSV or Parquet file (or a directory of them),
sends rows that break the dataset spec's value rules to `<output>/quarantine/`, scores the others
with the model's `spark_udf`, and publishes the batch: Parquet under `<output>/scored/batch_id=...`
and the SQL prediction table (see `creditflow.predictions`). Everything a user can get wrong
(unknown model, missing columns, unreadable input) is found by `plan_batch` before Spark starts.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.models.model import MLMODEL_FILE_NAME
from pydantic import BaseModel, ConfigDict, Field

from creditflow.errors import CreditflowError, DataError, TrackingError
from creditflow.predictions import (
    QUARANTINE_DIR,
    SCORED_DIR,
    PredictionTable,
    check_scored_layout,
    default_table_url,
    parquet_rows,
    partition_dir,
    publish,
    safe_url,
    staging_dir,
)
from creditflow.specs import DatasetSpec, load_config, spec_from_config

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

BATCH_CONFIG = {  # model-config overrides for the Spark workers (see batch_copy), for models that read the key
    "reason_codes_as": "json",  # spark_udf converts lists row by row, text not
    "reason_codes_as_key": True,  # an integer crosses cheaper still: Spark spells out the same JSON text
    "decision_as": "index",  # numbers cross into Spark far cheaper than text: mapped back to the model's own labels
    "freeze_gc_after_load": True,  # Spark workers live long and load the model again in every task
}
BROKEN = "_breaks_a_rule"
APPLICANT_ID = "_applicant_id"
NA_TOKENS = ("", "na", "n/a", "nan", "null", "none", "<na>", "#n/a")  # missing markers in CSV files
BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
UNNAMED_FIRST = ("", "Unnamed: 0")  # how Kaggle's cs-training.csv names its id column
DEMO_SAMPLE = Path("data") / "demo-applicants.parquet"  # the demo's new applicants (score_sample)
ROW_GROUP_BYTES = str(16 * 2**20)  # row groups of the scored Parquet: what the table loader holds at once
STATS_KEPT = ("applicant_id",)  # scored Parquet columns with min/max statistics: the one readers filter row groups by
UNIQUE_COLUMNS = ("applicant_id", "probability")  # scored columns with (nearly) every value distinct: no dictionary
HEARTBEAT_SECONDS = 30.0  # a progress line at least this often, even when no task finished
POLL_SECONDS = 0.5  # how often the table loader looks for scored files of finished tasks
TASK_STOP_SECONDS = 30.0  # at most this long for a failed job's tasks to stop (Python workers get 2 s to die)


class BatchError(CreditflowError):
    """A batch job that cannot run as asked (bad batch id, failed scoring, inconsistent counts)."""


class SparkConfig(BaseModel):
    """The Spark side of the job (serving/batch/job.yaml)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    master: str = "local[*]"
    arrow_batch_rows: int = Field(100_000, gt=0)
    max_partition_bytes: str = "128m"
    splits_per_core: int = Field(2, gt=0)
    driver_memory: str = "1g"
    python: str = ""
    progress_seconds: float = Field(5.0, gt=0)
    conf: dict[str, str] = {}

    def spark_conf(self) -> dict[str, str]:
        """Every Spark setting the session is built with."""
        return {
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",  # not the deprecated INT96
            "spark.sql.execution.arrow.pyspark.enabled": "true",
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(self.arrow_batch_rows),
            # batches are bounded by rows; at Int.MaxValue Spark stops measuring the batch after every row
            "spark.sql.execution.arrow.maxBytesPerBatch": str(2**31 - 1),
            # Spark 4 hands pandas UDFs the Parquet reader's 4,096-row batches unless this is off
            "spark.sql.execution.arrow.pythonUDF.columnarInput.enabled": "false",
            "spark.sql.files.maxPartitionBytes": self.max_partition_bytes,
            "spark.driver.memory": self.driver_memory,
            # the whole heap taken and touched at start: the JVM's footprint is set here, not by the input;
            # the throughput collector: a batch job has no pause target, and G1's bookkeeping costs CPU
            "spark.driver.extraJavaOptions": f"-Xms{self.driver_memory} -XX:+AlwaysPreTouch -XX:+UseParallelGC",
            # each task's output moves into place when the task ends: the table loader takes it from there
            "spark.hadoop.mapreduce.fileoutputcommitter.algorithm.version": "2",
            **self.conf,
        }


def load_batch_config(path: str | Path | None, **overrides: Any) -> SparkConfig:
    """The job's YAML config (if any) with command-line overrides; one-line errors."""
    return load_config(SparkConfig, path, "batch config", **overrides)


def start_spark(config: SparkConfig, app_name: str = "creditflow-batch") -> SparkSession:
    """A Spark session whose Python workers run this interpreter (so they import creditflow and mlflow)."""
    import os
    import warnings

    from pyspark.errors import PySparkRuntimeError
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = config.python or sys.executable  # PySpark reads it from the environment only
    # printed four times per job and not the user's to act on: the tests run this pandas (3) through Spark
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    builder = SparkSession.builder.master(config.master).appName(app_name)
    for key, value in config.spark_conf().items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except PySparkRuntimeError as exc:  # the JVM did not come up; it printed why just above
        raise BatchError(f"Spark could not start on {config.master} with driver_memory {config.driver_memory} "
                         f"(the heap is taken whole at start; is Java 17 installed?): {str(exc).splitlines()[0]}"
                         ) from None
    spark.sparkContext.setLogLevel("ERROR")
    if "spark.sql.files.minPartitionNum" not in config.conf:  # input splits: a few per core (job.yaml)
        splits = config.splits_per_core * spark.sparkContext.defaultParallelism
        spark.conf.set("spark.sql.files.minPartitionNum", str(splits))
    return spark


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelRef:
    """The model a batch is scored with, pinned to one version, and what it expects."""

    uri: str  # pinned: models:/name/version when the registry knows it
    requested: str
    name: str
    version: str
    run_id: str
    dataset: DatasetSpec
    columns: tuple[str, ...]  # signature input names, in order
    required: tuple[str, ...]
    config_keys: frozenset[str] = frozenset()  # the model-config keys the model reads (BATCH_CONFIG overrides some)
    decisions: tuple[str, ...] = ()  # its decision labels in index order (model config decisions)
    reason_codes: int = 0  # how many reason codes a row gets at most (model config reason_codes)

    @property
    def batch_config(self) -> dict[str, Any]:
        """The BATCH_CONFIG overrides this model understands (models logged before a key ignore it)."""
        understood = self.config_keys if self.key_fits else self.config_keys - {"reason_codes_as_key"}
        return {k: v for k, v in BATCH_CONFIG.items() if k in understood}

    @property
    def key_fits(self) -> bool:
        """Whether every reason-code key (model.reason_key) fits Spark's 64-bit integer."""
        return (len(self.dataset.raw_columns) + 1) ** self.reason_codes < 2**63

    @property
    def lineage(self) -> dict[str, str]:
        return {"model_name": self.name, "model_version": self.version, "run_id": self.run_id}


def _registry_version(model_uri: str) -> tuple[str, str]:
    """(name, version) for models:/name@alias, models:/name/version or models:/name/stage; else ("", "")."""
    ref = model_uri.removeprefix("models:/")
    client = mlflow.MlflowClient()
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    if "/" in ref:
        name, version = ref.split("/", 1)
        if version.isdigit():
            return name, version
        latest = client.get_latest_versions(name, [version])
        if not latest:
            raise TrackingError(f"model '{name}' has no version in stage '{version}'")
        return name, str(latest[0].version)
    return "", ""


@contextmanager
def _model_errors(model_uri: str) -> Iterator[None]:
    """MLflow's errors reading a model (unknown name, alias or version; files gone) as one TrackingError line."""
    try:
        yield
    except MlflowException as exc:
        raise TrackingError(f"model {model_uri}: {exc.message.splitlines()[0]}") from None
    except OSError as exc:
        raise TrackingError(f"model {model_uri} cannot be read: {exc}") from None


def resolve_model(model_uri: str) -> ModelRef:
    """Read the model's metadata (not its weights): version, run, signature and dataset spec."""
    from creditflow.tracking import check_server_for  # here: tracking imports the training stack (~1.5 s)

    check_server_for(model_uri)
    with _model_errors(model_uri):
        name, version = _registry_version(model_uri) if model_uri.startswith("models:/") else ("", "")
        pinned = f"models:/{name}/{version}" if name else model_uri
        info = mlflow.models.get_model_info(pinned)
    config = info.flavors.get("python_function", {}).get("config") or {}
    if "dataset_spec" not in config or info.signature is None:
        raise TrackingError(f"model {model_uri} is not a creditflow model (no dataset spec or signature)")
    if not name and info.registered_model_version:
        version = str(info.registered_model_version)
    inputs = info.signature.inputs
    return ModelRef(
        uri=pinned, requested=model_uri, name=name, version=version, run_id=info.run_id or "",
        dataset=spec_from_config(config),
        columns=tuple(inputs.input_names()), required=tuple(inputs.required_input_names()),
        config_keys=frozenset(config), decisions=tuple(config.get("decisions", ())),
        reason_codes=int(config.get("reason_codes", 0)),
    )


# ---------------------------------------------------------------- the input


@dataclass(frozen=True)
class InputFiles:
    """A CSV or Parquet file, or a directory of one kind, with its columns read from headers/footers."""

    path: Path
    format: Literal["parquet", "csv"]
    files: tuple[Path, ...]
    columns: tuple[str, ...]
    types: dict[str, pa.DataType] = field(default_factory=dict)  # Parquet only (CSV cells are text)


def inspect_input(path: str | Path) -> InputFiles:
    """The input's files and columns, reading only Parquet footers or the CSV header line."""
    path = Path(path).absolute()  # Spark resolves relative paths against its JVM's start directory
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        parquet, text = sorted(path.glob("*.parquet")), sorted(path.glob("*.csv"))
        if not (parquet or text):
            raise DataError(f"{path}: directory holds no .csv or .parquet files")
        fmt, files = ("parquet", parquet) if parquet else ("csv", text)
    elif path.suffix in (".parquet", ".pq"):
        fmt, files = "parquet", [path]
    elif path.suffix == ".csv":
        fmt, files = "csv", [path]
    else:
        raise DataError(f"{path}: not a .csv or .parquet file")
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
        raise DataError(f"{path}: cannot be read as Parquet ({str(exc).splitlines()[0]})") from None


def _csv_header(path: Path) -> tuple[str, ...]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({str(exc).splitlines()[0]})") from None
    if not header:
        raise DataError(f"{path}: the file is empty")
    return tuple(header)


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class BatchPlan:
    """Everything checked before Spark starts: model, input, where the batch goes, its id."""

    model: ModelRef
    source: InputFiles
    output: Path
    batch_id: str
    id_column: str  # the applicant id as the input names it
    table_url: str
    scored_at: datetime


def default_batch_id(source: Path, today: date | None = None) -> str:
    """The input's name and the date: rerunning the same input on the same day replaces its batch."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", source.stem if source.is_file() else source.name).strip("-_") or "batch"
    return f"{stem[:80]}-{(today or date.today()):%Y%m%d}"


def plan_batch(model_uri: str, input_path: str | Path, output: str | Path, batch_id: str = "",
               id_column: str = "", table: str = "") -> BatchPlan:
    """Resolve the model and check the input against its signature; raises before any Spark work."""
    model = resolve_model(model_uri)
    source = inspect_input(input_path)
    batch_id = batch_id or default_batch_id(source.path)
    if not BATCH_ID.match(batch_id):
        raise BatchError(f"batch id '{batch_id[:40]}' must be 1-100 letters, digits, '-' or '_'")
    id_column = _id_column(source, id_column or model.dataset.id_column, bool(id_column))
    _check_columns(source, model)
    output = Path(output).absolute()
    check_scored_layout(output)
    table_url = PredictionTable(table or default_table_url(output)).url  # an unsupported URL fails here
    return BatchPlan(model, source, output, batch_id, id_column, table_url, datetime.now(UTC))


def _id_column(source: InputFiles, wanted: str, explicit: bool) -> str:
    if wanted in source.columns:
        return wanted
    if not explicit and source.columns and source.columns[0] in UNNAMED_FIRST:
        return source.columns[0]  # the blank first header of cs-training.csv holds the id
    raise DataError(f"{source.path}: missing id column '{wanted}' (pass --id-column NAME)")


def _check_columns(source: InputFiles, model: ModelRef) -> None:
    missing = [c for c in model.required if c not in source.columns]
    if missing:
        raise DataError(f"{source.path}: missing column(s) the model needs: {', '.join(missing)}")
    wrong = [f"{c} ({t})" for c, t in source.types.items() if c in model.columns and not _usable(t, model.dataset, c)]
    if wrong:
        raise DataError(f"{source.path}: column type(s) the model cannot take: {', '.join(wrong)}")


def _usable(t: pa.DataType, spec: DatasetSpec, column: str) -> bool:
    """Numbers (or text to be parsed) for numeric columns, text for categorical ones."""
    text = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)
    if spec.columns[column].group == "categorical":
        return text
    return text or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


# ---------------------------------------------------------------- Spark


def _col(name: str) -> Column:
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def _is_text(df: DataFrame, name: str) -> bool:
    from pyspark.sql.types import StringType

    return isinstance(df.schema[name].dataType, StringType)


def _number(df: DataFrame, name: str) -> Column:
    """A numeric input column as double: missing markers and NaN become null, unparsable text null too."""
    from pyspark.sql import functions as F

    c = _col(name)
    if _is_text(df, name):
        text = F.trim(c)
        c = F.when(F.lower(text).isin(*NA_TOKENS), None).otherwise(text.try_cast("double"))
    else:
        c = c.cast("double")
    return F.when(F.isnan(c), None).otherwise(c)


def _not_a_number(df: DataFrame, name: str) -> Column | None:
    """True where a text cell holds something other than a number or a missing marker."""
    from pyspark.sql import functions as F

    if not _is_text(df, name):
        return None
    text = F.trim(_col(name))
    return _col(name).isNotNull() & ~F.lower(text).isin(*NA_TOKENS) & text.try_cast("double").isNull()


def model_inputs(df: DataFrame, model: ModelRef) -> dict[str, Column]:
    """The model's signature columns from the input: doubles (or text for categoricals), null if absent."""
    from pyspark.sql import functions as F

    out = {}
    for name in model.columns:
        categorical = model.dataset.columns[name].group == "categorical"
        if name not in df.columns:
            out[name] = F.lit(None).cast("string" if categorical else "double")
        elif categorical:
            out[name] = _col(name).cast("string")
        elif _is_text(df, name):
            out[name] = _number(df, name)  # missing markers and numbers parsed from the text
        else:
            out[name] = _col(name).cast("double")  # NaN and null both reach pandas as NaN
    return out


Checks = list[tuple["Column", str]]  # rule_checks: (condition, message), first broken wins


def rule_checks(df: DataFrame, spec: DatasetSpec, id_column: str) -> Checks:
    """`data.rule_violations` as Spark conditions with their messages, in its order (first broken wins).

    Evaluated in the JVM, so rule checking costs no Python pass; tests/test_scoring.py checks the
    result against `rule_violations` on rows breaking every rule. Two checks come first that only
    files can break: a missing applicant id and text that is not a number.
    """
    from pyspark.sql import functions as F

    checks: list[tuple[Column, str]] = [(_col(id_column).isNull(), f"{id_column or 'id'} is missing")]
    for raw, col in spec.columns.items():
        if raw not in df.columns:
            if not col.nullable:  # absent optional columns are all-missing, allowed
                checks.append((F.lit(True), f"{raw} is missing"))
            continue
        bad_text = _not_a_number(df, raw) if col.group != "categorical" else None
        if bad_text is not None:
            checks.append((bad_text, f"{raw} is not a number"))
        v = _col(raw).cast("string") if col.group == "categorical" else _number(df, raw)
        if not col.nullable:
            checks.append((v.isNull(), f"{raw} is missing"))
        if col.group == "categorical":
            if col.categories:
                checks.append((v.isNotNull() & ~v.isin(*col.categories), f"{raw} is not a known category"))
            continue
        allowed = v.isin(*col.sentinels) if col.sentinels else F.lit(False)
        if col.min is not None:
            checks.append(((v < col.min) & ~allowed, f"{raw} below {col.min:g}"))
        if col.max is not None:
            checks.append(((v > col.max) & ~allowed, f"{raw} above {col.max:g}"))
        if col.integer:
            checks.append((v.isNotNull() & (v % 1 != 0), f"{raw} is not a whole number"))
        checks.append((v.isin(float("inf"), float("-inf")), f"{raw} is infinite"))
    return checks


def breaks_a_rule(checks: Checks) -> Column:
    """True where a row breaks any value rule: the cheap filter (the reason text is built for those rows only).

    Whole-stage code generation makes the 60-branch reason expression ~10x slower per row than this OR.
    """
    from functools import reduce

    from pyspark.sql import functions as F

    return reduce(lambda a, b: a | b, [F.coalesce(cond, F.lit(False)) for cond, _ in checks])


def violation_reason(checks: Checks) -> Column:
    """Per row, the first value rule it breaks ("" when none), worded as `data.rule_violations` words it."""
    from pyspark.sql import functions as F

    return F.coalesce(*[F.when(cond, F.lit(reason)) for cond, reason in checks], F.lit(""))


def _applicant_id(df: DataFrame, name: str) -> Column:
    from pyspark.sql.types import DoubleType, FloatType

    c = _col(name)
    if isinstance(df.schema[name].dataType, DoubleType | FloatType):
        c = c.cast("long")  # 17.0 -> "17", as the id is written elsewhere
    return c.cast("string")


def read_input(spark: SparkSession, source: InputFiles) -> DataFrame:
    reader = spark.read
    if source.path.is_dir():
        reader = reader.option("pathGlobFilter", f"*.{source.format}")
    if source.format == "parquet":
        return reader.parquet(str(source.path))
    return reader.option("header", True).option("inferSchema", False).csv(str(source.path))


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
                f"model {self.model_uri}; predictions {self.scored_path} and {safe_url(self.table_url)}; "
                f"quarantine {self.quarantine_path}")


def run_batch(spark: SparkSession, plan: BatchPlan, progress_seconds: float = 5.0) -> BatchResult:
    """Score a planned batch and publish it (quarantine, Parquet, SQL table) only when it is complete."""
    start = time.perf_counter()
    with _spark_errors("reading the input"):
        raw, id_column = read_input(spark, plan.source), plan.id_column
        rows_in = raw.count()
    if id_column in UNNAMED_FIRST:  # a blank first header (Spark calls it _c0): give it the spec's id name
        id_column = plan.model.dataset.id_column
        raw = raw.withColumnRenamed(raw.columns[0], id_column)
    checks = rule_checks(raw, plan.model.dataset, id_column)  # built once: each is a few hundred JVM calls
    checked, reason = raw.withColumn(BROKEN, breaks_a_rule(checks)), violation_reason(checks)
    stage = staging_dir(plan.output, plan.batch_id)
    try:
        print(f"[batch {plan.batch_id}] {rows_in:,} rows from {plan.source.path}; model {plan.model.uri}", flush=True)
        quarantine = partial(_write_quarantine, checked, reason, stage / QUARANTINE_DIR, plan.batch_id)
        scored, quarantined = _score_and_load(spark, checked.withColumnRenamed(id_column, APPLICANT_ID), plan, stage,
                                              rows_in, quarantine, progress_seconds)
        for name in (SCORED_DIR, QUARANTINE_DIR):  # the SQL rows are committed: now the Parquet partitions
            publish(stage / name, partition_dir(plan.output / name, plan.batch_id), stage / f"replaced-{name}")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return BatchResult(plan.batch_id, plan.model.uri, rows_in, scored, quarantined, time.perf_counter() - start,
                       partition_dir(plan.output / SCORED_DIR, plan.batch_id),
                       partition_dir(plan.output / QUARANTINE_DIR, plan.batch_id), plan.table_url)


def _write_quarantine(checked: DataFrame, reason: Column, path: Path, batch_id: str, needed: bool) -> int:
    """Rows breaking a value rule, as read, with the rule; a JVM-only pass (no model, no Python).

    Not `needed` when every row was scored: then none broke a rule, and the input is not read again.
    """
    from pyspark.sql import functions as F

    bad = checked.filter(F.col(BROKEN)).withColumn("reason", reason).drop(BROKEN)
    if needed:
        with _spark_errors("quarantine"), _job_group(checked.sparkSession, f"quarantine-{batch_id}", "quarantine"):
            bad.write.mode("overwrite").parquet(str(path))
    else:  # an empty file with the columns, as Spark writes for no rows: readers see an empty partition
        from pyspark.sql.pandas.types import to_arrow_schema

        path.mkdir(parents=True)
        pq.write_table(to_arrow_schema(bad.schema).empty_table(), path / "part-00000-empty.parquet")
    rows = parquet_rows(path)
    print(f"[quarantine] {rows:,} rows broke the dataset spec's value rules", flush=True)
    return rows


def score_rows(spark: SparkSession, df: DataFrame, model: ModelRef, keep: list[Column]) -> DataFrame:
    """`keep` plus probability, decision and reason_codes (JSON text) of every row of `df`, from the model's spark_udf.

    Reason codes are written as JSON text, as the SQL table stores them: parsing them into arrays and
    writing Parquet lists cost the JVM more than the rest of the scored columns together. The decision
    and the reason codes cross as integers (its label's index; reason_key) and are turned back into the
    model's text here: a text field costs the Python workers ~0.4 CPU-s per 5M rows to hand over (value
    by value), a number next to nothing. Models logged before these model-config keys return text, or
    labels and lists, turned into the same columns.
    """
    from pyspark.sql import functions as F

    overrides = model.batch_config
    by_index, by_key, as_json = ("decision_as" in overrides, "reason_codes_as_key" in overrides,
                                 "reason_codes_as" in overrides)
    codes_type = "bigint" if by_key else "string" if as_json else "array<string>"
    result_type = f"probability double, decision {'int' if by_index else 'string'}, reason_codes {codes_type}"
    with batch_copy(model) as local, _quiet_logger("mlflow.pyfunc"):  # spark_udf copies or ships it when made
        # env_manager="local" on purpose: the workers run this interpreter (start_spark); MLflow warns of it always
        udf = mlflow.pyfunc.spark_udf(spark, local, result_type=result_type, env_manager="local")
    decision = (F.element_at(F.array(*[F.lit(label) for label in model.decisions]), F.col("_p.decision") + 1)
                if by_index else F.col("_p.decision"))
    codes = (reason_codes_json("_p.reason_codes", model.dataset.reason_labels(), model.reason_codes) if by_key
             else F.col("_p.reason_codes") if as_json else F.to_json(F.col("_p.reason_codes")))
    inputs = model_inputs(df, model)  # in signature order: spark_udf names unnamed columns by the signature
    predicted = df.select(*keep, udf(*[c.alias(n) for n, c in inputs.items()]).alias("_p"))  # not a struct:
    # PySpark turns a struct column into a pandas DataFrame far more slowly than it hands over plain columns
    kept = [c for c in predicted.columns if c != "_p"]
    return predicted.select(*kept, "_p.probability", decision.alias("decision"), codes.alias("reason_codes"))


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """The logger's warnings off for the block (errors still shown)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def model_files(model: ModelRef) -> Iterator[Path]:
    """The model's files, downloaded into a temporary directory for the block; MLflow's errors in one line."""
    with tempfile.TemporaryDirectory(prefix="creditflow-model-") as tmp, _model_errors(model.uri):
        yield Path(mlflow.artifacts.download_artifacts(model.uri, dst_path=tmp))


@contextmanager
def batch_copy(model: ModelRef) -> Iterator[str]:
    """A local copy of the model with its batch overrides written into its MLmodel config: what spark_udf loads.

    spark_udf's `model_config` reaches the model only on a local master: on a cluster the executors load
    it through MLflow's SparkModelCache, without the config, and the model would answer in the types
    Spark does not expect. A copy that carries the overrides is loaded the same way everywhere.
    """
    with model_files(model) as path:
        meta = Model.load(path / MLMODEL_FILE_NAME)
        pyfunc = meta.flavors["python_function"]
        pyfunc["config"] = {**pyfunc.get("config", {}), **model.batch_config}
        meta.save(path / MLMODEL_FILE_NAME)
        yield str(path)


def reason_codes_json(key: str, labels: list[str], k: int) -> Column:
    """The JSON text of the reason codes in the column `key` (model.reason_key): what json.dumps makes of the list.

    Each label is JSON-quoted here by json.dumps, as the model does, and joined as json.dumps joins a list.
    """
    from pyspark.sql import functions as F

    base = len(labels) + 1
    quoted = F.array(F.lit(None).cast("string"), *[F.lit(json.dumps(label)) for label in labels])  # digit 0: none
    names = [F.element_at(quoted, F.expr(f"{key} div {base**i} % {base}").cast("int") + 1) for i in range(k)]
    return F.when(F.col(key) == 0, F.lit("[]")).otherwise(F.concat(F.lit("["), F.concat_ws(", ", *names), F.lit("]")))


def _write_scored(spark: SparkSession, checked: DataFrame, plan: BatchPlan, path: Path, expected: int,
                  progress_seconds: float) -> int:
    from pyspark.sql import functions as F

    valid = checked.filter(~F.col(BROKEN))
    scored = score_rows(spark, valid, plan.model, [_applicant_id(valid, APPLICANT_ID).alias("applicant_id")])
    scored = scored.select(*scored.columns, *[F.lit(v).alias(k) for k, v in plan.model.lineage.items()],
                           F.lit(plan.scored_at).alias("scored_at"))
    started = time.perf_counter()
    group = f"score-{plan.batch_id}"
    with (_spark_errors("scoring"), _job_group(spark, group, f"creditflow batch scoring ({expected} rows)"),
          _progress(spark, group, expected, progress_seconds)):
        scored.write.mode("overwrite").options(**scored_parquet_options()).parquet(str(path))
    rows, seconds = parquet_rows(path), time.perf_counter() - started
    print(f"[score] {rows:,} rows scored in {seconds:.1f} s ({rows / max(seconds, 1e-9):,.0f} rows/s)", flush=True)
    return rows


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


@contextmanager
def _job_group(spark: SparkSession, group: str, description: str) -> Iterator[None]:
    """Spark jobs started in the block belong to `group`; the block ends only once all their tasks have.

    Spark fails a job (cancelled, or one task failed) before its other tasks have stopped: a task that
    was finishing would commit its file into the staging directory after run_batch had removed it.
    """
    sc = spark.sparkContext
    sc.setJobGroup(group, description)
    try:
        yield
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        deadline = time.monotonic() + TASK_STOP_SECONDS
        while _tasks_running(sc, group) and time.monotonic() < deadline:
            time.sleep(0.05)


def _group_jobs(tracker: Any, group: str) -> list[Any]:
    """The group's jobs, as Spark's status tracker knows them (SparkJobInfo)."""
    return [info for job in tracker.getJobIdsForGroup(group) if (info := tracker.getJobInfo(job))]


def _group_stages(tracker: Any, group: str) -> Iterator[Any]:
    """The stages of the group's jobs (SparkStageInfo)."""
    for job in _group_jobs(tracker, group):
        yield from filter(None, map(tracker.getStageInfo, job.stageIds))


def _tasks_running(sc: Any, group: str) -> bool:
    """Whether a job of the group is still running or any of its tasks has not ended.

    The status tracker learns of tasks from Spark's listener bus, asynchronously: on a busy machine it
    still knew nothing of a cancelled job's last tasks when the job's failure reached us (CI, twice).
    So the bus first processes what was posted so far.
    """
    from py4j.protocol import Py4JError

    with suppress(Py4JError):  # timed out (a very busy bus) or a Spark without it: the tracker may lag
        sc._jsc.sc().listenerBus().waitUntilEmpty(5000)
    tracker = sc.statusTracker()
    return (any(job.status == "RUNNING" for job in _group_jobs(tracker, group))
            or any(stage.numActiveTasks for stage in _group_stages(tracker, group)))


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
            print(f"[table] {done:,} of {expected:,} rows loaded, {done / (last - started):,.0f} rows/s", flush=True)

    loaded = table.replace_batch(plan.batch_id, files, lineage, report, verify)
    print(f"[table] batch {plan.batch_id}: {loaded:,} rows in {safe_url(table.url)} "
          f"({time.perf_counter() - started:.1f} s from the start of scoring)", flush=True)


@contextmanager
def _spark_errors(step: str) -> Iterator[None]:
    """A failed Spark job as one line (the Python worker's last error line), not a JVM stack trace."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        yield
    except (PySparkException, Py4JJavaError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith(("at ", "File "))]
        detail = next((ln for ln in reversed(lines) if "Error" in ln or "Exception" in ln), lines[-1] if lines else "")
        raise BatchError(f"{step} failed: {detail[:300]}") from None


@contextmanager
def _progress(spark: SparkSession, group: str, expected: int, every: float) -> Iterator[None]:
    """Every `every` seconds, rows scored (from finished tasks of the job) and throughput, when they moved.

    Without news for HEARTBEAT_SECONDS, a line says the job is still at it.
    """
    sc = spark.sparkContext
    stop = threading.Event()
    start = time.perf_counter()

    def report() -> None:
        tracker = sc.statusTracker()
        shown, shown_at = -1, start
        while not stop.wait(every):
            stages = list(_group_stages(tracker, group))
            done, total = sum(s.numCompletedTasks for s in stages), sum(s.numTasks for s in stages)
            now = time.perf_counter()
            if total and (done != shown or now - shown_at >= HEARTBEAT_SECONDS):
                rows = expected * done // total
                print(f"[score] ~{rows:,} of {expected:,} rows scored ({done}/{total} tasks), "
                      f"{rows / (now - start):,.0f} rows/s, {now - start:.0f} s", flush=True)
                shown, shown_at = done, now

    thread = threading.Thread(target=report, name="batch-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every + 5)


def score_batch(spark: SparkSession, model_uri: str, input_path: str | Path, output: str | Path,
                **options: Any) -> BatchResult:
    """Score a file or directory of applicants with the model into `output` (the one-call library entry).

    Options: batch_id, id_column, table (plan_batch) and progress_seconds (run_batch).
    """
    every = options.pop("progress_seconds", 5.0)
    return run_batch(spark, plan_batch(model_uri, input_path, output, **options), every)


def log_batch(run_id: str | None, result: BatchResult) -> None:
    """Under `mlflow run`, record the batch on the project's run: which batch, which model, counts, speed."""
    if not run_id:
        return
    with mlflow.start_run(run_id=run_id):
        mlflow.log_params({"batch.id": result.batch_id, "batch.model_uri": result.model_uri,
                           "batch.scored_path": str(result.scored_path), "batch.table": safe_url(result.table_url)})
        mlflow.log_metrics({"rows_in": result.rows_in, "rows_scored": result.rows_scored,
                            "rows_quarantined": result.rows_quarantined, "batch_seconds": result.seconds})


# ---------------------------------------------------------------- the demo's last step


def champion_or_best(outcomes: list[Any], alias: str = "champion") -> str:
    """models:/<name>@champion when the alias exists, else the best outcome's registered version (or its URI)."""
    client = mlflow.MlflowClient()
    best = outcomes[0]
    versions = client.search_model_versions(f"run_id = '{best.run_id}'")
    if not versions:
        return best.model_uri
    name = versions[0].name
    try:
        client.get_model_version_by_alias(name, alias)
        return f"models:/{name}@{alias}"
    except MlflowException:
        return f"models:/{name}/{versions[0].version}"


def score_sample(outcomes: list[Any], rows: int, output: str | Path = "predictions",
                 spark: SparkSession | None = None) -> BatchResult:
    """Generate `rows` new applicants (no target) and batch-score them with the champion.

    Starts (and stops) its own Spark session unless one is given.
    """
    from creditflow.synthetic import TARGET, generate_credit_data

    DEMO_SAMPLE.parent.mkdir(parents=True, exist_ok=True)
    generate_credit_data(rows, seed=2026).frame.drop(columns=[TARGET]).to_parquet(DEMO_SAMPLE, index=False)
    model_uri = champion_or_best(outcomes)
    print(f"\n== batch scoring {rows:,} new applicants ({DEMO_SAMPLE}) with {model_uri}", flush=True)
    plan = plan_batch(model_uri, DEMO_SAMPLE, output)
    own = spark is None
    spark = start_spark(SparkConfig()) if own else spark
    try:
        result = run_batch(spark, plan)
    finally:
        if own:
            spark.stop()
    print(result.summary(), flush=True)
    print(f"look one up: creditflow predictions get --id 1 --output {output}", flush=True)
    return result
