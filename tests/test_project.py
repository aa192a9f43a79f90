"""The MLflow Project contract: every parameter reaches its command; the conda env matches the package pins."""

import re
import tomllib

import pytest
import yaml

from tests.conftest import ROOT

MLPROJECT = yaml.safe_load((ROOT / "MLproject").read_text())


@pytest.mark.parametrize("entry", sorted(MLPROJECT["entry_points"]))
def test_every_parameter_appears_in_its_command(entry: str) -> None:
    spec = MLPROJECT["entry_points"][entry]
    used = set(re.findall(r"\{(\w+)\}", spec["command"]))
    assert used == set(spec.get("parameters", {})), f"{entry}: command uses {used}"


def test_required_entry_points_exist() -> None:
    assert {"main", "train", "explain"} <= set(MLPROJECT["entry_points"])
    assert MLPROJECT["conda_env"] == "conda.yaml"


def test_conda_env_pins_match_pyproject() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(p for p in pip if p != "-e .") == sorted(deps)
    assert "python=3.11" in conda["dependencies"]
