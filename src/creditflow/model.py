"""The served credit model: an MLflow pyfunc returning P(default), the decision and reason codes.

Logged as models-from-code (`model_code.py`), with the fitted pipeline saved by skops (no pickle)
and the decision threshold, reason-code count, display names, dataset spec (with its value rules)
and the SHAP reference row in the model config, so every consumer (REST endpoint, spark_udf,
registry gates) scores exactly the same way.

Scoring goes through `fastpath` (the pipeline's preprocessing as array code; probabilities equal
the pipeline's) and `validation` (the spec's value rules). Errors leave `predict` as `ServingError`:
a client's mistake with status 400 and a message naming the problem, anything else with status
500 and a generic message; neither repeats the applicant's data.
"""

from __future__ import annotations

import gc
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import skops.io as sio
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.types.schema import Array, ColSpec, Schema
from scipy import sparse
from sklearn.pipeline import Pipeline

from creditflow.fastpath import FastScorer, NotCompilable, compile_scorer, reason_sets
from creditflow.specs import DatasetSpec, ExperimentSpec, spec_from_config
from creditflow.validation import BadRequest, RuleCheck, applicant_matrix, check_rules

logger = logging.getLogger(__name__)

MODEL_CODE = Path(__file__).with_name("model_code.py")
PACKAGE_DIR = Path(__file__).parent
OUTPUT_COLUMNS = ("probability", "decision", "reason_codes")
DECISIONS = ("approve", "decline")  # indexed by probability >= threshold
TRUSTED_PREFIXES = ("creditflow.", "sklearn.", "xgboost.", "numpy.", "scipy.")
ERROR_SOURCE = "creditflow"  # marks our error bodies, so `creditflow serve` knows they are safe to pass on


def save_pipeline(pipe: Pipeline, path: Path) -> None:
    sio.dump(pipe, path)


def load_pipeline(path: str | Path) -> Pipeline:
    """Load a skops file, trusting only types from our allow-list of packages."""
    untrusted = sio.get_untrusted_types(file=path)
    refused = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise ValueError(f"model file holds types outside the allow-list: {', '.join(refused)}")
    return sio.load(path, trusted=untrusted)


def shap_reference(pipe: Pipeline, X_train: pd.DataFrame, ds: DatasetSpec) -> list[float] | None:
    """Mean preprocessed training row: the baseline of linear SHAP values (trees need none)."""
    model = pipe[-1]
    if not (hasattr(model, "coef_") and hasattr(model, "intercept_")):
        return None
    Z = pipe[:-1].transform(X_train[ds.raw_columns])
    Z = Z.toarray() if sparse.issparse(Z) else np.asarray(Z, dtype="float64")
    return [float(v) for v in Z.mean(axis=0)]


def model_config(exp: ExperimentSpec, ds: DatasetSpec, reference: list[float] | None = None) -> dict[str, Any]:
    """What travels with the model: decision policy, reason codes, names, value rules, SHAP reference."""
    return {
        "threshold": exp.threshold,
        "reason_codes": exp.reason_codes,
        "reason_codes_for": exp.reason_codes_for,
        "reason_codes_as": "list",  # "json": one JSON text per row; batch scoring overrides it (see scoring.py)
        "decision_as": "label",  # "index": the position in `decisions`; batch scoring overrides it (see scoring.py)
        "reason_codes_as_key": False,  # one integer per row (reason_key); batch scoring sets it (see scoring.py)
        "decisions": list(DECISIONS),  # the labels in index order: the model and Spark both map indexes by them
        "freeze_gc_after_load": False,  # batch scoring's Spark workers set it (see CreditModel.load_context)
        "display_names": ds.display_names(),
        "family": exp.family,
        "dataset_spec": ds.model_dump(mode="json"),
        "raw_columns": ds.raw_columns,  # MLflow stores the config with sorted keys: this keeps the order
        "shap_reference": reference,
    }


CONFIG_KEYS = frozenset({  # what model_config writes: a key beyond these comes from a newer creditflow
    "threshold", "reason_codes", "reason_codes_for", "reason_codes_as", "reason_codes_as_key", "decision_as",
    "decisions", "freeze_gc_after_load", "display_names", "family", "dataset_spec", "raw_columns", "shap_reference",
})


def _check_config_keys(config: dict[str, Any]) -> None:
    """A newer model loaded by older code (a Python process imports one creditflow: the first model's) fails here.

    Otherwise it would be scored without the newer keys' meaning, or fail later on a type Spark did not expect.
    """
    newer = sorted(set(config) - CONFIG_KEYS)
    if newer:
        raise MlflowException(
            f"model-config key(s) {', '.join(newer)} unknown to the creditflow this process imported (with an older "
            "model): score models logged by different creditflow versions in separate Spark sessions")


def input_schema(ds: DatasetSpec) -> Schema:
    """Raw applicant columns; nullable ones are optional (absent = missing for every row).

    Numbers are doubles, whole-number columns included: MLflow's JSON parser casts to the signature
    type with `astype`, which would turn 45.5 into 45 for a long column without a word and cannot
    hold null. Whole numbers, ranges and nullability are the dataset spec's rules, checked by the model.
    """
    return Schema([
        ColSpec("string" if col.group == "categorical" else "double", raw, required=not col.nullable)
        for raw, col in ds.columns.items()
    ])


def output_schema() -> Schema:
    return Schema([ColSpec("double", "probability"), ColSpec("string", "decision"),
                   ColSpec(Array("string"), "reason_codes")])


@dataclass(frozen=True)
class Scoring:
    """Everything one scoring call needs, built once per loaded model."""

    spec: DatasetSpec
    scorer: FastScorer
    rules: RuleCheck | None
    threshold: float
    k: int
    labels: list[str]
    declined_only: bool = False  # model config reason_codes_for: "declined" (adverse-action reasons only)
    codes_as_json: bool = False  # model config reason_codes_as: "json" (spark_udf moves text far cheaper than lists)
    decision_as_index: bool = False  # model config decision_as: "index" (numbers cross into Spark cheaper than text)
    codes_as_key: bool = False  # model config reason_codes_as_key: one integer per row (see reason_key)
    decisions: np.ndarray = field(default_factory=lambda: np.asarray(DECISIONS, dtype=object))  # config decisions

    @classmethod
    def build(cls, pipe: Pipeline, ds: DatasetSpec, config: dict[str, Any]) -> Scoring:
        reference = config.get("shap_reference")
        ref = None if reference is None else np.asarray(reference, dtype="float64")
        try:
            scorer = compile_scorer(pipe, ds, ref)
        except NotCompilable as exc:
            logger.warning("scoring with the scikit-learn pipeline (slow path): %s", exc)
            scorer = compile_scorer(pipe, ds, ref, fast=False)
        try:
            rules = RuleCheck.from_spec(ds)
        except ValueError:
            rules = None
        return cls(ds, scorer, rules, float(config["threshold"]), int(config["reason_codes"]), ds.reason_labels(),
                   config.get("reason_codes_for", "all") == "declined", config.get("reason_codes_as") == "json",
                   config.get("decision_as") == "index", bool(config.get("reason_codes_as_key")),
                   np.asarray(config.get("decisions", DECISIONS), dtype=object))

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        R = applicant_matrix(frame, self.spec)
        check_rules(R, self.spec, self.rules)
        if self.declined_only:  # SHAP only where a decline owes reasons: the costly part
            Z = self.scorer.transform(R)  # once: the declined rows' explanations reuse it
            probability = self.scorer.probability_of(Z)
            explained = np.flatnonzero(probability >= self.threshold)
            contributions = (self.scorer.raw_contributions(Z[explained]) if len(explained)
                             else np.empty((0, len(self.labels))))
        else:
            scored = self.scorer.score(R)
            probability, explained, contributions = scored.probability, np.arange(len(R)), scored.contributions
        sets, which = reason_sets(contributions, self.k)
        per_row = np.zeros(len(R), dtype=np.intp)  # 0: no reasons; i + 1: the i-th distinct set
        per_row[explained] = which + 1
        declined = (probability >= self.threshold).astype(np.int32)  # the index into decisions
        return pd.DataFrame({
            "probability": probability,
            "decision": declined if self.decision_as_index else pd.Series(self.decisions[declined], dtype=object),
            "reason_codes": self._codes(sets, per_row),
        })

    def _codes(self, sets: list[tuple[int, ...]], per_row: np.ndarray) -> pd.Series:
        """Each row's reason codes, formatted once per distinct set (object columns: MLflow casts them cheaply)."""
        if self.codes_as_key:
            keys = np.asarray([0, *(reason_key(columns, len(self.labels)) for columns in sets)], dtype=np.int64)
            return pd.Series(keys[per_row])
        named = [[self.labels[j] for j in columns] for columns in sets]
        if self.codes_as_json:
            texts = np.asarray(["[]", *(json.dumps(labels) for labels in named)], dtype=object)
            return pd.Series(texts[per_row], dtype=object)
        pool = [[], *named]  # rows with the same reasons share one list: no per-row allocation (and GC passes)
        return pd.Series([pool[i] for i in per_row.tolist()], dtype=object)


def reason_key(columns: tuple[int, ...], n_columns: int) -> int:
    """Reason codes as one integer: the i-th reason's column position + 1 is its i-th digit in base n_columns + 1.

    0 means no reasons. Spark turns it back into the JSON text (scoring.reason_codes_json): an integer
    crosses from the Python workers into Spark for next to nothing, text value by value.
    """
    return sum((j + 1) * (n_columns + 1) ** i for i, j in enumerate(columns))


def score_frame(pipe: Pipeline, ds: DatasetSpec, config: dict[str, Any], X: pd.DataFrame) -> pd.DataFrame:
    """P(default), decision at the model's threshold, and top reason codes for each row.

    Raises `validation.BadRequest` when a row breaks the dataset spec's value rules.
    """
    return Scoring.build(pipe, ds, config)(X)


class ServingError(MlflowException):
    """An error `predict` reports: MLflow's scoring server maps the error code to the HTTP status.

    MLflow's scoring server rewrites the message of any MlflowException raised by `predict` to
    "Failed to predict data '<the whole input>'..." before returning it; this class keeps its own
    message, so neither `mlflow models serve` nor `creditflow serve` echoes applicant data.
    """

    def __init__(self, message: str, internal: bool = False):
        self._safe = message
        super().__init__(message, error_code=INTERNAL_ERROR if internal else INVALID_PARAMETER_VALUE,
                         source=ERROR_SOURCE)

    @property
    def message(self) -> str:
        return self._safe

    @message.setter
    def message(self, value: str) -> None:  # MLflow's rewrite (with the input in it) is dropped
        pass


def _freeze_gc() -> None:
    """Leave everything alive now (imports, this model) out of the cyclic collector's later passes.

    For processes that live long and load the model often: MLflow's spark_udf loads it again in every
    task in local mode, and each load set off a full collection of a Spark worker's ~270k objects
    (~0.14 CPU-s) that found next to nothing. Frozen objects are still freed by reference counting.
    """
    gc.collect()
    gc.freeze()


class CreditModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper: raw applicant rows in, probability + decision + reason codes out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        start = time.perf_counter()
        _check_config_keys(context.model_config)
        self.pipeline = load_pipeline(context.artifacts["pipeline"])
        self.config = dict(context.model_config)
        self.dataset = spec_from_config(self.config)
        self.scoring = Scoring.build(self.pipeline, self.dataset, self.config)
        if self.config.get("freeze_gc_after_load"):
            _freeze_gc()
        self.load_seconds = time.perf_counter() - start
        logger.info("credit model (%s) ready in %.2f s", self.config.get("family"), self.load_seconds)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        try:
            return self.scoring(model_input)
        except BadRequest as exc:
            raise ServingError(exc.message) from None
        except Exception:
            logger.exception("internal error while scoring %s row(s)", getattr(model_input, "shape", ("?",))[0])
            raise ServingError("internal error while scoring; the server log has the details", internal=True) from None


SERVING_PACKAGES = ("mlflow", "scikit-learn", "xgboost", "shap", "skops", "pandas", "numpy", "scipy", "pydantic",
                    "PyYAML")


def pip_requirements() -> list[str]:
    """This environment's pins of what the model imports (MLflow's own inference reloads the model: slow)."""
    return [f"{name}=={metadata.version(name)}" for name in SERVING_PACKAGES]


def log_credit_model(pipe: Pipeline, exp: ExperimentSpec, ds: DatasetSpec, X_train: pd.DataFrame) -> ModelInfo:
    """Log the fitted pipeline as our pyfunc under the active run, with signature and input example.

    `X_train` (the training rows) gives the SHAP reference of linear models, the input example and the
    reference profile the drift monitor compares batches with.
    """
    from creditflow.monitor import PROFILE_ARTIFACT, reference_profile  # training only: not in serving's imports

    config = model_config(exp, ds, shap_reference(pipe, X_train, ds))
    X = X_train[ds.raw_columns]
    profile = reference_profile(X, ds, pipe.predict_proba(X)[:, 1])
    signature = ModelSignature(inputs=input_schema(ds), outputs=output_schema())
    with tempfile.TemporaryDirectory() as tmp:
        path, profile_path = Path(tmp) / "pipeline.skops", Path(tmp) / f"{PROFILE_ARTIFACT}.json"
        save_pipeline(pipe, path)
        profile_path.write_text(profile.model_dump_json())
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"pipeline": str(path), PROFILE_ARTIFACT: str(profile_path)},
            code_paths=[str(PACKAGE_DIR)],
            model_config=config,
            signature=signature,
            input_example=X.head(5),
            pip_requirements=pip_requirements(),
        )
