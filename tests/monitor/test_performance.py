"""Realized performance by vintage: intervals, alarms decided by the interval, one MLflow run per vintage."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from creditflow.cli import main
from creditflow.data.months import generate_months
from creditflow.data.synthetic import sigmoid
from creditflow.monitor.drift import MONITOR_EXPERIMENT
from creditflow.monitor.outcomes import Vintage
from creditflow.monitor.performance import measure
from creditflow.monitor.policy import MonitoringPolicy
from creditflow.train.metrics import rank_auc
from creditflow.train.run import TrainingOutcome
from tests.monitor.batches import write_batch

POLICY = MonitoringPolicy(bootstrap_samples=100, min_outcomes=200)


def vintage(y: np.ndarray, p: np.ndarray) -> Vintage:
    return Vintage("2025-05", "credit-default", "3", "run", len(y), y, p, unknown=0, pending=0)


def drawn(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes drawn from known probabilities (a perfectly calibrated model)."""
    rng = np.random.default_rng(seed)
    p = sigmoid(rng.normal(-3, 1.2, n))
    return (rng.random(n) < p).astype(int), p


def test_a_calibrated_model_at_its_promised_auc_raises_no_alarm() -> None:
    y, p = drawn(5000)
    auc = rank_auc(y, p)
    result = measure(vintage(y, p), validation_auc=auc, policy=POLICY)
    low, high = result.intervals["realized_roc_auc"]
    assert result.measured and low < result.figures["realized_roc_auc"] == auc < high
    rate_low, rate_high = result.intervals["observed_default_rate"]
    assert rate_low < result.figures["expected_default_rate"] < rate_high
    assert result.alarms == () and not result.alarm and result.auc_interval == (low, high)


def test_the_interval_not_the_point_estimate_decides_the_auc_alarm() -> None:
    y, p = drawn(5000)
    auc = rank_auc(y, p)
    high = measure(vintage(y, p), auc, POLICY).intervals["realized_roc_auc"][1]
    just_inside = measure(vintage(y, p), validation_auc=high + POLICY.auc_margin - 0.001, policy=POLICY)
    assert auc < just_inside.validation_roc_auc - POLICY.auc_margin  # the point estimate alone would alarm
    assert just_inside.alarms == ()
    beyond = measure(vintage(y, p), validation_auc=high + POLICY.auc_margin + 0.001, policy=POLICY)
    assert beyond.alarm and len(beyond.alarms) == 1
    assert "credibly more than 0.02 below the model's held-out AUC" in beyond.alarms[0]


def test_defaults_credibly_above_expected_alarm() -> None:
    y, p = drawn(5000)
    result = measure(vintage(y, p * 0.7), validation_auc=None, policy=POLICY)
    assert [a.split(" [")[0] for a in result.alarms] == [
        f"observed default rate {y.mean():.2%}"]
    assert result.figures["calibration_error"] > measure(vintage(y, p), None, POLICY).figures["calibration_error"]


def test_too_few_outcomes_or_one_class_is_not_yet_measurable() -> None:
    y, p = drawn(150)
    assert measure(vintage(y, p), 0.8, POLICY).status == "not yet measurable: 150 outcome(s) known, needs 200"
    none = measure(vintage(np.zeros(300, int), np.full(300, 0.1)), 0.8, POLICY)
    assert not none.measured and none.figures == {} and none.alarms == ()


@pytest.mark.integration
def test_performance_command_on_a_drifted_month(own_champion_store: tuple[str, TrainingOutcome], tmp_path: Path,
                                                capsys) -> None:
    """The session champion scores two months, the second after a concept-drift onset: exit 3 on it, one run
    per vintage (reused when reported again), the chart, and exit 2 once an outcome names an unscored id."""
    model = own_champion_store[1]
    months = tmp_path / "months"
    generate_months(months, 2, "2025-01", "concept", onset="2025-02", rows_per_month=6000, outcome_lag=1)
    champion = mlflow.pyfunc.load_model(model.model_uri)
    predictions = tmp_path / "predictions"
    for month in ("2025-01", "2025-02"):
        applicants = pd.read_csv(months / "applicants" / f"{month}.csv")
        p = champion.predict(applicants.drop(columns="Id").astype("float64"))["probability"].to_numpy()
        write_batch(predictions, month, applicants["Id"].to_numpy(), p, version=model.registered_version,
                    run_id=model.run_id)
    policy = tmp_path / "monitoring.yaml"
    policy.write_text("bootstrap_samples: 100\nmin_outcomes: 500\nauc_margin: 0.0\n")
    args = ["monitor", "performance", "--outcomes", str(months / "outcomes"), "--predictions", str(predictions),
            "--as-of", "2025-03", "--policy", str(policy), "--report", str(tmp_path / "report.json")]
    assert main(args) == 3
    out, err = capsys.readouterr()
    assert err.startswith("error: vintage 2025-02: realized AUC") and err.count("\n") == 1
    report = json.loads((tmp_path / "report.json").read_text())
    first, second = report["vintages"]
    assert (first["outcomes"], second["outcomes"], report["latest"]) == (6000, 6000, "2025-02")
    assert first["alarms"] == [] and second["realized_roc_auc"] < first["realized_roc_auc"] - 0.03
    truth = pd.read_csv(months / "truth" / "2025-02.csv")["true_probability"]
    labels = pd.read_csv(months / "outcomes" / "2025-02.csv")["SeriousDlqin2yrs"]
    assert second["realized_roc_auc"] < rank_auc(labels.to_numpy(), truth.to_numpy()) - 0.05

    experiment = mlflow.get_experiment_by_name(MONITOR_EXPERIMENT)
    performance = "tags.`creditflow.kind` = 'performance'"
    runs = mlflow.search_runs([experiment.experiment_id], performance, output_format="list")
    assert sorted(r.data.tags["vintage"] for r in runs) == ["2025-01", "2025-02"]
    latest = next(r for r in runs if r.data.tags["vintage"] == "2025-02")
    assert latest.data.tags["model_version"] == model.registered_version
    assert latest.data.metrics["realized_roc_auc"] == pytest.approx(second["realized_roc_auc"])
    assert {"realized_ks", "expected_default_rate", "observed_default_rate", "calibration_error"} <= set(
        latest.data.metrics)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(latest.info.run_id)}
    assert {"performance_over_vintages.png", "performance_report.json"} <= artifacts

    outcomes = pd.read_csv(months / "outcomes" / "2025-01.csv")
    extra = pd.DataFrame({"Id": [10**9], "SeriousDlqin2yrs": [0], "known_month": ["2025-02"]})
    pd.concat([outcomes, extra]).to_csv(months / "outcomes" / "2025-01.csv", index=False)
    assert main(args) == 2
    assert capsys.readouterr().err == ("error: 1 outcome(s) in " + str(months / "outcomes") + " have ids their "
                                       "batch never scored (counted in the report's unknown column)\n")
    assert len(mlflow.search_runs([experiment.experiment_id], performance, output_format="list")) == 2  # reused
