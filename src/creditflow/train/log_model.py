"""Logging a fitted pipeline as the served credit model, with everything it carries (training time only)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from sklearn.pipeline import Pipeline

from creditflow.model.artifact import (
    MODEL_CODE,
    PACKAGE_DIR,
    PIPELINE_ARTIFACT,
    input_schema,
    model_config,
    output_schema,
    pip_requirements,
    save_pipeline,
)
from creditflow.model.calibration import Calibration
from creditflow.model.pipeline import predict_default
from creditflow.model.profile import PROFILE_ARTIFACT, reference_profile
from creditflow.model.shap import reference_row
from creditflow.specs import DatasetSpec, ExperimentSpec


def shap_reference(pipe: Pipeline, X_train: pd.DataFrame, ds: DatasetSpec) -> list[float] | None:
    """The reference applicant the served reason codes are computed against (`model.shap.reference_row`)."""
    row = reference_row(pipe, X_train, ds)
    return None if row is None else [float(v) for v in row]



def log_credit_model(pipe: Pipeline, exp: ExperimentSpec, ds: DatasetSpec, X_train: pd.DataFrame,
                     calibration: Calibration | None = None) -> ModelInfo:
    """Log the fitted pipeline as our pyfunc under the active run, with signature and input example.

    `X_train` (the training rows) gives the SHAP reference of linear models, the input example and the
    reference profile the drift monitor compares batches with.
    """
    config = model_config(exp, ds, shap_reference(pipe, X_train, ds), calibration)
    X = X_train[ds.raw_columns]
    profile = reference_profile(X, ds, predict_default(pipe, X, calibration))
    signature = ModelSignature(inputs=input_schema(ds), outputs=output_schema())
    with tempfile.TemporaryDirectory() as tmp:
        path, profile_path = Path(tmp) / f"{PIPELINE_ARTIFACT}.skops", Path(tmp) / f"{PROFILE_ARTIFACT}.json"
        save_pipeline(pipe, path)
        profile_path.write_text(profile.model_dump_json())
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={PIPELINE_ARTIFACT: str(path), PROFILE_ARTIFACT: str(profile_path)},
            code_paths=[str(PACKAGE_DIR)],
            model_config=config,
            signature=signature,
            input_example=X.head(5),
            pip_requirements=pip_requirements(),
        )

