"""The monitoring charts: one panel per shifted column; realized AUC and default rates over vintages."""

from __future__ import annotations

import numpy as np

from creditflow.monitor.charts import distributions_figure, vintages_figure
from creditflow.monitor.drift import Drift
from creditflow.monitor.outcomes import Vintage
from creditflow.monitor.performance import measure
from creditflow.monitor.policy import MonitoringPolicy


def test_distributions_chart_has_a_panel_per_column_with_both_populations() -> None:
    drifts = [Drift("MonthlyIncome", "Monthly income", 0.74, [0.5, 0.5, 0.0], [0.2, 0.7, 0.1], ["< 5e+03", ">= 5e+03",
                                                                                                "missing"]),
              Drift("score", "Score (probability of default)", 0.01, [0.5, 0.5], [0.45, 0.55])]
    fig = distributions_figure(drifts)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Monthly income: PSI 0.740 (major shift)", "Score (probability of default): PSI 0.010 (stable)"]
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    assert heights == [0.5, 0.5, 0.0, 0.2, 0.7, 0.1]  # reference bars, then the batch's
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["< 5e+03", ">= 5e+03", "missing"]


def test_vintages_chart_plots_measured_vintages_only() -> None:
    rng = np.random.default_rng(0)
    policy = MonitoringPolicy(bootstrap_samples=50, min_outcomes=100)
    vintages = []
    for i, month in enumerate(["2025-01", "2025-02", "2025-03"]):
        n = 20 if i == 1 else 1000  # 2025-02: not yet measurable
        p = rng.uniform(0.01, 0.3, n)
        y = (rng.random(n) < p).astype(int)
        vintages.append(measure(Vintage(month, "credit-default", "1", "r", n, y, p, 0, 0), 0.7, policy))
    fig = vintages_figure(vintages, "2025-06", 0.95)
    auc_axis = fig.axes[0]
    realized = auc_axis.get_lines()[0]
    assert list(realized.get_ydata()) == [vintages[0].realized_roc_auc, vintages[2].realized_roc_auc]
    assert [t.get_text() for t in auc_axis.get_xticklabels()] == ["2025-01", "2025-03"]
