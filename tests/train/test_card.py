"""The model card: its figures are the held-out figures (with intervals that hold them), its subgroups add up, it
states every feature's reason; every registered version has one, linked from its description, stating the figures
the run logged, and `creditflow explain` regenerates it."""

from __future__ import annotations

import html
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from creditflow.cli import main
from creditflow.data.dataset import Split
from creditflow.model.calibration import Calibration
from creditflow.model.pipeline import predict_default
from creditflow.specs import ColumnSpec, ReportBySpec
from creditflow.train.card import build_card, data_facts, subgroup_labels
from creditflow.train.card_text import card_files
from creditflow.train.metrics import calibration_error, evaluate
from creditflow.train.run import train_and_log
from tests.conftest import small_experiment

AGE = "age"
BANDS = {"<30": (0, 30), "30-44": (30, 45), "45-59": (45, 60), "60+": (60, 200)}  # the flagship spec's age bands


@pytest.fixture(scope="module")
def card(fitted_logistic, small_spec, small_data):
    exp, pipe, split = fitted_logistic
    facts = data_facts(split, small_data.source, "d1g35t", small_data.n_rule_violations)
    return build_card(exp, small_spec, pipe, split, facts, run_id="r1", explanations=("explanations/roc_curve.png",))


def test_the_card_figures_are_the_held_out_figures_inside_their_intervals(card, fitted_logistic) -> None:
    exp, pipe, split = fitted_logistic
    expected = evaluate(split.y_test.to_numpy(), predict_default(pipe, split.X_test), exp.threshold)
    assert card.metrics == expected
    approval = 1 - expected["decline_rate"]
    for name, value in (*((k, expected[k]) for k in ("roc_auc", "ks", "brier")), ("approval_rate", approval)):
        low, high = card.intervals[name]
        assert low < value < high, (name, low, value, high)
    assert card.intervals["calibration_error"][0] < card.intervals["calibration_error"][1]


def test_subgroups_add_up_to_the_held_out_rows_and_approve_below_the_threshold(card, fitted_logistic) -> None:
    exp, pipe, split = fitted_logistic
    p = predict_default(pipe, split.X_test)
    age, y = split.X_test[AGE].to_numpy(), split.y_test.to_numpy()
    assert [s.group for s in card.subgroups] == list(BANDS)
    assert sum(s.rows for s in card.subgroups) == len(split.X_test)
    for s in card.subgroups:
        low, high = BANDS[s.group]
        band = (age >= low) & (age < high)
        assert s.rows == band.sum() and s.defaults == y[band].sum()
        assert s.approval_rate == pytest.approx(np.mean(p[band] < exp.threshold))
        assert s.intervals["approval_rate"][0] <= s.approval_rate <= s.intervals["approval_rate"][1]
        assert s.roc_auc is not None and s.intervals["roc_auc"][0] < s.roc_auc < s.intervals["roc_auc"][1]


def test_a_band_with_one_class_shows_n_a(fitted_logistic, small_spec, small_data) -> None:
    exp, pipe, split = fitted_logistic
    older = split.X_test[AGE] >= 60
    no_defaults = Split(split.X_train, split.X_test, split.y_train, split.y_test.where(~older, 0))
    one_class = build_card(exp, small_spec, pipe, no_defaults, data_facts(no_defaults, small_data.source, "d", 0))
    oldest = one_class.subgroups[-1]
    assert oldest.group == "60+" and oldest.defaults == 0 and oldest.roc_auc is None
    assert np.isnan(oldest.intervals["roc_auc"]).all()
    row = next(line for line in card_files(one_class)["model_card.md"].splitlines() if line.startswith("| Age | 60+"))
    assert row.endswith("| n/a | n/a |")


def test_bands_and_categories_name_each_applicant_missing_ones_not_given() -> None:
    values = pd.Series([18, 29.5, 30, 44, 60, np.nan])
    whole = ColumnSpec(name="age", group="numeric", integer=True)
    assert subgroup_labels(values, whole, ReportBySpec(bands=(30, 45, 60))).tolist() == [
        "<30", "<30", "30-44", "30-44", "60+", "not given"]
    amount = ColumnSpec(name="amount", group="numeric")
    assert subgroup_labels(values, amount, ReportBySpec(bands=(30, 45))).tolist() == [
        "<30", "<30", "30 to <45", "30 to <45", "45+", "not given"]
    purpose = ColumnSpec(name="purpose", group="categorical")
    assert subgroup_labels(pd.Series(["car", None, "business"]), purpose, ReportBySpec()).tolist() == [
        "car", "not given", "business"]


def test_the_card_states_each_reason_the_figures_and_the_monotone_check(card, small_spec) -> None:
    files = card_files(card)
    markdown, page = files["model_card.md"], files["model_card.html"]
    for column in small_spec.columns.values():
        assert f"| {column.statement} |" in markdown and html.escape(column.statement) in page
    for name, key in (("ROC AUC", "roc_auc"), ("KS", "ks"), ("Brier score", "brier")):
        figure = f"{card.metrics[key]:.4f}"
        assert f"| {name} | {figure} |" in markdown and f"<td>{figure}</td>" in page
    assert f"| Approval rate at 0.2 | {100 * (1 - card.metrics['decline_rate']):.2f}% |" in markdown
    assert "`d1g35t`" in markdown and "`explanations/roc_curve.png`" in markdown
    for raw, direction in small_spec.monotone_columns().items():
        assert f"| `{raw}` | {direction} |" in markdown
    assert all(check.violations == 0 for check in card.monotone)  # the logistic model keeps its directions here
    assert "Method: none" in markdown and "Before calibration" not in markdown


def test_a_calibrated_card_shows_the_error_before_and_after(fitted_logistic, small_spec, small_data) -> None:
    exp, pipe, split = fitted_logistic
    squeeze = Calibration("sigmoid", slope=0.8, intercept=-0.3)
    calibrated = build_card(exp.with_overrides(calibration="sigmoid"), small_spec, pipe, split,
                            data_facts(split, small_data.source, "d", 0), squeeze)
    y = split.y_test.to_numpy()
    before = calibration_error(y, predict_default(pipe, split.X_test))
    after = calibration_error(y, predict_default(pipe, split.X_test, squeeze))
    markdown = card_files(calibrated)["model_card.md"]
    assert f"Before calibration: {before:.4f}" in markdown
    assert f"Calibration error (held out): {after:.4f}" in markdown and "Method: sigmoid" in markdown


@pytest.fixture(scope="module")
def registered(tmp_path_factory, small_spec, small_data):
    """A small registered run with explanations, in its own store: (tracking URI, outcome)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        outcome = train_and_log(small_experiment("logistic_baseline.yaml"), small_spec, small_data)
    finally:
        mlflow.set_tracking_uri(None)
    return uri, outcome


def _card_text(uri: str, run_id: str, tmp_path: Path, name: str = "model_card.md") -> str:
    mlflow.set_tracking_uri(uri)
    path = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model_card/{name}", dst_path=str(tmp_path))
    return Path(path).read_text()


def test_every_registered_version_has_a_card_stating_what_the_run_logged(registered, tmp_path) -> None:
    uri, outcome = registered
    client = MlflowClient(uri)
    run = client.get_run(outcome.run_id)
    mv = client.get_model_version("credit-default", outcome.registered_version)
    assert f"Model card: runs:/{outcome.run_id}/model_card/model_card.md" in mv.description
    markdown = _card_text(uri, outcome.run_id, tmp_path)
    metrics = run.data.metrics
    for name, key in (("ROC AUC", "test_roc_auc"), ("KS", "test_ks"), ("Brier score", "test_brier"),
                      ("Calibration error (10 equal-frequency bins)", "test_calibration_error"),
                      ("PR AUC", "test_pr_auc"), ("Log loss", "test_log_loss")):
        assert f"| {name} | {metrics[key]:.4f} |" in markdown, name
    assert f"| Approval rate at 0.2 | {100 * (1 - metrics['test_decline_rate']):.2f}% |" in markdown
    assert f"`{run.data.tags['data_digest']}`" in markdown and f"`{run.data.tags['data_source']}`" in markdown
    pictures = {f.path for f in client.list_artifacts(outcome.run_id, "explanations") if f.path.endswith(".png")}
    assert pictures and all(f"- `{path}`" in markdown for path in pictures)
    assert "<h2>Held-out performance</h2>" in _card_text(uri, outcome.run_id, tmp_path, "model_card.html")
    assert metrics["seconds_card"] > 0


def test_creditflow_explain_regenerates_the_card_with_the_versions_as_they_are(registered, tmp_path,
                                                                               monkeypatch) -> None:
    uri, outcome = registered
    MlflowClient(uri).set_registered_model_alias("credit-default", "challenger", outcome.registered_version)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    before = _card_text(uri, outcome.run_id, tmp_path / "before")
    assert "@challenger" not in before
    assert main(["explain", "--run-id", outcome.run_id]) == 0
    after = _card_text(uri, outcome.run_id, tmp_path / "after")
    assert f"`credit-default` version {outcome.registered_version}: aliases @challenger" in after
    figures = [line for line in before.splitlines() if line.startswith(("| ROC AUC", "| KS", "| Age |"))]
    assert len(figures) == 6 and all(line in after for line in figures)  # the same split, the same figures
