"""The served credit model: an MLflow pyfunc returning P(default), the decision and reason codes.

Logged as models-from-code (`model_code.py`), with the fitted pipeline saved by skops (no pickle)
and the decision threshold, reason-code count, display names and dataset spec in the model config,
so every consumer (REST endpoint, spark_udf, registry gates) scores exactly the same way.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import skops.io as sio
from mlflow.models import ModelSignature, infer_signature
from mlflow.models.model import ModelInfo
from mlflow.types.schema import ColSpec, Schema
from sklearn.pipeline import Pipeline

from creditflow.specs import DatasetSpec, ExperimentSpec

MODEL_CODE = Path(__file__).with_name("model_code.py")
PACKAGE_DIR = Path(__file__).parent
OUTPUT_COLUMNS = ("probability", "decision", "reason_codes")
TRUSTED_PREFIXES = ("creditflow.", "sklearn.", "xgboost.", "numpy.", "scipy.")


def save_pipeline(pipe: Pipeline, path: Path) -> None:
    sio.dump(pipe, path)


def load_pipeline(path: str | Path) -> Pipeline:
    """Load a skops file, trusting only types from our allow-list of packages."""
    untrusted = sio.get_untrusted_types(file=path)
    refused = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise ValueError(f"model file holds types outside the allow-list: {', '.join(refused)}")
    return sio.load(path, trusted=untrusted)


def model_config(exp: ExperimentSpec, ds: DatasetSpec) -> dict[str, Any]:
    """What travels with the model: decision policy, reason codes, names and the dataset's value rules."""
    return {
        "threshold": exp.threshold,
        "reason_codes": exp.reason_codes,
        "display_names": ds.display_names(),
        "family": exp.family,
        "dataset_spec": ds.model_dump(mode="json"),
    }


def input_schema(ds: DatasetSpec) -> Schema:
    """Raw applicant columns; numbers are doubles so integers that may be missing (null) still validate."""
    return Schema([
        ColSpec("string" if col.group == "categorical" else "double", raw) for raw, col in ds.columns.items()
    ])


def score_frame(pipe: Pipeline, ds: DatasetSpec, config: dict[str, Any], X: pd.DataFrame) -> pd.DataFrame:
    """P(default), decision at the model's threshold, and top reason codes for each row."""
    from creditflow.explain import raw_shap, reason_codes

    proba = pipe.predict_proba(X)[:, list(pipe.classes_).index(1)]
    codes = reason_codes(raw_shap(pipe, ds, X), ds, int(config["reason_codes"])) if len(X) else []
    return pd.DataFrame({
        "probability": proba.astype("float64"),
        "decision": np.where(proba >= float(config["threshold"]), "decline", "approve"),
        "reason_codes": list(codes),
    })


class CreditModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper: raw applicant rows in, probability + decision + reason codes out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.pipeline = load_pipeline(context.artifacts["pipeline"])
        self.config = dict(context.model_config)
        self.dataset = DatasetSpec.model_validate(self.config["dataset_spec"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        X = model_input[self.dataset.raw_columns].astype({
            raw: "float64" for raw, c in self.dataset.columns.items() if c.group != "categorical"
        })
        return score_frame(self.pipeline, self.dataset, self.config, X)


def log_credit_model(pipe: Pipeline, exp: ExperimentSpec, ds: DatasetSpec, example: pd.DataFrame) -> ModelInfo:
    """Log the fitted pipeline as our pyfunc under the active run, with signature and input example."""
    config = model_config(exp, ds)
    example = example[ds.raw_columns].head(5)
    output = score_frame(pipe, ds, config, example)
    signature = ModelSignature(inputs=input_schema(ds), outputs=infer_signature(example, output).outputs)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.skops"
        save_pipeline(pipe, path)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"pipeline": str(path)},
            code_paths=[str(PACKAGE_DIR)],
            model_config=config,
            signature=signature,
            input_example=example,
        )
