"""Explanation artifacts of a held-out split: partial dependence, permutation importance, SHAP, curves.

`write_explanations` writes the plots and tables into a directory; the training run logs that
directory to MLflow (`explanations/`). SHAP values come from `model.shap`, in the raw columns.
No MLflow here, no work at import time; matplotlib and shap are imported when plots are drawn.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from creditflow.model.calibration import Calibration
from creditflow.model.pipeline import is_linear, predict_default
from creditflow.model.shap import RawShap, raw_shap
from creditflow.specs import ColumnSpec, DatasetSpec, ExplainSpec
from creditflow.train.timing import timed

PDP_GRID = 20  # grid points of a 1-D partial dependence (each one is a prediction on pdp_rows rows)
PDP_GRID_2D = 10  # per axis of the 2-D interaction: 10 x 10 predictions
CATEGORY_WRAP = 14  # characters per line of a category's text under a partial-dependence bar


def write_explanations(
    pipe: Pipeline, spec: DatasetSpec, cfg: ExplainSpec, X: pd.DataFrame, y: pd.Series, out_dir: Path,
    calibration: Calibration | None = None,
) -> dict[str, float]:
    """Write PDP, permutation-importance, SHAP and curve artifacts for held-out rows; return sizes and seconds.

    Curves and the waterfalls' titles show the served (calibrated) probability; PDP, permutation importance
    and SHAP describe the model's own score, which calibration only rescales (an increasing map)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    X = X[spec.raw_columns]
    y = pd.Series(np.asarray(y), index=X.index)
    order = np.random.default_rng(cfg.seed).permutation(len(X))  # nested samples: first n of one shuffle

    def sample(n: int) -> tuple[pd.DataFrame, pd.Series]:
        return X.iloc[order[:n]], y.iloc[order[:n]]

    facts: dict[str, float] = {}
    start = time.perf_counter()

    X_perm, y_perm = sample(cfg.permutation_rows)
    with timed(facts, "explain_permutation_seconds"):
        table, repeats = permutation_table(pipe, spec, X_perm, y_perm, cfg.permutation_repeats, cfg.seed)
        table.to_csv(out_dir / "permutation_importance.csv", index=False)
        _plot_permutation(table, repeats, out_dir / "permutation_importance.png")
    top = list(table["feature"][: cfg.pdp_features])
    X_pdp, _ = sample(cfg.pdp_rows)
    with timed(facts, "explain_pdp_seconds"):
        _plot_pdp(pipe, spec, X_pdp, top, out_dir / "partial_dependence_1d.png")
    with timed(facts, "explain_pdp_2d_seconds"):
        _plot_pdp(pipe, spec, X_pdp, [interaction_pair(table, spec)], out_dir / "partial_dependence_2d.png")
    X_shap, _ = sample(cfg.shap_rows)
    with timed(facts, "explain_shap_seconds"):
        explained = raw_shap(pipe, spec, X_shap, background=X)
        _shap_table(explained).to_csv(out_dir / "shap_values.csv", index_label="row")
    with timed(facts, "explain_shap_plots_seconds"):
        waterfalls = _plot_shap(explained, spec, pipe, cfg.waterfalls, out_dir, calibration)
    with timed(facts, "explain_curves_seconds"):
        _plot_curves(y.to_numpy(), predict_default(pipe, X, calibration), out_dir)

    facts.update({
        "explain_rows": len(X),
        "explain_permutation_rows": len(X_perm),
        "explain_permutation_repeats": cfg.permutation_repeats,
        "explain_pdp_rows": len(X_pdp),
        "explain_pdp_features": len(top),
        "explain_shap_rows": len(X_shap),
        "explain_shap_background_rows": len(X) if is_linear(pipe[-1]) else 0,
        "explain_waterfalls": waterfalls,
        "explain_seconds": round(time.perf_counter() - start, 3),
    })
    return facts


def permutation_table(
    pipe: Pipeline, spec: DatasetSpec, X: pd.DataFrame, y: pd.Series, repeats: int, seed: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """ROC-AUC permutation importance of each raw column, most important first, with every repeat."""
    from sklearn.inspection import permutation_importance

    result = permutation_importance(pipe, X, y, scoring="roc_auc", n_repeats=repeats, random_state=seed, n_jobs=1)
    table = pd.DataFrame({
        "feature": spec.raw_columns,
        "label": spec.reason_labels(),
        "importance_mean": result.importances_mean,
        "importance_std": result.importances_std,
    })
    order = np.argsort(-table["importance_mean"].to_numpy(), kind="stable")
    return table.iloc[order].reset_index(drop=True), result.importances[order]


def _plot_permutation(table: pd.DataFrame, repeats: np.ndarray, path: Path) -> None:
    fig, ax = _figure(8, 0.45 * len(table) + 1.5)
    ax.boxplot(repeats[::-1].T, orientation="horizontal", tick_labels=list(table["label"][::-1]))
    ax.axvline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("Decrease in ROC AUC when the column is shuffled (held-out rows)")
    ax.set_title("Permutation importance")
    _save(fig, path)


def _plot_pdp(pipe: Pipeline, spec: DatasetSpec, X: pd.DataFrame, features: list[Any], path: Path) -> None:
    from sklearn.inspection import PartialDependenceDisplay

    X = _float_numeric(X, spec)  # scikit-learn 1.9 refuses integer columns
    names = sorted({f for item in features for f in (item if isinstance(item, tuple) else (item,))})
    categorical = [f for f in names if spec.columns[f].group == "categorical"]
    two_d = any(isinstance(item, tuple) for item in features)
    grid = PDP_GRID_2D if two_d else PDP_GRID
    position = {c: i for i, c in enumerate(X.columns)}  # from_estimator keys custom grids by column index
    custom = {position[f]: _pdp_grid(X[f], spec.columns[f], grid) for f in names}
    cols = 1 if two_d else min(len(features), 2)
    rows = -(-len(features) // cols)
    fig, ax = _figure(5.5 * cols, 4.2 * rows)
    display = PartialDependenceDisplay.from_estimator(
        pipe, X, features, categorical_features=categorical or None, custom_values=custom,
        grid_resolution=grid, kind="average", method="brute", response_method="predict_proba", n_cols=cols, ax=ax,
    )
    for axis in np.ravel(display.axes_):
        if axis is not None:
            _readable_categories(axis, spec)
            _relabel(axis, spec)
    fig.suptitle("Partial dependence of P(default)" + (" (interaction)" if two_d else ""))
    _save(fig, path)


def interaction_pair(table: pd.DataFrame, spec: DatasetSpec) -> tuple[str, str]:
    """The two most important raw columns of one kind (sklearn has no continuous x categorical 2-D PDP)."""
    kinds = [spec.columns[f].group == "categorical" for f in table["feature"]]
    numeric = [f for f, cat in zip(table["feature"], kinds, strict=True) if not cat]
    features = numeric if len(numeric) >= 2 else list(table["feature"][kinds])
    if len(features) < 2:
        raise ValueError("a 2-D partial dependence needs two numeric or two categorical columns")
    return features[0], features[1]


def _float_numeric(X: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    numeric = [c for c in X.columns if spec.columns[c].group != "categorical"]
    return X.astype(dict.fromkeys(numeric, "float64"))


def _pdp_grid(values: pd.Series, col: ColumnSpec, resolution: int) -> np.ndarray:
    """Observed values without missing or sentinels: categories, 5-95% quantiles, or counts up to the 99th."""
    if col.group == "categorical":
        return np.asarray(sorted(values.dropna().astype(str).unique()), dtype=object)
    v = values[values.notna() & ~values.isin(col.sentinels)].to_numpy(dtype="float64")
    if len(v) == 0:
        return np.asarray([0.0, 1.0])
    uniques = np.unique(v)
    if len(uniques) > resolution:
        return np.unique(np.quantile(v, np.linspace(0.05, 0.95, resolution)))
    upper = max(np.quantile(v, 0.99), uniques[min(len(uniques), 4) - 1])  # at least 4 points when there are
    return uniques[uniques <= upper]


def _readable_categories(axis: Any, spec: DatasetSpec) -> None:
    """A categorical axis's category texts wrapped and slanted, so that long ones neither overlap nor get cut."""
    column = spec.columns.get(axis.get_xlabel())
    if column is None or column.group != "categorical":
        return
    ticks = axis.get_xticks()
    texts = [textwrap.fill(label.get_text(), CATEGORY_WRAP) for label in axis.get_xticklabels()]
    axis.set_xticks(ticks, texts, rotation=35, ha="right", rotation_mode="anchor", fontsize=8)


def _relabel(axis: Any, spec: DatasetSpec) -> None:
    labels = {raw: col.label for raw, col in spec.columns.items()}
    axis.set_xlabel(labels.get(axis.get_xlabel(), axis.get_xlabel()))
    axis.set_ylabel(labels.get(axis.get_ylabel(), axis.get_ylabel()))


def _shap_table(explained: RawShap) -> pd.DataFrame:
    return explained.values.assign(base_value=explained.base_value)


def _explanation(explained: RawShap, spec: DatasetSpec) -> Any:
    import shap

    data = explained.data.apply(lambda c: c if pd.api.types.is_numeric_dtype(c) else c.astype("category").cat.codes)
    shown = explained.data.astype(object).where(explained.data.notna(), "not given")  # the applicant's own text
    return shap.Explanation(
        values=explained.values.to_numpy(),
        base_values=np.full(len(explained.values), explained.base_value),
        data=data.to_numpy(dtype="float64"),
        display_data=shown.to_numpy(dtype=object),  # waterfalls print categories as text, not as their codes
        feature_names=[spec.columns[c].label for c in explained.values.columns],
    )


def _plot_shap(explained: RawShap, spec: DatasetSpec, pipe: Pipeline, waterfalls: int, out_dir: Path,
               calibration: Calibration | None = None) -> int:
    import matplotlib.pyplot as plt
    import shap

    exp = _explanation(explained, spec)
    space = "log-odds of default" if explained.output == "log_odds" else "P(default)"
    for name, plot in (("beeswarm", shap.plots.beeswarm), ("bar", shap.plots.bar)):
        fig = plt.figure(figsize=(9, 0.45 * len(spec.raw_columns) + 2))
        plot(exp, max_display=len(spec.raw_columns), ax=fig.gca(), show=False, **_size_kw(plot))
        fig.gca().set_xlabel(f"SHAP value ({space})" if name == "beeswarm" else f"mean |SHAP value| ({space})")
        _save(fig, out_dir / f"shap_{name}.png")
    rows = example_rows(explained, waterfalls)
    risk = predict_default(pipe, explained.data.iloc[rows], calibration) if len(rows) else []
    for i, (row, p) in enumerate(zip(rows, risk, strict=True)):
        plt.figure(figsize=(9, 0.45 * len(spec.raw_columns) + 2))
        shap.plots.waterfall(exp[int(row)], max_display=len(spec.raw_columns), show=False)
        fig = plt.gcf()
        fig.suptitle(f"Applicant {explained.data.index[row]}: P(default) = {p:.3f}; contributions in {space}")
        _save(fig, out_dir / f"shap_waterfall_{i}.png")
    return len(rows)


def _size_kw(plot: Any) -> dict[str, Any]:
    import shap

    return {"plot_size": None} if plot is shap.plots.beeswarm else {}  # beeswarm resizes unless told not to


def example_rows(explained: RawShap, n: int) -> np.ndarray:
    """Positions of n example applicants spread from the highest to the lowest risk (deterministic)."""
    total = explained.base_value + explained.values.sum(axis=1).to_numpy()
    by_risk = np.argsort(-total, kind="stable")
    picks = np.unique(np.linspace(0, len(total) - 1, min(n, len(total))).round().astype(int))
    return by_risk[picks]


def _plot_curves(y: np.ndarray, p: np.ndarray, out_dir: Path) -> None:
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    fig, ax = _figure(6, 5)
    RocCurveDisplay.from_predictions(y, p, ax=ax, name="model", plot_chance_level=True)
    _save(fig, out_dir / "roc_curve.png")
    fig, ax = _figure(6, 5)
    PrecisionRecallDisplay.from_predictions(y, p, ax=ax, name="model", plot_chance_level=True)
    _save(fig, out_dir / "pr_curve.png")
    fig, ax = _figure(6, 5)
    CalibrationDisplay.from_predictions(y, p, n_bins=10, strategy="quantile", ax=ax, name="model")
    ax.set_xlabel("Mean predicted P(default) (quantile bins)")
    _save(fig, out_dir / "calibration_curve.png")


def _figure(width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)

