"""What travels inside the logged model besides the pyfunc: its files, config, signature and pins.

The fitted pipeline is saved by skops (no pickle) and loaded trusting only our allow-list of
packages; `model_config` holds the decision policy, reason codes, names, the dataset spec with its
value rules and the SHAP reference row, so every consumer scores the same way.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import skops.io as sio
from mlflow.exceptions import MlflowException
from mlflow.types.schema import Array, ColSpec, Schema
from sklearn.pipeline import Pipeline

import creditflow
from creditflow.model.calibration import Calibration
from creditflow.specs import DatasetSpec, ExperimentSpec

MODEL_CODE = Path(__file__).with_name("model_code.py")
PACKAGE_DIR = Path(creditflow.__file__).parent  # shipped with every model (code_paths)
OUTPUT_COLUMNS = ("probability", "decision", "reason_codes", "reason_statements")
DECISIONS = ("approve", "decline")  # indexed by probability >= threshold
TRUSTED_PREFIXES = ("creditflow.", "sklearn.", "xgboost.", "numpy.", "scipy.")
ERROR_SOURCE = "creditflow"  # marks our error bodies, so `creditflow serve` knows they are safe to pass on
PIPELINE_ARTIFACT = "pipeline"  # the model artifact's key of the skops file
SERVING_PACKAGES = ("mlflow", "scikit-learn", "xgboost", "shap", "skops", "pandas", "numpy", "scipy", "pydantic",
                    "PyYAML")


def save_pipeline(pipe: Pipeline, path: Path) -> None:
    sio.dump(pipe, path)


def load_pipeline(path: str | Path) -> Pipeline:
    """Load a skops file, trusting only types from our allow-list of packages."""
    untrusted = sio.get_untrusted_types(file=path)
    refused = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise ValueError(f"model file holds types outside the allow-list: {', '.join(refused)}")
    return sio.load(path, trusted=untrusted)


def model_config(exp: ExperimentSpec, ds: DatasetSpec, reference: list[float] | None = None,
                 calibration: Calibration | None = None) -> dict[str, Any]:
    """What travels with the model: decision policy, reason codes, names, value rules, SHAP reference, calibration."""
    return {
        "threshold": exp.threshold,
        "reason_codes": exp.reason_codes,
        "reason_codes_for": exp.reason_codes_for,
        "reason_codes_as": "list",  # "json": one JSON text per row; batch scoring overrides it (serving.batch)
        "decisions": list(DECISIONS),  # the labels of approve and decline, in that order
        "display_names": ds.display_names(),
        "family": exp.family,
        "dataset_spec": ds.model_dump(mode="json"),
        "raw_columns": ds.raw_columns,  # MLflow stores the config with sorted keys: this keeps the order
        "shap_reference": reference,
        "calibration_map": calibration.to_config() if calibration else None,  # not "calibration": MLflow logs the
        # config as run params, where the experiment spec's `calibration` already is
    }


CONFIG_KEYS = frozenset({  # what model_config writes: a key beyond these comes from a newer creditflow
    "threshold", "reason_codes", "reason_codes_for", "reason_codes_as", "decisions", "display_names", "family",
    "dataset_spec", "raw_columns", "shap_reference", "calibration_map",
})
RETIRED_KEYS = frozenset({  # written by earlier versions, read no more (docs/performance.md): accepted and ignored
    "decision_as", "reason_codes_as_key", "freeze_gc_after_load",
})


def check_config_keys(config: dict[str, Any]) -> None:
    """A newer model loaded by older code (a Python process imports one creditflow: the first model's) fails here.

    Otherwise it would be scored without the newer keys' meaning, or fail later on a type Spark did not expect.
    """
    newer = sorted(set(config) - CONFIG_KEYS - RETIRED_KEYS)
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
                   ColSpec(Array("string"), "reason_codes"), ColSpec(Array("string"), "reason_statements")])


def pip_requirements() -> list[str]:
    """This environment's pins of what the model imports (MLflow's own inference reloads the model: slow)."""
    return [f"{name}=={metadata.version(name)}" for name in SERVING_PACKAGES]
