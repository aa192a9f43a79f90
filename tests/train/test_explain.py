"""Explanation artifacts of a training run: every file written, sizes capped, subsamples fixed by the seed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from creditflow.model.shap import model_margin, raw_shap
from creditflow.specs import DatasetSpec, ExplainSpec
from creditflow.train.explain import example_rows, interaction_pair, write_explanations
from tests.model.shap_cases import LATE_90, SPEC


def test_example_rows_run_from_highest_to_lowest_risk(shap_pipes: dict, shap_data: tuple) -> None:
    _, _, X, _ = shap_data
    explained = raw_shap(shap_pipes["logistic"], SPEC, X[:101])
    total = explained.base_value + explained.values.sum(axis=1).to_numpy()
    rows = example_rows(explained, 3)
    assert rows[0] == np.argmax(total) and rows[2] == np.argmin(total)
    assert total[rows[1]] == pytest.approx(np.median(total))
    assert list(example_rows(explained, 3)) == list(rows)
    assert len(example_rows(explained.__class__(0.0, explained.values[:2], explained.data[:2]), 3)) == 2


ARTIFACTS = [
    "partial_dependence_1d.png", "partial_dependence_2d.png", "permutation_importance.png",
    "permutation_importance.csv", "shap_beeswarm.png", "shap_bar.png", "shap_values.csv",
    "shap_waterfall_0.png", "shap_waterfall_1.png", "shap_waterfall_2.png",
    "roc_curve.png", "pr_curve.png", "calibration_curve.png",
]


SMALL = ExplainSpec(pdp_features=3, pdp_rows=300, permutation_rows=600, permutation_repeats=2, shap_rows=150,
                    waterfalls=3, seed=7)


@pytest.mark.parametrize("family", ["logistic", "xgboost"])
def test_write_explanations_writes_every_artifact(family: str, shap_pipes: dict, shap_data: tuple,
                                                  tmp_path: Path) -> None:
    _, _, X, y = shap_data
    facts = write_explanations(shap_pipes[family], SPEC, SMALL, X, y, tmp_path / "explanations")
    out = tmp_path / "explanations"
    assert sorted(p.name for p in out.iterdir()) == sorted(ARTIFACTS)
    for name in ARTIFACTS:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / name).stat().st_size > 5_000

    importance = pd.read_csv(out / "permutation_importance.csv")
    assert list(importance.columns) == ["feature", "label", "importance_mean", "importance_std"]
    assert sorted(importance["feature"]) == sorted(SPEC.raw_columns)
    assert list(importance["label"]) == [SPEC.columns[f].label for f in importance["feature"]]
    assert importance["importance_mean"].is_monotonic_decreasing
    assert importance["feature"][0] == "RevolvingUtilizationOfUnsecuredLines"  # the strongest driver by design
    assert (importance["importance_std"] >= 0).all()

    shap_values = pd.read_csv(out / "shap_values.csv", index_col="row")
    assert list(shap_values.columns) == [*SPEC.raw_columns, "base_value"]
    assert len(shap_values) == SMALL.shap_rows and shap_values.index.isin(X.index).all()
    assert shap_values["base_value"].nunique() == 1
    rows = X.loc[shap_values.index]
    np.testing.assert_allclose(shap_values.sum(axis=1), model_margin(shap_pipes[family], rows), atol=1e-6)

    assert facts["explain_rows"] == len(X)
    assert facts["explain_pdp_rows"] == SMALL.pdp_rows
    assert facts["explain_permutation_rows"] == SMALL.permutation_rows
    assert facts["explain_permutation_repeats"] == SMALL.permutation_repeats
    assert facts["explain_shap_rows"] == SMALL.shap_rows
    assert facts["explain_pdp_features"] == SMALL.pdp_features
    assert facts["explain_waterfalls"] == 3
    assert facts["explain_shap_background_rows"] == (len(X) if family == "logistic" else 0)
    steps = ["permutation", "pdp", "pdp_2d", "shap", "shap_plots", "curves"]
    assert all(facts[f"explain_{s}_seconds"] > 0 for s in steps)
    assert facts["explain_seconds"] >= sum(facts[f"explain_{s}_seconds"] for s in steps) - 0.01


def test_write_explanations_caps_sizes_at_the_rows_given(shap_pipes: dict, shap_data: tuple, tmp_path: Path) -> None:
    _, _, X, y = shap_data
    few = ExplainSpec(pdp_features=2, pdp_rows=10_000, permutation_rows=10_000, permutation_repeats=1,
                      shap_rows=10_000, waterfalls=0)
    facts = write_explanations(shap_pipes["logistic"], SPEC, few, X[:400], y[:400], tmp_path)
    assert facts["explain_pdp_rows"] == facts["explain_shap_rows"] == facts["explain_permutation_rows"] == 400
    assert facts["explain_waterfalls"] == 0 and not list(tmp_path.glob("shap_waterfall_*.png"))
    assert len(pd.read_csv(tmp_path / "shap_values.csv")) == 400


def test_subsamples_are_fixed_by_the_seed(shap_pipes: dict, shap_data: tuple, tmp_path: Path) -> None:
    _, _, X, y = shap_data
    tiny = ExplainSpec(pdp_features=1, pdp_rows=50, permutation_rows=200, permutation_repeats=1, shap_rows=40,
                       waterfalls=1, seed=3)
    first = write_explanations(shap_pipes["logistic"], SPEC, tiny, X, y, tmp_path / "a")
    write_explanations(shap_pipes["logistic"], SPEC, tiny, X, y, tmp_path / "b")
    write_explanations(shap_pipes["logistic"], SPEC, tiny.model_copy(update={"seed": 4}), X, y, tmp_path / "c")
    rows = {d: pd.read_csv(tmp_path / d / "shap_values.csv")["row"].tolist() for d in "abc"}
    assert rows["a"] == rows["b"] != rows["c"]
    assert first["explain_shap_rows"] == 40


def test_interaction_pair_takes_two_columns_of_one_kind(housing_spec: DatasetSpec) -> None:
    table = pd.DataFrame({"feature": ["Housing", "age", "DebtRatio", LATE_90]})
    assert interaction_pair(table, housing_spec) == ("age", "DebtRatio")


def test_import_does_no_work() -> None:
    code = "import sys, creditflow.train.explain; print('shap' in sys.modules, 'matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---------------------------------------------------------------- categorical columns a person can read

LONG_CATEGORIES = ["owner occupied with mortgage", "renting from a private landlord", "living with family", None]


def with_long_housing(X: pd.DataFrame, y: pd.Series, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """The rows with a categorical column of long texts, read as the data layer reads a file."""
    from creditflow.data.dataset import coerce_columns
    from tests.model.shap_cases import spec_with_housing

    rng = np.random.default_rng(seed)
    housing = rng.choice(np.array(LONG_CATEGORIES, dtype=object), len(X), p=[0.45, 0.3, 0.2, 0.05])
    risky = (housing == LONG_CATEGORIES[1]) & (rng.random(len(X)) < 0.3)
    return coerce_columns(X.assign(Housing=housing), spec_with_housing()), (y | risky).astype(int)


def test_waterfalls_print_the_applicants_category_not_its_code(housing_spec: DatasetSpec, shap_data: tuple) -> None:
    import matplotlib.pyplot as plt
    import shap

    from creditflow.model.shap import raw_shap
    from creditflow.train.explain import _explanation
    from tests.model.shap_cases import fit

    X_train, y_train, X, y = shap_data
    X_train, y_train = with_long_housing(X_train, y_train, seed=2)
    X = with_long_housing(X, y, seed=3)[0].head(40)
    explained = raw_shap(fit("logistic", housing_spec, X_train, y_train), housing_spec, X, background=X_train)
    exp = _explanation(explained, housing_spec)
    for row in range(len(X)):
        plt.figure()
        shap.plots.waterfall(exp[row], max_display=len(housing_spec.raw_columns), show=False)
        labels = [t.get_text() for t in plt.gca().get_yticklabels()]
        plt.close("all")
        housing = X["Housing"].iat[row]
        assert f"{housing if housing is not None else 'not given'} = Housing" in labels, labels


def test_partial_dependence_of_a_categorical_column_has_labels_that_do_not_overlap(
        housing_spec: DatasetSpec, shap_data: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Long category texts under the bars are wrapped and slanted: whole, and no two tick labels' boxes overlap."""
    from creditflow.train import explain
    from tests.model.shap_cases import fit

    X_train, y_train, X, y = shap_data
    X_train, y_train = with_long_housing(X_train, y_train, seed=2)
    X = with_long_housing(X, y, seed=3)[0].head(300)
    pipe = fit("logistic", housing_spec, X_train, y_train)
    saved = {}
    monkeypatch.setattr(explain, "_save", lambda fig, path: saved.setdefault("fig", fig))
    explain._plot_pdp(pipe, housing_spec, X, ["Housing"], tmp_path / "pdp.png")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = saved["fig"]
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.canvas.draw()
    axis = next(a for a in fig.axes if a.get_xlabel() == "Housing")
    labels = [t for t in axis.get_xticklabels() if t.get_text()]
    assert sorted(t.get_text().replace("\n", " ") for t in labels) == sorted(c for c in LONG_CATEGORIES if c)
    boxes = [t.get_window_extent(renderer) for t in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert max(len(line) for t in labels for line in t.get_text().split("\n")) <= explain.CATEGORY_WRAP
