"""A segmented experiment's training: the global model and a model per segment, nested runs of one parent run.

Each run is `train.run.train_and_log` (metrics, explanations within the segment budget, model with signature, card),
on the segment's rows of the whole data set's split, so that no segment model's held-out rows were seen by the
global model. Segments train in parallel on this machine's cores (worker processes), or, given a Spark session,
as one `applyInPandas` per segment whose tasks log to the same tracking server (`train.segments_spark`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context

import mlflow
from mlflow.entities import Param
from threadpoolctl import threadpool_limits

from creditflow.data.dataset import CreditData, Split, segment_rows, split_data
from creditflow.errors import CreditflowError, SpecError, TrackingError, first_line
from creditflow.scoped import tracking_uri
from creditflow.specs import DatasetSpec, ExperimentSpec, SegmentsSpec, segment_model_name, validated
from creditflow.train.held_out import SPEC_ARTIFACT, specs_artifact
from creditflow.train.run import Nested, TrainingOutcome, ends_failed, flatten, git_commit, train_and_log

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """One run to train: the experiment (with its segment's budget and name), its rows and split, where it goes."""

    exp: ExperimentSpec
    ds: DatasetSpec
    data: CreditData
    split: Split | None
    nested: Nested
    tracking_uri: str
    threads: int | None = None  # BLAS/OpenMP threads of its process (None: as many as there are)


@dataclass(frozen=True)
class SegmentResult:
    """What became of one segment (None: the global model): its rows and run, or why nothing was trained."""

    segment: str | None
    rows: int
    outcome: TrainingOutcome | None = None
    skipped: str = ""  # why no model was trained (too few rows, training failed)


@dataclass(frozen=True)
class SegmentedTraining:
    parent_run_id: str
    column: str
    results: tuple[SegmentResult, ...]  # the global model first, then the segments in order

    @property
    def global_result(self) -> SegmentResult:
        return self.results[0]


def segment_column(exp: ExperimentSpec, ds: DatasetSpec) -> str:
    """The column whose values are the segments: the experiment's `segments.column`, else the dataset's `segment`."""
    column = (exp.segments.column if exp.segments else None) or ds.segment
    if not exp.segments or not column:
        raise SpecError(f"experiment '{exp.name}' trains no segments: it needs `segments:` and a segment column "
                        "(`segments: {column: NAME}`, or `segment: NAME` in its dataset spec)")
    return column


def segmented_dataset(exp: ExperimentSpec, ds: DatasetSpec) -> DatasetSpec:
    """The dataset spec whose `segment` is the experiment's segment column (validated: no feature, target or id)."""
    column = segment_column(exp, ds)
    return ds if ds.segment == column else validated(DatasetSpec, {**ds.model_dump(), "segment": column},
                                                     f"experiment '{exp.name}' segments.column")


def segment_data(data: CreditData, value: str) -> CreditData:
    """The rows of one segment, as a data set of its own."""
    keep = (data.segments == value).to_numpy()
    truth = data.true_probability[keep] if data.true_probability is not None else None
    return replace(data, X=data.X[keep], y=data.y[keep], ids=data.ids[keep], segments=data.segments[keep],
                   source=f"{data.source} [segment {value}]", true_probability=truth)


def segment_counts(data: CreditData) -> dict[str, int]:
    """Rows per segment value, in sorted order (rows without a segment are in none)."""
    return {str(k): int(v) for k, v in sorted(data.segments.dropna().value_counts().items())}


def segment_experiment(exp: ExperimentSpec, segment: str) -> ExperimentSpec:
    """A segment's experiment: the segment's explanation budget, registered as `<global name>-<segment>`."""
    assert exp.segments is not None
    name = segment_model_name(exp.register_as, segment) if exp.register_as else None
    return exp.model_copy(update={"explain": exp.segments.explain, "register_as": name})


def run_task(task: Task) -> TrainingOutcome:
    """Train one task (in a worker process, a Spark task or this process), logging to the task's tracking server."""
    with tracking_uri(task.tracking_uri), threadpool_limits(task.threads):
        return train_and_log(task.exp, task.ds, task.data, task.nested, task.split)


def outcome_or_reason(train: Callable[[], TrainingOutcome], what: str) -> tuple[TrainingOutcome | None, str]:
    try:
        return train(), ""
    except Exception as exc:  # one segment's failure is its row in the table, not the end of the others
        logger.warning("%s: training failed: %s", what, first_line(exc))
        return None, f"training failed: {first_line(exc)[:200]}"


def workers_for(spec: SegmentsSpec, tasks: int) -> int:
    return max(1, min(spec.workers or os.cpu_count() or 1, tasks))


def train_locally(tasks: list[Task], workers: int) -> list[tuple[TrainingOutcome | None, str]]:
    """Every task, `workers` at a time in fresh worker processes (one thread each); in this process when 1."""
    if workers == 1:
        return [outcome_or_reason(lambda t=task: run_task(t), task_name(task)) for task in tasks]
    results: dict[int, tuple[TrainingOutcome | None, str]] = {}
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_task, replace(task, threads=1)): i for i, task in enumerate(tasks)}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = outcome_or_reason(future.result, task_name(tasks[i]))
            if results[i][0]:
                logger.info("  %s: held-out roc_auc=%.4f (%d/%d done)", task_name(tasks[i]),
                            results[i][0].test["test_roc_auc"], len(results), len(tasks))
    return [results[i] for i in range(len(tasks))]


def task_name(task: Task) -> str:
    return f"segment {task.nested.segment}" if task.nested.segment is not None else "global model"


def open_parent_run(exp: ExperimentSpec, ds: DatasetSpec, data: CreditData, column: str,
                    counts: dict[str, int]) -> Nested:
    """The segmented experiment's parent run (created, not made active: its children may run in other processes)."""
    experiment_id = mlflow.set_experiment(exp.name).experiment_id
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, run_name=f"segments-{exp.family}", tags={
        "segment_column": column, "git_commit": git_commit(), "data_source": data.source, "dataset": ds.name,
        "model_family": exp.family, "mlflow.note.content": f"{exp.name}: a global model and a model per {column}"})
    with ends_failed(run.info.run_id):
        client.log_dict(run.info.run_id, specs_artifact(exp, ds), SPEC_ARTIFACT)
        params = {**flatten("", exp.model_dump(mode="json")), "data.rows": len(data.X), "segments": len(counts)}
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return Nested(run.info.run_id, experiment_id, None, column, exp.register_as)


def train_segments(exp: ExperimentSpec, ds: DatasetSpec, data: CreditData,
                   spark_train: Callable[[list[Task]], list[tuple[TrainingOutcome | None, str]]] | None = None,
                   ) -> SegmentedTraining:
    """The global model and a model per segment with at least `min_rows` rows, nested under one parent run.

    `spark_train` trains the segments' tasks on Spark (`train.segments_spark.spark_trainer`); by default they
    train on this machine, `segments.workers` at a time.
    """
    column = segment_column(exp, ds)
    if data.segments is None:
        raise SpecError(f"the data set was loaded without its segment column '{column}' "
                        f"(set `segment: {column}` in the dataset spec '{ds.name}')")
    assert exp.segments is not None
    counts = segment_counts(data)
    parent = open_parent_run(exp, ds, data, column, counts)
    split = split_data(data, exp.test_size, exp.seed)
    uri = mlflow.get_tracking_uri()
    small = {s: n for s, n in counts.items() if n < exp.segments.min_rows}
    trained = [s for s in counts if s not in small]
    logger.info("segments of %s: %d (%d with at least %d rows train a model of their own); parent run %s",
                column, len(counts), len(trained), exp.segments.min_rows, parent.parent_run_id)
    tasks = [Task(exp, ds, data, None, parent, uri)]
    tasks += [Task(segment_experiment(exp, s), ds, segment_data(data, s), segment_rows(split, data.segments, s),
                   replace(parent, segment=s), uri) for s in trained]
    try:
        if spark_train is None:
            done = train_locally(tasks, workers_for(exp.segments, len(tasks)))
        else:  # the global model here, the segments as Spark tasks
            done = train_locally(tasks[:1], 1) + spark_train(tasks[1:])
    except Exception as exc:  # Spark's own failures too: one line, the parent run FAILED
        mlflow.MlflowClient().set_terminated(parent.parent_run_id, "FAILED")
        if isinstance(exc, CreditflowError):
            raise
        raise CreditflowError(f"training the segments of '{exp.name}' failed: {first_line(exc)[:300]}") from None
    results = [SegmentResult(None, len(data.X), *done[0])]
    by_segment = dict(zip(trained, done[1:], strict=True))
    for segment, rows in counts.items():
        why = f"too few rows ({rows:,} < min_rows {exp.segments.min_rows:,}): the global model serves it"
        results.append(SegmentResult(segment, rows, *by_segment[segment]) if segment in by_segment
                       else SegmentResult(segment, rows, None, why))
    _close_parent(parent.parent_run_id, results)
    if results[0].outcome is None:
        raise TrackingError(f"the global model of '{exp.name}' did not train: {results[0].skipped}")
    return SegmentedTraining(parent.parent_run_id, column, tuple(results))


def _close_parent(run_id: str, results: list[SegmentResult]) -> None:
    client = mlflow.MlflowClient()
    for r in results:
        if r.outcome is not None:
            client.log_metric(run_id, f"{r.segment or 'global'}.test_roc_auc", r.outcome.test["test_roc_auc"])
    trained = sum(r.outcome is not None for r in results[1:])
    client.log_metric(run_id, "segments_trained", trained)
    client.set_terminated(run_id, "FINISHED" if results[0].outcome is not None else "FAILED")
