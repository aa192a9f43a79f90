"""A segmented batch in ONE pandas UDF: the deployment's models held by each Python worker, rows routed per batch.

Each Arrow batch is routed as the endpoint routes a request (`serving.segments.route_keys`): its rows grouped
by the model that scores them, one predict call per model. The UDF answers the route's index with the
predictions; the lineage columns (model name, version, run) and `segment_model` are derived from it in the JVM.

The models reach the executors as files: each model's batch copy (`columns.batch_copy`) zipped under the
driver's SparkFiles directory (removed when the session stops) and added with `SparkContext.addFile`, as
`mlflow.pyfunc.spark_udf` ships a model to a cluster. An archive is named by its content, so a model
scored again in the same session is shipped once, and a Python worker loads it at most once
(`_load`, lazily: only the models its rows need), keeping the running job's models only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from creditflow.registry.client import YAML_LOADER, ModelRef
from creditflow.serving.batch.columns import answered_reasons, batch_copy, batch_overrides, model_inputs
from creditflow.serving.batch.plan import BatchPlan
from creditflow.serving.batch.spark import no_pandas_notice
from creditflow.serving.segments import FALLBACK, route_groups, route_keys

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

MODELS_DIR = "creditflow-models"  # under the driver's SparkFiles directory: the shipped archives
ANSWER = "route int, probability double, decision string, reason_codes string, reason_statements string"
SHIP_THREADS = 4  # models downloaded and zipped at once on the driver
LINEAGE = ("model_name", "model_version", "run_id")  # ModelRef.lineage's keys, in the scored columns' order


@dataclass(frozen=True)
class Shipped:
    """A model as the UDF sees it on an executor: its archive (a SparkFiles name) and how it answers."""

    archive: str
    columns: tuple[str, ...]  # its signature's inputs, in order
    as_json: bool  # reasons answered as JSON text; else lists (models logged before reason_codes_as)
    statements: bool  # answers reason_statements (models logged before them do not)


def routed_rows(spark: SparkSession, valid: DataFrame, plan: BatchPlan, keep: list[Column]) -> DataFrame:
    """`keep`, `segment`, the answers of each row's model (its segment's, else the fallback's), the lineage of that
    model and `segment_model` (whether it was the segment's own): every model's rows in one pass over the input."""
    from pyspark.sql import functions as F

    refs = [plan.model, *plan.segment_models.values()]  # route 0 is the fallback's
    inputs: dict[str, Column] = {}
    for ref in refs:  # the union of the models' inputs, each once (every segment model reads the fallback's)
        for name, column in model_inputs(valid, ref).items():
            inputs.setdefault(name, column)
    segment = F.col(f"`{plan.segment_column}`").cast("string")
    with ThreadPoolExecutor(SHIP_THREADS) as pool:  # downloads and zips: mostly file system waits
        shipped = tuple(pool.map(partial(ship, spark), refs))
    udf = _routed_udf(shipped, tuple(plan.segment_models), tuple(inputs))
    answered = valid.select(*keep, segment.alias("segment"), udf(segment, *inputs.values()).alias("_p"))
    route = F.col("_p.route")
    lineage = [F.array(*[F.lit(ref.lineage[key]) for ref in refs])[route].alias(key) for key in LINEAGE]
    kept = [c for c in answered.columns if c != "_p"]
    return answered.select(*kept, "_p.probability", "_p.decision", "_p.reason_codes", "_p.reason_statements",
                           *lineage, (route != 0).alias("segment_model"))


def ship(spark: SparkSession, model: ModelRef) -> Shipped:
    """The model's batch copy as an archive every executor can fetch (SparkContext.addFile), named by its content.

    A registered version (whose files never change) shipped before in this session is not downloaded again.
    """
    from pyspark import SparkFiles

    root = Path(SparkFiles.getRootDirectory()) / MODELS_DIR
    key = (str(root), model.uri, json.dumps(batch_overrides(model), sort_keys=True))
    archive = root / _archives.get(key, "-")
    if not (model.name and archive.is_file()):
        with batch_copy(model) as local:
            archive = root / f"{content_digest(Path(local))}.zip"
            if not archive.exists():  # the same files shipped under another name: executors have them already
                root.mkdir(exist_ok=True)
                made = Path(shutil.make_archive(str(root / f"partial-{uuid.uuid4().hex}"), "zip", local))
                made.rename(archive)
                spark.sparkContext.addFile(str(archive))
        _archives[key] = archive.name
    reasons, as_json = answered_reasons(model)
    return Shipped(archive.name, model.columns, as_json, "reason_statements" in reasons)


_archives: dict[tuple[str, str, str], str] = {}  # (session's SparkFiles root, model URI, overrides) -> archive name


def content_digest(directory: Path) -> str:
    """A digest of the directory's files (names and bytes): the same model, with the same overrides, ships once."""
    digest = hashlib.sha256()
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(directory)).encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()[:32]


def _routed_udf(routes: tuple[Shipped, ...], served: tuple[str, ...], names: tuple[str, ...]) -> Any:
    """The pandas UDF (iterator of batches): the segment column, then the models' inputs named `names`."""
    from pyspark.sql.functions import pandas_udf

    segments = frozenset(served)
    index = {FALLBACK: 0, **{s: i for i, s in enumerate(served, start=1)}}
    job = frozenset(r.archive for r in routes)

    def score(batches: Iterator[tuple[pd.Series, ...]]) -> Iterator[pd.DataFrame]:
        _keep_only(job)
        for segment, *columns in batches:
            frame = pd.DataFrame(dict(zip(names, columns, strict=True)))
            yield answer_batch(frame, route_keys(segment, segments), index, routes)

    with no_pandas_notice():
        return pandas_udf(score, ANSWER)


def answer_batch(frame: pd.DataFrame, keys: np.ndarray, index: dict[str, int],
                 routes: tuple[Shipped, ...]) -> pd.DataFrame:
    """Each row's route (`index` of its key) and its model's answers, in the batch's order."""
    n = len(frame)
    route, probability = np.zeros(n, dtype=np.int32), np.empty(n, dtype="float64")
    decision, codes, statements = (np.empty(n, dtype=object) for _ in range(3))
    for key, rows in route_groups(keys):
        shipped = routes[index[key]]
        part = frame if isinstance(rows, slice) else frame.iloc[rows]
        answer = _load(shipped.archive).predict(part[list(shipped.columns)])
        route[rows] = index[key]
        probability[rows] = answer["probability"].to_numpy(dtype="float64")
        decision[rows] = answer["decision"].to_numpy(dtype=object)
        codes[rows] = _texts(answer["reason_codes"], shipped.as_json)
        statements[rows] = _texts(answer["reason_statements"], shipped.as_json) if shipped.statements else "[]"
    return pd.DataFrame({"route": route, "probability": probability, "decision": decision,
                         "reason_codes": codes, "reason_statements": statements})


def _texts(reasons: pd.Series, as_json: bool) -> np.ndarray:
    """Reasons as JSON text; lists written as Spark's to_json writes them (the single-model job's text for them)."""
    if as_json:
        return reasons.to_numpy(dtype=object)
    return np.array([json.dumps(list(r), separators=(",", ":"), ensure_ascii=False) for r in reasons], dtype=object)


_loaded: dict[str, Any] = {}  # this Python worker's loaded models, by archive name: the running job's only


def _keep_only(job: frozenset[str]) -> None:
    """Models of other jobs dropped: a worker holds one deployment's models, however many jobs it served."""
    for archive in set(_loaded) - job:
        del _loaded[archive]


def _load(archive: str) -> Any:
    """The shipped model (a PyFuncModel), loaded once by this Python worker; its extracted files removed after.

    No dependency check: it reads every installed package's metadata at each load, to warn in executor logs only.
    """
    if archive not in _loaded:
        import mlflow
        from pyspark import SparkFiles

        with tempfile.TemporaryDirectory(prefix="creditflow-model-") as tmp, _libyaml():
            shutil.unpack_archive(SparkFiles.get(archive), tmp)
            _loaded[archive] = mlflow.pyfunc.load_model(tmp, suppress_warnings=True)
    return _loaded[archive]


@contextmanager
def _libyaml() -> Iterator[None]:
    """yaml.safe_load parsing with libyaml for the block: MLflow's load_model reads the MLmodel file three times
    with PyYAML's pure-Python parser, most of loading one of ours (docs/performance.md). Same files, same dicts."""
    import yaml

    pure = yaml.safe_load
    yaml.safe_load = partial(yaml.load, Loader=YAML_LOADER)
    try:
        yield
    finally:
        yaml.safe_load = pure
