"""Reading the registry: is the tracking server up, which version a URI names, the model's metadata and files.

Every command that fetches a model goes through `resolve_model` (one "is it a creditflow model" check,
version pinned) and `download_model`; MLflow's errors become one `TrackingError` line.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import requests
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import RegisteredModel
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

from creditflow.errors import TrackingError, first_line
from creditflow.specs import DatasetSpec, spec_from_config

YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, when PyYAML was built with it
YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def check_tracking_server() -> str:
    """Fail fast, in one line, when the tracking URI is a server that does not answer."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
        except requests.RequestException as exc:
            raise TrackingError(f"tracking server {uri} is unreachable ({type(exc).__name__})") from None
    return uri


def check_server_for(model_uri: str) -> None:
    """Before a model is fetched from the tracking server, check it answers: MLflow's client retries ~4 minutes."""
    if model_uri.startswith(("models:/", "runs:/")):
        check_tracking_server()


@contextmanager
def mlflow_errors(what: str) -> Iterator[None]:
    """MLflow's errors (unknown name, alias or version; files gone; a refused request) as one TrackingError line."""
    try:
        yield
    except MlflowException as exc:
        raise TrackingError(f"{what}: {first_line(exc)}") from None
    except OSError as exc:
        raise TrackingError(f"{what}: cannot be read ({exc})") from None


@dataclass(frozen=True)
class ModelRef:
    """A creditflow model pinned to one version, and what it expects."""

    uri: str  # pinned: models:/name/version when the registry knows it
    requested: str
    name: str
    version: str
    run_id: str
    dataset: DatasetSpec
    columns: tuple[str, ...]  # signature input names, in order
    required: tuple[str, ...]
    config_keys: frozenset[str] = frozenset()  # the model-config keys the model reads
    unset_keys: frozenset[str] = frozenset()  # those it leaves to the consumer's default (null)
    outputs: tuple[str, ...] = ()  # signature output names (models before reason statements lack them)

    @property
    def label(self) -> str:
        return model_label(self.name, self.version, self.uri)

    @property
    def lineage(self) -> dict[str, str]:
        return {"model_name": self.name, "model_version": self.version, "run_id": self.run_id}


def quoted(text: str) -> str:
    """A value quoted for an MLflow search filter."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def version_uri(name: str, version: str) -> str:
    return f"models:/{name}/{version}"


def follows_registry(model_uri: str) -> bool:
    """Whether the URI names a version through the registry (an alias or a stage) that can move under it."""
    ref = model_uri.removeprefix("models:/")
    return model_uri.startswith("models:/") and ("@" in ref or ("/" in ref and not ref.split("/", 1)[1].isdigit()))


def model_label(name: str, version: str, uri: str) -> str:
    """What answers name the model by: "name/version" for a registered version, else its URI."""
    return f"{name}/{version}" if name else uri


def registry_version(model_uri: str) -> tuple[str, str]:
    """(name, version) for models:/name@alias, models:/name/version or models:/name/stage; else ("", "")."""
    ref = model_uri.removeprefix("models:/")
    client = MlflowClient()
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


def resolve_model(model_uri: str) -> ModelRef:
    """Read the model's metadata (not its weights): version, run, signature and dataset spec."""
    check_server_for(model_uri)
    with mlflow_errors(f"cannot load model {model_uri}"):
        name, version = registry_version(model_uri) if model_uri.startswith("models:/") else ("", "")
        pinned = version_uri(name, version) if name else model_uri
        meta = Model.from_dict(read_mlmodel(pinned))  # its MLmodel file only (not its weights)
    config = meta.flavors.get("python_function", {}).get("config") or {}
    if "dataset_spec" not in config or meta.signature is None:
        raise TrackingError(f"model {model_uri} is not a creditflow model (no dataset spec or signature); "
                            "serve or score it with MLflow's own tools")
    inputs = meta.signature.inputs
    return ModelRef(
        uri=pinned, requested=model_uri, name=name, version=version, run_id=meta.run_id or "",
        dataset=spec_from_config(config),
        columns=tuple(inputs.input_names()), required=tuple(inputs.required_input_names()),
        config_keys=frozenset(config), unset_keys=frozenset(k for k, v in config.items() if v is None),
        outputs=tuple(meta.signature.outputs.input_names()) if meta.signature.outputs else (),
    )


def read_mlmodel(model: str | Path) -> dict[str, Any]:
    """A model's MLmodel file (a URI, or a local model directory) as a dict, parsed by libyaml: MLflow's Model.load
    parses it in pure Python, 8x slower for ours (its config holds the dataset spec; docs/performance.md)."""
    if Path(model).is_dir():
        return yaml.load((Path(model) / MLMODEL_FILE_NAME).read_text(), Loader=YAML_LOADER)
    uri = str(model).rstrip("/")
    if uri.startswith("models:/"):  # a registered version or a logged model (models:/m-...): where its files are
        uri = ModelsArtifactRepository.get_underlying_uri(uri)
    with tempfile.TemporaryDirectory(prefix="creditflow-mlmodel-") as tmp:
        file = mlflow.artifacts.download_artifacts(f"{uri}/{MLMODEL_FILE_NAME}", dst_path=tmp)
        return yaml.load(Path(file).read_text(), Loader=YAML_LOADER)


def download_model(model: ModelRef, into: Path) -> Path:
    """The model's files, downloaded under `into`; one line if they are gone from the artifact store."""
    with mlflow_errors(f"cannot load model {model.uri}"):
        path = Path(mlflow.artifacts.download_artifacts(model.uri, dst_path=str(into)))
    if not (path / MLMODEL_FILE_NAME).is_file():
        raise TrackingError(f"cannot load model {model.uri}: its files are gone from the artifact store")
    return path


@contextmanager
def model_files(model: ModelRef) -> Iterator[Path]:
    """The model's files, downloaded into a temporary directory for the block."""
    with tempfile.TemporaryDirectory(prefix="creditflow-model-") as tmp:
        yield download_model(model, Path(tmp))


def registered_model(client: MlflowClient, name: str) -> RegisteredModel | None:
    """The registered model (aliases, tags); None when no model of that name is registered."""
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def require_model(client: MlflowClient, name: str) -> dict[str, str]:
    """The registered model's aliases; a one-line error when the model does not exist."""
    model = registered_model(client, name)
    if model is None:
        raise TrackingError(f"no registered model named '{name}'")
    return {k: str(v) for k, v in model.aliases.items()}


def alias_parts(model_uri: str) -> tuple[str, str]:
    """(name, alias) of models:/name@alias."""
    name, alias = model_uri.removeprefix("models:/").split("@", 1)
    return name, alias


def alias_target(model_uri: str) -> tuple[str, str]:
    """(name, version) that models:/name@alias names; version "" while the model or its alias does not exist."""
    name, alias = alias_parts(model_uri)
    model = registered_model(MlflowClient(), name)
    return name, str(model.aliases.get(alias, "")) if model else ""


def stages(client: MlflowClient, name: str) -> dict[str, str]:
    """Version → current stage."""
    return {str(v.version): v.current_stage for v in client.search_model_versions(f"name = {quoted(name)}")}


def in_step(client: MlflowClient, name: str) -> bool:
    """Aliases and stages agree: exactly the champion in Production, exactly the challenger (or none) in Staging."""
    aliases = require_model(client, name)
    current = stages(client, name)
    production = [v for v, s in current.items() if s == "Production"]
    staging = [v for v, s in current.items() if s == "Staging"]
    champion, challenger = aliases.get("champion"), aliases.get("challenger")
    return production == ([champion] if champion else []) and staging == ([challenger] if challenger else [])


def when(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(float(epoch_seconds), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of an experiment, created on first use (racing creators agree); the active experiment is left alone."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        return client.get_experiment_by_name(name).experiment_id


def held_out_auc(client: MlflowClient, name: str, version: str) -> float | None:
    """A registered version's held-out ROC AUC from training (its `test_roc_auc` tag, else its run's metric)."""
    with mlflow_errors(f"cannot read model {name} version {version}"):
        mv = client.get_model_version(name, version)
        if "test_roc_auc" in mv.tags:
            return float(mv.tags["test_roc_auc"])
        metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
    return metrics.get("test_roc_auc")
