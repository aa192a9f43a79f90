"""The served credit model: an MLflow pyfunc returning P(default), the decision, reason codes and statements.

Logged as models-from-code (`model_code.py`), with its artifacts and config (`model.artifact`), so
every consumer (REST endpoint, spark_udf, registry gates) scores exactly the same way. Scoring goes
through the compiled scorer (`model.compiled`) and the input checks (`model.inputs`). Errors leave
`predict` as `ServingError`: a client's mistake with status 400 and a message naming the problem,
anything else with status 500 and a generic message; neither repeats the applicant's data.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from sklearn.pipeline import Pipeline

from creditflow.data.rules import RuleCheck
from creditflow.errors import BadRequest
from creditflow.model.artifact import DECISIONS, ERROR_SOURCE, PIPELINE_ARTIFACT, check_config_keys, load_pipeline
from creditflow.model.calibration import Calibration, calibrated
from creditflow.model.categories import NotCompilable
from creditflow.model.compiled import FastScorer, compile_scorer
from creditflow.model.inputs import applicant_matrix, cells_of, check_rules
from creditflow.model.reasons import reason_sets
from creditflow.specs import DatasetSpec, spec_from_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scoring:
    """Everything one scoring call needs, built once per loaded model."""

    spec: DatasetSpec
    scorer: FastScorer
    rules: RuleCheck
    threshold: float
    k: int
    labels: list[str]
    statements: list[str]  # adverse-action statements, in the order of labels
    declined_only: bool = False  # model config reason_codes_for: "declined" (adverse-action reasons only); unset: all
    codes_as_json: bool = False  # model config reason_codes_as: "json" (spark_udf moves text far cheaper than lists)
    decisions: np.ndarray = field(default_factory=lambda: np.asarray(DECISIONS, dtype=object))  # config decisions
    calibration: Calibration | None = None  # the served probability is the calibrated one (model.calibration)
    categorical: frozenset[int] = frozenset()  # the raw columns (positions) that are categorical

    @classmethod
    def build(cls, pipe: Pipeline, ds: DatasetSpec, config: dict[str, Any]) -> Scoring:
        reference = config.get("shap_reference")
        ref = None if reference is None else np.asarray(reference, dtype="float64")
        try:
            scorer = compile_scorer(pipe, ds, ref)
        except NotCompilable as exc:
            logger.warning("scoring with the scikit-learn pipeline (slow path): %s", exc)
            scorer = compile_scorer(pipe, ds, ref, fast=False)
        rules = RuleCheck.from_spec(ds, scorer.codes.texts)
        return cls(ds, scorer, rules, float(config["threshold"]), int(config["reason_codes"]), ds.reason_labels(),
                   ds.reason_statements(), config.get("reason_codes_for") == "declined",
                   config.get("reason_codes_as") == "json",
                   np.asarray(config.get("decisions", DECISIONS), dtype=object),
                   Calibration.from_config(config.get("calibration_map")),
                   frozenset(j for j, c in enumerate(ds.raw_columns) if ds.columns[c].group == "categorical"))

    def probability(self, frame: pd.DataFrame) -> np.ndarray:
        """The served P(default) alone, without the reasons' cost (gate (f) scores tens of thousands of rows)."""
        R = applicant_matrix(frame, self.spec, self.scorer.codes)
        check_rules(R, self.rules)
        return calibrated(scorable(self.scorer.probability_of(self.scorer.transform(R))), self.calibration)

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({name: values if name == "probability" else pd.Series(values, dtype=object)
                             for name, values in self.columns(frame).items()})

    def columns(self, frame: pd.DataFrame) -> dict[str, Any]:
        """The answer's columns (`OUTPUT_COLUMNS`): probabilities as floats, the others one item per row, as lists or
        object arrays; what `__call__`'s frame is made of, and what the online endpoint writes as JSON."""
        return self.answer(applicant_matrix(frame, self.spec, self.scorer.codes), frame)

    def answer(self, R: np.ndarray, frame: pd.DataFrame | None = None) -> dict[str, Any]:
        """`columns` of the raw matrix `R` (`applicant_matrix`'s); `frame`, the rows as sent, is read only for a
        category the model never saw (None: a spec without categorical columns)."""
        check_rules(R, self.rules)
        if self.declined_only:  # SHAP only where a decline owes reasons: the costly part
            Z = self.scorer.transform(R)  # once: the declined rows' explanations reuse it
            probability = calibrated(scorable(self.scorer.probability_of(Z)), self.calibration)
            explained = np.flatnonzero(probability >= self.threshold)
            contributions = (self.scorer.raw_contributions(Z[explained]) if len(explained)
                             else np.empty((0, len(self.labels))))
            sets, which = reason_sets(contributions, self.k)
            per_row = np.zeros(len(R), dtype=np.intp)  # 0: no reasons; i + 1: the i-th distinct set
            per_row[explained] = which + 1
        else:
            scored = self.scorer.score(R)
            probability = calibrated(scorable(scored.probability), self.calibration)
            sets, which = reason_sets(scored.contributions, self.k)
            per_row = which + 1  # every row explained
        declined = (probability >= self.threshold).astype(np.int32)  # the index into decisions
        return {"probability": probability, "decision": self.decisions[declined],
                "reason_codes": self._codes(sets, per_row, self.labels),
                "reason_statements": self._statements(sets, per_row, R, frame)}

    def _codes(self, sets: list[tuple[int, ...]], per_row: np.ndarray, texts: list[str]) -> list | np.ndarray:
        """Each row's reasons as `texts` name them, formatted once per distinct set (object columns: MLflow casts
        them cheaply)."""
        named = [[texts[j] for j in columns] for columns in sets]
        if self.codes_as_json:
            return np.asarray(["[]", *(json.dumps(labels) for labels in named)], dtype=object)[per_row]
        pool = [[], *named]  # rows with the same reasons share one list: no per-row allocation (and GC passes)
        return [pool[i] for i in per_row.tolist()]

    def _statements(self, sets: list[tuple[int, ...]], per_row: np.ndarray, R: np.ndarray,
                    frame: pd.DataFrame | None) -> list | np.ndarray:
        """Each row's adverse-action statements; a categorical reason names the applicant's own category."""
        shared = self._codes(sets, per_row, self.statements)
        if not self.categorical:
            return shared
        for index, columns in enumerate(sets, start=1):
            categorical = [(i, j) for i, j in enumerate(columns) if j in self.categorical]
            for row in np.flatnonzero(per_row == index).tolist() if categorical else ():
                items = [self.statements[j] for j in columns]
                for i, j in categorical:
                    items[i] = f"{items[i]}: {self._stated(R, frame, row, j)}"
                shared[row] = json.dumps(items) if self.codes_as_json else items
        return shared

    def _stated(self, R: np.ndarray, frame: pd.DataFrame | None, row: int, j: int) -> str:
        """An applicant's category in raw column j as statements name it: "not given" when missing, else the text as
        sent, read back from its code (a code's vocabulary text is the text that was coded), or from the frame for a
        text the model never saw."""
        column, code = self.spec.raw_columns[j], R[row, j]
        if code != code:
            return "not given"
        return category_texts(frame, column)[row] if code < 0 else self.scorer.codes.texts[column][int(code)]


def scorable(probability: np.ndarray) -> np.ndarray:
    """The probabilities, unless the model could not score a row (a linear model given an ordinal category it never
    saw: scikit-learn refuses the NaN it encodes it as)."""
    total = np.add.reduce(probability)  # NaN exactly when a probability is (the others lie in 0..1); one C call
    if total == total:
        return probability
    bad = np.flatnonzero(np.isnan(probability))
    raise BadRequest(f"{len(bad)} applicant(s) hold a value this model cannot score (a category it never saw); "
                     f"first: row {int(bad[0])}")


def category_texts(frame: pd.DataFrame, column: str) -> np.ndarray:
    """The applicants' categories as sent, as statements name them (a nullable column may be absent: not given)."""
    if column not in frame.columns:
        return np.full(len(frame), "not given", dtype=object)
    return np.asarray(["not given" if v is None or v != v else str(v) for v in cells_of(frame, column)], dtype=object)


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


class CreditModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper: raw applicant rows in, probability + decision + reason codes out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        start = time.perf_counter()
        check_config_keys(context.model_config)
        self.pipeline = load_pipeline(context.artifacts[PIPELINE_ARTIFACT])
        self.config = dict(context.model_config)
        self.dataset = spec_from_config(self.config)
        self.scoring = Scoring.build(self.pipeline, self.dataset, self.config)
        self.load_seconds = time.perf_counter() - start
        logger.debug("credit model (%s) ready in %.2f s", self.config.get("family"), self.load_seconds)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self._answered(self.scoring, model_input)

    def answer_columns(self, model_input: pd.DataFrame) -> dict[str, Any]:
        """`predict`'s answer as columns, without its frame (the online endpoint writes them straight to JSON)."""
        return self._answered(self.scoring.columns, model_input)

    def answer_matrix(self, R: np.ndarray) -> dict[str, Any]:
        """`answer_columns` of rows already typed as the raw matrix, for a spec without categorical columns (the
        online endpoint's parse checks what `applicant_matrix` checks)."""
        if self.scoring.categorical:
            raise TypeError("a spec with categorical columns is answered from its frame (answer_columns)")
        return self._answered(self.scoring.answer, R)

    def _answered(self, score: Callable[[pd.DataFrame], Any], model_input: pd.DataFrame) -> Any:
        """`score(model_input)`, its errors as `ServingError`s that never repeat the input."""
        try:
            return score(model_input)
        except BadRequest as exc:
            raise ServingError(exc.message) from None
        except Exception:
            logger.exception("internal error while scoring %s row(s)", getattr(model_input, "shape", ("?",))[0])
            raise ServingError("internal error while scoring; the server log has the details", internal=True) from None
