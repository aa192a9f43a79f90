"""The batch job's columns: the model's inputs, the value rules and the predictions, as Spark expressions.

Rule checks run in the JVM; the model runs in Spark's Python workers through `mlflow.pyfunc.spark_udf`
on a local copy of the model whose config asks for answers Spark takes cheaply (BATCH_CONFIG).
pyspark is imported inside the functions that use it, so importing the batch modules costs no Spark start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import reduce
from typing import TYPE_CHECKING, Any

import mlflow
import yaml
from mlflow.models.model import MLMODEL_FILE_NAME

from creditflow.data.io import InputFiles
from creditflow.data.rules import Rule, value_rules
from creditflow.registry.client import YAML_DUMPER, ModelRef, model_files, read_mlmodel
from creditflow.serving.batch.spark import no_pandas_notice
from creditflow.specs import DatasetSpec

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

BATCH_CONFIG = {  # model-config overrides for the Spark workers (see batch_copy), for models that read the key
    "reason_codes_as": "json",  # spark_udf converts lists row by row, text not
}
BATCH_DEFAULTS = {  # the same, for models that leave the key unset (null)
    "reason_codes_for": "declined",  # reasons are owed to declined applicants: the costly part (docs/performance.md)
}
NA_TOKENS = ("", "na", "n/a", "nan", "null", "none", "<na>", "#n/a")  # missing markers in CSV files


def batch_overrides(model: ModelRef) -> dict[str, Any]:
    """The BATCH_CONFIG overrides this model understands (models logged before a key ignore it), and the
    BATCH_DEFAULTS of the keys it leaves unset (a spec that asks for `reason_codes_for: all` keeps it)."""
    defaults = {k: v for k, v in BATCH_DEFAULTS.items() if k in model.unset_keys}
    return {**defaults, **{k: v for k, v in BATCH_CONFIG.items() if k in model.config_keys}}


def answered_reasons(model: ModelRef) -> tuple[list[str], bool]:
    """The reason columns the model's batch copy answers (models logged before statements have none), and whether
    as JSON text (BATCH_CONFIG's reason_codes_as; models logged before it answer lists)."""
    reasons = ["reason_codes", *(["reason_statements"] if "reason_statements" in model.outputs else [])]
    return reasons, "reason_codes_as" in batch_overrides(model)


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
    """The dataset spec's value rules (`data.rules.value_rules`) as Spark conditions, in their order.

    Evaluated in the JVM, so rule checking costs no Python pass; tests check the result against
    `rule_violations` on rows breaking every rule. Two checks only files can break come in as well:
    a missing applicant id (first), and text that is not a number (before its column's rules).
    """
    from pyspark.sql import functions as F

    checks: list[tuple[Column, str]] = [(_col(id_column).isNull(), f"{id_column or 'id'} is missing")]
    seen: set[str] = set()
    for rule in value_rules(spec):
        raw, categorical = rule.column, spec.columns[rule.column].group == "categorical"
        if raw not in df.columns:  # absent optional columns are all-missing, allowed
            if rule.check == "missing":
                checks.append((F.lit(True), rule.message))
            continue
        if raw not in seen and not categorical and (bad_text := _not_a_number(df, raw)) is not None:
            checks.append((bad_text, f"{raw} is not a number"))
        seen.add(raw)
        checks.append((_broken(rule, _col(raw).cast("string") if categorical else _number(df, raw)), rule.message))
    return checks


def _broken(rule: Rule, v: Column) -> Column:
    """Where the column `v` breaks the rule, as `data.rules.broken` decides it."""
    from pyspark.sql import functions as F

    allowed = v.isin(*rule.allowed) if rule.allowed else F.lit(False)
    return {"missing": lambda: v.isNull(), "category": lambda: v.isNotNull() & ~allowed,
            "below": lambda: (v < rule.bound) & ~allowed, "above": lambda: (v > rule.bound) & ~allowed,
            "whole": lambda: v.isNotNull() & (v % 1 != 0),
            "infinite": lambda: v.isin(float("inf"), float("-inf"))}[rule.check]()


def breaks_a_rule(checks: Checks) -> Column:
    """True where a row breaks any value rule: the cheap filter (the reason text is built for those rows only).

    Whole-stage code generation makes the 60-branch reason expression far slower per row than this OR.
    """
    from pyspark.sql import functions as F

    return reduce(lambda a, b: a | b, [F.coalesce(cond, F.lit(False)) for cond, _ in checks])


def violation_reason(checks: Checks) -> Column:
    """Per row, the first value rule it breaks ("" when none), worded as `data.rule_violations` words it."""
    from pyspark.sql import functions as F

    return F.coalesce(*[F.when(cond, F.lit(reason)) for cond, reason in checks], F.lit(""))


def applicant_id(df: DataFrame, name: str) -> Column:
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


def score_rows(spark: SparkSession, df: DataFrame, model: ModelRef, keep: list[Column]) -> DataFrame:
    """`keep` plus probability, decision, reason_codes and reason_statements (JSON text) of every row of `df`, from
    the model's spark_udf.

    Reasons are written as JSON text, as the SQL table stores them: parsing them into arrays and
    writing Parquet lists cost the JVM more than the rest of the scored columns together. The model
    hands them over as that text (reason_codes_as: json); models logged before that key return lists,
    turned into the same text here, and models logged before statements get an empty list of them.
    """
    from pyspark.sql import functions as F

    reasons, as_json = answered_reasons(model)
    kind = "string" if as_json else "array<string>"
    result_type = ", ".join(["probability double", "decision string", *(f"{r} {kind}" for r in reasons)])
    with batch_copy(model) as local, _quiet_logger("mlflow.pyfunc"), no_pandas_notice():
        # env_manager="local" on purpose: the workers run this interpreter (start_spark); MLflow warns of it always
        udf = mlflow.pyfunc.spark_udf(spark, local, result_type=result_type, env_manager="local")  # copies the model
    texts = [(F.col(f"_p.{r}") if as_json else F.to_json(F.col(f"_p.{r}"))).alias(r) for r in reasons]
    if len(reasons) == 1:
        texts.append(F.lit("[]").alias("reason_statements"))
    inputs = model_inputs(df, model)  # in signature order: spark_udf names unnamed columns by the signature
    predicted = df.select(*keep, udf(*[c.alias(n) for n, c in inputs.items()]).alias("_p"))  # not a struct:
    # PySpark turns a struct column into a pandas DataFrame far more slowly than it hands over plain columns
    kept = [c for c in predicted.columns if c != "_p"]
    return predicted.select(*kept, "_p.probability", "_p.decision", *texts)


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
def batch_copy(model: ModelRef) -> Iterator[str]:
    """A local copy of the model with its batch overrides written into its MLmodel config: what spark_udf loads.

    spark_udf's `model_config` reaches the model only on a local master: on a cluster the executors load
    it through MLflow's SparkModelCache, without the config, and the model would answer in the types
    Spark does not expect. A copy that carries the overrides is loaded the same way everywhere.
    """
    with model_files(model) as path:
        meta = read_mlmodel(path)
        pyfunc = meta["flavors"]["python_function"]
        pyfunc["config"] = {**(pyfunc.get("config") or {}), **batch_overrides(model)}
        (path / MLMODEL_FILE_NAME).write_text(yaml.dump(meta, Dumper=YAML_DUMPER, default_flow_style=False))
        yield str(path)
