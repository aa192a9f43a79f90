"""What a training run logged about its data: its validated specs, and its held-out split rebuilt from them.

The promotion gates score challenger and champion on the challenger's held-out rows, and
`creditflow explain` redraws a run's explanations on them: both rebuild the split here.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from creditflow.data.dataset import Split, load_dataset, segment_rows, split_data
from creditflow.errors import DataError, TrackingError
from creditflow.specs import DatasetSpec, ExperimentSpec

SPEC_ARTIFACT = "specs.json"  # the run's experiment and dataset specs, as validated (and a segment run's segment)


@dataclass(frozen=True)
class HeldOut:
    experiment: ExperimentSpec
    dataset: DatasetSpec
    split: Split
    source: str  # where the data came from (a file, or the generated default with its size and seed)


def specs_artifact(exp: ExperimentSpec, ds: DatasetSpec, segment: str | None = None) -> dict:
    """What a training run logs as SPEC_ARTIFACT: its specs, and the segment it was trained on (if one)."""
    logged = {"experiment": exp.model_dump(mode="json"), "dataset": ds.model_dump(mode="json")}
    return {**logged, "segment": segment} if segment is not None else logged


def _logged(run_id: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=SPEC_ARTIFACT, dst_path=tmp)
            return json.loads(Path(path).read_text())
        except (MlflowException, OSError, ValueError):
            raise TrackingError(f"run {run_id} has no {SPEC_ARTIFACT}: not a creditflow training run") from None


def run_specs(run_id: str) -> tuple[ExperimentSpec, DatasetSpec]:
    """The experiment and dataset specs a training run logged; one line if it logged none."""
    specs = _logged(run_id)
    return ExperimentSpec.model_validate(specs["experiment"]), DatasetSpec.model_validate(specs["dataset"])


def held_out(run_id: str, data_path: str | None = None) -> HeldOut:
    """The run's held-out split, rebuilt from its specs on its data set (or on `data_path`, a copy of it).

    A segment model's run keeps the rows of its segment of the whole data set's split: the global model of the
    same experiment never trained on them.
    """
    specs = _logged(run_id)
    exp, ds = ExperimentSpec.model_validate(specs["experiment"]), DatasetSpec.model_validate(specs["dataset"])
    data = load_dataset(ds, data_path)
    split = split_data(data, exp.test_size, exp.seed)
    segment = specs.get("segment")
    if segment is not None:
        split = segment_rows(split, data.segments, segment)
        if split.X_test.empty:
            raise DataError(f"{data.source}: no held-out rows of segment {ds.segment}={segment}")
    return HeldOut(exp, ds, split, data.source)
