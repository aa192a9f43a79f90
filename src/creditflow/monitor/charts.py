"""The monitoring pictures the MLflow UI shows: performance over vintages, reference vs current distributions.

matplotlib is imported when a chart is drawn (not at import time), and only its object API is used
(`Figure`, no pyplot), so drawing leaves no global state behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _figure(rows: int, cols: int, width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def vintages_figure(vintages: Sequence[Any], as_of: str, level: float) -> Any:
    """Realized AUC (interval band, the model's held-out AUC) and expected vs observed default rate by vintage.

    `vintages`: `monitor.performance.VintagePerformance` objects; those not measured are left out.
    """
    measured = [v for v in vintages if v.measured]
    fig, axes = _figure(2, 1, 9, 7)
    auc_ax, rate_ax = axes[0][0], axes[1][0]
    names = [v.vintage for v in measured]
    x = range(len(measured))
    if measured:
        auc = [v.figures["realized_roc_auc"] for v in measured]
        auc_ax.fill_between(x, [v.intervals["realized_roc_auc"][0] for v in measured],
                            [v.intervals["realized_roc_auc"][1] for v in measured], alpha=0.25,
                            label=f"{level:.0%} interval")
        auc_ax.plot(x, auc, marker="o", label="realized ROC AUC")
        auc_ax.plot(x, [v.validation_roc_auc if v.validation_roc_auc is not None else float("nan") for v in measured],
                    linestyle="--", drawstyle="steps-mid", label="model's held-out AUC (training)")
        rate_ax.fill_between(x, [v.intervals["observed_default_rate"][0] for v in measured],
                             [v.intervals["observed_default_rate"][1] for v in measured], alpha=0.25,
                             label=f"{level:.0%} interval")
        rate_ax.plot(x, [v.figures["observed_default_rate"] for v in measured], marker="o", label="observed")
        rate_ax.plot(x, [v.figures["expected_default_rate"] for v in measured], marker="s", label="expected (mean P)")
    for ax, title in ((auc_ax, "Realized ROC AUC by vintage"), (rate_ax, "Default rate by vintage")):
        ax.set_title(title)
        ax.set_xticks(list(x), names, rotation=45, ha="right")
        ax.grid(alpha=0.3)
        if measured:
            ax.legend(loc="best", fontsize=8)
    rate_ax.set_xlabel(f"vintage (outcomes known by {as_of})")
    return fig


def distributions_figure(drifts: Sequence[Any]) -> Any:
    """Reference (training) vs current bin shares, one panel per column (`monitor.drift.Drift` objects)."""
    import numpy as np

    fig, axes = _figure(len(drifts) or 1, 1, 9, 2.6 * max(len(drifts), 1))
    for ax, drift in zip((row[0] for row in axes), drifts, strict=False):
        x = np.arange(len(drift.reference))
        ax.bar(x - 0.2, drift.reference, width=0.4, label="reference (training)")
        ax.bar(x + 0.2, drift.batch, width=0.4, label="current batch")
        ax.set_xticks(x, drift.bins or [str(i) for i in x], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("share of rows")
        ax.set_title(f"{drift.label}: PSI {drift.psi:.3f} ({drift.status})", fontsize=10)
        ax.legend(fontsize=7)
    return fig
