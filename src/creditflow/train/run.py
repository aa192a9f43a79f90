"""MLflow at the edge: one training run = params, dataset input, CV + held-out metrics, explanations, model,
model card.

The library stages (data, search, explain, model) know nothing of MLflow; this module runs them
inside a run, logs what they return, and registers the model the run produces.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import requests
from mlflow.environment_variables import MLFLOW_RUN_ID
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo

from creditflow.data.dataset import CreditData, Split, digest, split_data
from creditflow.errors import TrackingError, first_line
from creditflow.model.calibration import Calibration
from creditflow.specs import GLOBAL_MODEL_TAG, DatasetSpec, ExperimentSpec
from creditflow.train import search
from creditflow.train.card import ModelCard, build_card, data_facts
from creditflow.train.card_text import CARD_FILES, card_files
from creditflow.train.explain import write_explanations
from creditflow.train.held_out import SPEC_ARTIFACT, held_out, specs_artifact
from creditflow.train.log_model import log_credit_model
from creditflow.train.timing import timed

logger = logging.getLogger(__name__)
CARD_DIR = "model_card"  # the run's artifact folder of the model card


@dataclass(frozen=True)
class TrainingOutcome:
    run_id: str
    experiment: str
    family: str
    model_uri: str
    cv: dict[str, float]
    test: dict[str, float]
    registered_version: str | None


@dataclass(frozen=True)
class Nested:
    """A run of a segmented experiment: nested under its parent run, for one segment (None: the global model)."""

    parent_run_id: str
    experiment_id: str
    segment: str | None = None
    column: str | None = None  # the segment column
    global_model: str | None = None  # the global model's registered name (segment runs)

    @property
    def run_name(self) -> str:
        return f"segment-{self.segment}" if self.segment is not None else "global"

    def model_tags(self) -> dict[str, str]:
        """The registered-model tags that tie a segment's model to its deployment (none for the global model)."""
        if self.segment is None:
            return {}
        return {"segment": self.segment, "segment_column": str(self.column), GLOBAL_MODEL_TAG: str(self.global_model)}


def detach_project_run() -> str | None:
    """Under `mlflow run`, free our runs from the project's run (so each lands in its spec's experiment).

    Returns the project run's id, so the runs we create can be linked to it.
    """
    launcher = MLFLOW_RUN_ID.get()
    if launcher:
        MLFLOW_RUN_ID.unset()
    return launcher


def link_to_project_run(launcher: str | None, outcomes: list[TrainingOutcome]) -> None:
    """Tag the `mlflow run` project run with the runs and models it produced."""
    if launcher:
        client = mlflow.MlflowClient()
        client.set_tag(launcher, "creditflow.runs", ",".join(o.run_id for o in outcomes))
        client.set_tag(launcher, "creditflow.models", ",".join(o.model_uri for o in outcomes))


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Nested spec fields as dotted MLflow params (lists and empty mappings as JSON)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), inner))
        return out
    text = json.dumps(value) if isinstance(value, list | tuple | dict) else value
    return {prefix: str(text)[:6000]}


def _log_trial(exp: ExperimentSpec) -> search.TrialCallback:
    key, _ = search.objective_key(exp)

    def on_trial(trial: search.Trial, total: int, best: search.Trial) -> None:
        if exp.search.type != "none":
            with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
                mlflow.log_params({k: str(v) for k, v in trial.params.items()})
                mlflow.log_metrics({**trial.cv, "trial_seconds": trial.seconds})
        logger.info("  trial %d/%d: %s=%.4f (best so far %.4f, %.1f s)", trial.number + 1, total, key,
                    trial.cv[key], best.cv[key], trial.seconds)

    return on_trial


def log_dataset(data: CreditData, ds: DatasetSpec) -> str:
    """Log the data set as an MLflow input (name, digest, source); return the digest."""
    frame = data.X.assign(**{ds.target.column: data.y})
    with warnings.catch_warnings():  # MLflow's hints on integer columns and string sources do not apply here
        warnings.simplefilter("ignore", UserWarning)  # (its schema is inferred lazily, in log_input)
        dataset = mlflow.data.from_pandas(frame, source=data.source, name=ds.name, targets=ds.target.column)
        mlflow.log_input(dataset, context="training")
    return digest(frame)


def _start(exp: ExperimentSpec, nested: Nested | None) -> mlflow.ActiveRun:
    if nested is None:
        mlflow.set_experiment(exp.name)
        return mlflow.start_run(run_name=f"{exp.family}-{exp.search.type}")
    return mlflow.start_run(run_name=nested.run_name, experiment_id=nested.experiment_id,
                            parent_run_id=nested.parent_run_id)


def train_and_log(exp: ExperimentSpec, ds: DatasetSpec, data: CreditData, nested: Nested | None = None,
                  split: Split | None = None) -> TrainingOutcome:
    """One experiment as one MLflow run (trials as nested runs); returns what it produced.

    A segmented experiment's runs are `nested` under its parent run; a segment's run trains on `split`, its
    segment's rows of the whole data set's split (`data` then holds the segment's rows).
    """
    timings: dict[str, float] = {}
    segment = nested.segment if nested else None
    with _start(exp, nested) as run, ends_failed(run.info.run_id):
        data_digest = log_dataset(data, ds)
        mlflow.set_tags({
            "model_family": exp.family, "search_type": exp.search.type, "git_commit": git_commit(),
            "data_source": data.source, "data_digest": data_digest, "dataset": ds.name,
            "mlflow.note.content": exp.description or f"{exp.family} ({exp.search.type} search) on {ds.name}",
            **({"segment": segment, "segment_column": str(nested.column)} if segment is not None else {}),
        })
        mlflow.log_dict(specs_artifact(exp, ds, segment), SPEC_ARTIFACT)
        mlflow.log_params({**flatten("", exp.model_dump(mode="json")), "data.rows": len(data.X),
                           "data.rule_violations_dropped": data.n_rule_violations})
        split = split or split_data(data, exp.test_size, exp.seed)
        with timed(timings, "seconds_search", "search"):
            result = search.search(exp, ds, split.X_train, split.y_train, on_trial=_log_trial(exp))
        with timed(timings, "seconds_fit", "fit"):
            pipe = search.fit_final(exp, ds, result.best_params, split.X_train, split.y_train)
        with timed(timings, "seconds_calibrate", "calibrate"):
            calibration = search.fit_out_of_fold_calibration(exp, ds, result.best_params, split.X_train, split.y_train)
        test = search.evaluate_on(pipe, split.X_test, split.y_test, exp.threshold, calibration)
        if calibration:  # what calibration bought, side by side in the UI
            raw = search.evaluate_on(pipe, split.X_test, split.y_test, exp.threshold)
            mlflow.log_metric("test_calibration_error_uncalibrated", raw["test_calibration_error"])
        mlflow.log_params({f"best.{k}": str(v) for k, v in result.best_params.items()})
        mlflow.log_metrics({**result.best_cv, **test})
        logger.info("  held-out: roc_auc=%.4f ks=%.3f brier=%.4f", test["test_roc_auc"], test["test_ks"],
                    test["test_brier"])
        pictures: tuple[str, ...] = ()
        if exp.explain.enabled:
            with timed(timings, "seconds_explain", "explain"):
                pictures = log_explanations(pipe, exp, ds, split.X_test, split.y_test, calibration)
        with timed(timings, "seconds_log_model", "log_model"):
            info = log_credit_model(pipe, exp, ds, split.X_train, calibration)
        with timed(timings, "seconds_card", "model card"):
            facts = data_facts(split, data.source, data_digest, data.n_rule_violations)
            card = log_card(build_card(exp, ds, pipe, split, facts, calibration, run.info.run_id, pictures))
        mlflow.log_metrics(timings)
        model_tags = nested.model_tags() if nested else {}
        version = register(info, exp, test, data_digest, card, model_tags) if exp.register_as else None
    return TrainingOutcome(run.info.run_id, exp.name, exp.family, info.model_uri, result.best_cv, test, version)


@contextmanager
def ends_failed(run_id: str) -> Iterator[None]:
    """A run that breaks ends FAILED with the reason as a tag; tracking/artifact-store failures become one line.

    Nothing after the failure runs, so a model whose upload failed is never registered. When the server
    itself is gone, recording the failure is best effort: what was logged before stays on the server.
    """
    try:
        yield
    except Exception as exc:
        reason = first_line(exc)[:1000]
        with suppress(MlflowException, requests.RequestException):
            mlflow.MlflowClient().set_tag(run_id, "failure_reason", reason)
        with suppress(MlflowException, requests.RequestException):
            mlflow.end_run("FAILED")
        if isinstance(exc, MlflowException | requests.RequestException):
            raise TrackingError(f"run {run_id} failed: {reason}") from None
        raise


def log_explanations(pipe: Any, exp: ExperimentSpec, ds: DatasetSpec, X: Any, y: Any,
                     calibration: Calibration | None = None) -> tuple[str, ...]:
    """Log the explanation artifacts under `explanations/`; return the artifact paths of its pictures (for the card)."""
    with tempfile.TemporaryDirectory() as tmp:
        figures = write_explanations(pipe, ds, exp.explain, X, y, Path(tmp), calibration)
        mlflow.log_artifacts(tmp, "explanations")
        pictures = tuple(f"explanations/{path.name}" for path in sorted(Path(tmp).glob("*.png")))
    mlflow.log_metrics({k: float(v) for k, v in figures.items()})
    return pictures


def log_card(card: ModelCard) -> str:
    """Log the model card (Markdown and HTML) under `model_card/` of the active run; return the Markdown's URI."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in card_files(card).items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        mlflow.log_artifacts(tmp, CARD_DIR)
    return f"runs:/{mlflow.active_run().info.run_id}/{CARD_DIR}/{CARD_FILES[0]}"


def registered_versions(run_id: str) -> tuple[str, ...]:
    """Each registered version of the run's model, with its aliases and tags as they are now (for the card)."""
    client, lines = mlflow.MlflowClient(), []
    for found in client.search_model_versions(f"run_id = '{run_id}'"):
        mv = client.get_model_version(found.name, found.version)  # the search leaves the aliases out
        aliases = ", ".join(f"@{a}" for a in mv.aliases) or "none"
        tags = "; ".join(f"`{k}` = {str(v)[:120]}" for k, v in sorted(mv.tags.items()))
        lines.append(f"`{mv.name}` version {mv.version}: aliases {aliases}; tags: {tags or 'none'}")
    return tuple(lines)


def rebuild_explanations(run_id: str, data_path: str | None = None) -> None:
    """Recompute the explanation artifacts and the model card of a run's model on its held-out split, into the run."""
    rows = held_out(run_id, data_path)
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").unwrap_python_model()
    except (MlflowException, OSError) as exc:
        raise TrackingError(f"run {run_id} has no creditflow model: {first_line(exc)}") from None
    pipe, calibration, split = model.pipeline, model.scoring.calibration, rows.split
    logged = mlflow.MlflowClient().get_run(run_id).data
    facts = data_facts(split, rows.source, logged.tags.get("data_digest", "unknown"),
                       int(logged.params.get("data.rule_violations_dropped", 0)))
    with mlflow.start_run(run_id=run_id):
        pictures = log_explanations(pipe, rows.experiment, rows.dataset, split.X_test, split.y_test, calibration)
        log_card(build_card(rows.experiment, rows.dataset, pipe, split, facts, calibration, run_id, pictures,
                            registered_versions(run_id)))
    logger.info("explanations and model card of run %s rebuilt", run_id)


def register(info: ModelInfo, exp: ExperimentSpec, test: dict[str, float], data_digest: str, card: str,
             model_tags: dict[str, str] | None = None) -> str:
    """Register the run's model as a new version, described and tagged with its lineage and key metrics.

    `model_tags` go on the registered model itself (a segment model's link to its deployment).
    """
    try:
        mv = mlflow.register_model(info.model_uri, exp.register_as, tags={
            "run_id": info.run_id, "model_family": exp.family, "data_digest": data_digest,
            **{k: f"{v:.4f}" for k, v in test.items() if k in ("test_roc_auc", "test_ks", "test_brier")},
        })
        mlflow.MlflowClient().update_model_version(
            exp.register_as, mv.version,
            description=f"{exp.family} from experiment '{exp.name}' ({exp.search.type} search); "
                        f"held-out ROC AUC {test['test_roc_auc']:.4f}. Model card: {card} "
                        f"(and {CARD_FILES[1]} beside it, which the run's Artifacts tab renders)",
        )
        for key, value in (model_tags or {}).items():
            mlflow.MlflowClient().set_registered_model_tag(exp.register_as, key, value)
    except MlflowException as exc:
        raise TrackingError(f"could not register model '{exp.register_as}': {first_line(exc)}") from None
    logger.info("  registered %s version %s", exp.register_as, mv.version)
    return str(mv.version)
