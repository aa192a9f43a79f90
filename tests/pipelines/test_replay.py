"""The replay loop: its decisions (fast, on built reports) and two small scenarios end to end on Spark."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from creditflow.data.dataset import read_applicants
from creditflow.data.months import generate_months
from creditflow.errors import SpecError
from creditflow.monitor.drift import Drift, DriftReport, drift_report
from creditflow.monitor.performance import MEASURED, PerformanceReport, VintagePerformance, performance_report
from creditflow.monitor.policy import MonitoringPolicy
from creditflow.pipelines.replay import (
    ReplaySpec,
    achievable_auc,
    cooling_until,
    load_replay_spec,
    performance_alarm,
    psi_alarm,
    run_replay,
)
from creditflow.registry.client import resolve_model
from creditflow.registry.gates import probabilities
from creditflow.train.metrics import rank_auc
from creditflow.train.run import TrainingOutcome
from tests.conftest import CHAMPION, EXPERIMENTS
from tests.monitor.batches import write_batch

POLICY = MonitoringPolicy()


def drift_of(*psis: float) -> DriftReport:
    columns = [Drift(f"c{i}", f"Column {i}", value, [1.0], [1.0]) for i, value in enumerate(psis)]
    return DriftReport("models:/m/1", {}, "x.csv", 100, 100, 100, columns, None)


def vintage(month: str, version: str, alarms: tuple[str, ...] = (), measured: bool = True) -> VintagePerformance:
    return VintagePerformance(month, "m", version, 100, 100, 0, 0, MEASURED if measured else "not yet measurable",
                              0.86, alarms=alarms)


def report(*vintages: VintagePerformance) -> PerformanceReport:
    return PerformanceReport("2025-06", "p", "o", POLICY, list(vintages), {})


def test_a_psi_at_the_policy_level_calls_for_a_retrain() -> None:
    assert psi_alarm(drift_of(0.05, 0.249), POLICY) is None
    assert psi_alarm(drift_of(0.05, 0.31), POLICY) == "PSI 0.310 of Column 1 >= 0.25"


def test_only_the_current_champions_latest_measured_vintage_alarms() -> None:
    decayed = ("realized AUC 0.80 is credibly below",)
    assert performance_alarm(report(vintage("2025-04", "1", decayed)), "m", "1") == \
        "vintage 2025-04: realized AUC 0.80 is credibly below"
    assert performance_alarm(report(vintage("2025-04", "1", decayed)), "m", "2") is None  # an older champion's
    assert performance_alarm(report(vintage("2025-04", "1", decayed), vintage("2025-05", "1")), "m", "1") is None
    latest_unmeasured = report(vintage("2025-04", "1", decayed), vintage("2025-05", "1", measured=False))
    assert performance_alarm(latest_unmeasured, "m", "1") == "vintage 2025-04: realized AUC 0.80 is credibly below"
    assert performance_alarm(report(), "m", "1") is None


def test_the_cooldown_counts_months_from_the_last_retrain() -> None:
    assert cooling_until("2025-05", None, 3) is None
    assert cooling_until("2025-05", "2025-04", 3) == "2025-07"
    assert cooling_until("2025-07", "2025-04", 3) is None
    assert cooling_until("2026-01", "2025-11", 3) == "2026-02"  # across a year
    assert cooling_until("2025-05", "2025-05", 0) is None


def test_the_achievable_auc_is_the_truths_on_the_outcomes_known(tmp_path: Path) -> None:
    generate_months(tmp_path, 2, "2025-01", rows_per_month=2_000, outcome_lag=1, seed=3)
    truth = np.loadtxt(tmp_path / "truth" / "2025-01.csv", delimiter=",", skiprows=1)
    y = np.loadtxt(tmp_path / "outcomes" / "2025-01.csv", delimiter=",", skiprows=1, usecols=(1,))
    assert achievable_auc(tmp_path, "2025-01", "2025-02") == pytest.approx(rank_auc(y, truth[:, 1]))
    assert achievable_auc(tmp_path, "2025-01", "2025-01") is None  # no outcome known yet


def test_the_shipped_replay_spec_and_its_overrides(tmp_path: Path) -> None:
    spec = load_replay_spec(EXPERIMENTS / "replay.yaml")
    assert (spec.months, spec.rows_per_month, spec.drift, spec.onset) == (18, 20_000, "concept", "2025-10")
    assert (EXPERIMENTS / spec.experiment).is_file() and (EXPERIMENTS / spec.monitoring_policy).is_file()
    assert load_replay_spec(EXPERIMENTS / "replay.yaml", drift="none", rows_per_month=None).drift == "none"
    (tmp_path / "bad.yaml").write_text("start: 2025-13\n")
    with pytest.raises(SpecError, match="'start'"):
        load_replay_spec(tmp_path / "bad.yaml")


@pytest.mark.slow
def test_twelve_undrifted_months_raise_no_alarm_and_a_shifted_population_does(model: TrainingOutcome,
                                                                              tmp_path: Path) -> None:
    """The loop's two alarms on real reports, month by month: twelve months without drift (2025), then incomes and
    utilisation shifted from 2026-01. Scored with the session's champion (its pyfunc: the batch job is the concept
    scenario's), judged by the shipped monitoring policy."""
    months = tmp_path / "months"
    generate_months(months, 14, "2025-01", "covariate", "2026-01", rows_per_month=3_000, outcome_lag=1, seed=11)
    champion = resolve_model(CHAMPION)
    scorer = mlflow.pyfunc.load_model(champion.uri)
    alarms = {}
    for path in sorted((months / "applicants").glob("*.csv")):
        month, rows = path.stem, read_applicants(path, champion.dataset, ids=True)  # typed as the model reads them
        write_batch(tmp_path / "predictions", month, rows["Id"].to_numpy(),
                    probabilities(scorer, rows.drop(columns=["Id"])), champion.version, run_id=champion.run_id)
        performance = performance_report(tmp_path / "predictions", months / "outcomes", POLICY, as_of=month)
        alarms[month] = (psi_alarm(drift_report(CHAMPION, path), POLICY),
                         performance_alarm(performance, "credit-default", champion.version))
    assert performance.latest.vintage == "2026-01"  # every month but the last was judged once known
    assert {m: a for m, a in alarms.items() if m < "2026-01" and any(a)} == {}  # no false alarm in 12 months
    for month in ("2026-01", "2026-02"):
        assert alarms[month][0] is not None and alarms[month][0].startswith("PSI "), alarms[month]


# ---------------------------------------------------------------- scenarios end to end


def scenario(tmp_path: Path, **changes: object) -> tuple[ReplaySpec, Path]:
    """Small months, a small HistGradientBoosting champion without explanations, policies for a few thousand rows."""
    champion = yaml.safe_load((EXPERIMENTS / "replay_champion.yaml").read_text())
    champion.update(dataset=str(EXPERIMENTS / "datasets" / "give_me_some_credit.yaml"), explain={"enabled": False},
                    cv_folds=2, params={"model__max_iter": 60, "model__max_leaf_nodes": 8})
    (tmp_path / "champion.yaml").write_text(yaml.safe_dump(champion))
    promotion = yaml.safe_load((EXPERIMENTS / "promotion.yaml").read_text())
    (tmp_path / "promotion.yaml").write_text(yaml.safe_dump({**promotion, "bootstrap_samples": 200,
                                                             "monotone_rows": 40}))
    # a 90% interval and a margin of 0.01: at 8,000 applicants a month the decay shows below the champion's held-out
    # AUC, and the undrifted months' spread does not
    monitoring = {**POLICY.model_dump(), "auc_margin": 0.01, "interval_level": 0.9, "bootstrap_samples": 100,
                  "cooldown_months": 1}
    (tmp_path / "monitoring.yaml").write_text(yaml.safe_dump(monitoring))
    spec = ReplaySpec(**{"start": "2025-01", "rows_per_month": 8_000, "outcome_lag": 1, "first_rows": 20_000,
                         "window": 1, "experiment": "champion.yaml", "name": "credit-default",
                         "output": str(tmp_path / "replay"), **changes})
    return spec, tmp_path


@pytest.mark.slow
@pytest.mark.spark
def test_concept_drift_is_caught_retrained_and_repaired(spark, tmp_path: Path) -> None:
    """Relation shifted from 2025-04: a drifted vintage alarms within 3 vintages once known and retrains; a retrain on
    the months before the onset is refused, one on a drifted month is promoted (better by the margin), and the months
    the new champion scores come within 0.02 of the achievable AUC, where the first champion's fell far below it."""
    spec, experiments = scenario(tmp_path, months=9, drift="concept", onset="2025-04")
    result = run_replay(spec, experiments, spark=spark)
    steps = {s.month: s for s in result.steps}
    first_alarm = next(s for s in result.steps if s.alarms)
    assert "2025-05" <= first_alarm.month <= "2025-07"  # within 3 vintages of the onset, once outcomes are known
    assert all("PSI" not in a for s in result.steps for a in s.alarms)  # the population did not move
    assert not any(s.alarms for s in result.steps if s.month <= "2025-04")
    for retrained in (s.retrained for s in result.retrains):
        if retrained.plan.train_months[-1] < "2025-04":  # it learned the old relation only: not better, refused
            assert retrained.decision.outcome == "refused", retrained.decision.report()
        if retrained.promoted:  # promoted only when better than the champion by the margin
            gain = next(g for g in retrained.decision.gates if g.key == "b").figures["auc_gain"]
            assert gain >= 0.005, retrained.decision.report()
    assert len(result.promoted) >= 1 and all(r.plan.train_months[-1] >= "2025-04" for r in result.promoted)
    assert steps[first_alarm.month].retrained is not None  # the alarm, outside any cooldown, retrained
    after = [v for v in result.vintages if v.version == result.champion and v.realized_auc is not None]
    assert after, [v.line() for v in result.vintages]
    before = [v for v in result.vintages if v.version == result.first_champion and v.vintage >= "2025-04"]
    for v in after:
        assert v.achievable_auc - v.realized_auc < 0.02, v.line()
    assert max(v.achievable_auc - v.realized_auc for v in before) > 0.04  # the decay it repaired
