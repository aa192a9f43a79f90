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

from creditflow.data.dataset import Split, load_dataset, split_data
from creditflow.errors import TrackingError
from creditflow.specs import DatasetSpec, ExperimentSpec

SPEC_ARTIFACT = "specs.json"  # the run's experiment and dataset specs, as validated


@dataclass(frozen=True)
class HeldOut:
    experiment: ExperimentSpec
    dataset: DatasetSpec
    split: Split
    source: str  # where the data came from (a file, or the generated default with its size and seed)


def run_specs(run_id: str) -> tuple[ExperimentSpec, DatasetSpec]:
    """The experiment and dataset specs a training run logged; one line if it logged none."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=SPEC_ARTIFACT, dst_path=tmp)
            specs = json.loads(Path(path).read_text())
        except (MlflowException, OSError, ValueError):
            raise TrackingError(f"run {run_id} has no {SPEC_ARTIFACT}: not a creditflow training run") from None
    return ExperimentSpec.model_validate(specs["experiment"]), DatasetSpec.model_validate(specs["dataset"])


def held_out(run_id: str, data_path: str | None = None) -> HeldOut:
    """The run's held-out split, rebuilt from its specs on its data set (or on `data_path`, a copy of it)."""
    exp, ds = run_specs(run_id)
    data = load_dataset(ds, data_path)
    return HeldOut(exp, ds, split_data(data, exp.test_size, exp.seed), data.source)
