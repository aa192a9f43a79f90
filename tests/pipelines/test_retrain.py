"""`creditflow retrain`: the champion's own spec on the labelled window, through the gates on a month neither saw."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from creditflow.cli import main as cli
from creditflow.data.months import generate_months
from creditflow.pipelines.retrain import EVALUATE_MONTH, RETRAINED_FROM, TRAIN_MONTHS, plan_retrain, retrain
from creditflow.registry.audit import TAG
from creditflow.registry.policy import PromotionPolicy, load_policy
from creditflow.train.run import TrainingOutcome
from tests.conftest import EXPERIMENTS

NAME = "credit-default"
SHIPPED = EXPERIMENTS / "promotion.yaml"


@pytest.fixture(scope="module")
def concept_months(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four months of 2,000 applicants, the relation shifted from 2025-02, outcomes known a month later."""
    folder = tmp_path_factory.mktemp("months")
    generate_months(folder, 4, "2025-01", "concept", "2025-02", rows_per_month=2_000, outcome_lag=1, seed=7)
    return folder


@pytest.fixture(scope="module")
def policy() -> PromotionPolicy:
    """The shipped policy (its margin above zero), with the registry tests' smaller bootstrap and monotone sample."""
    return load_policy(SHIPPED).model_copy(update={"bootstrap_samples": 200,
                                                                          "monotone_rows": 40})


def test_the_plan_holds_out_the_newest_labelled_month(model: TrainingOutcome, concept_months: Path) -> None:
    plan = plan_retrain(MlflowClient(), NAME, concept_months, 2, "2025-04")
    assert (plan.champion, plan.train_months, plan.evaluate_month) == (model.registered_version,
                                                                      ("2025-01", "2025-02"), "2025-03")
    assert plan.champion_run == model.run_id
    assert plan_retrain(MlflowClient(), NAME, concept_months, 1, "2025-03").train_months == ("2025-01",)


@pytest.mark.parametrize(("argv", "message"), [
    (["--window", "3", "--as-of", "2025-04"],
     "3 application month(s) labelled by 2025-04 (2025-01..2025-03); a window of 3 needs 4 (the most recent is "
     "held out to compare the models)"),
    (["--as-of", "2025-01"], "no application month has all its outcomes known by 2025-01"),
    (["--as-of", "April"], "--as-of must be a month as YYYY-MM, got 'April'"),
    (["--window", "0"], "the window must be at least one month, got 0"),
    (["--name", "nobody"], "no registered model named 'nobody'"),
])
def test_bad_input_is_one_line(model, concept_months, capsys, argv: list[str], message: str) -> None:
    assert cli(["retrain", "--months", str(concept_months), "--policy", str(SHIPPED), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_no_champion_is_one_line(own_champion_store, concept_months, capsys) -> None:
    MlflowClient().delete_registered_model_alias(NAME, "champion")
    assert cli(["retrain", "--months", str(concept_months), "--policy", str(SHIPPED)]) == 2
    assert capsys.readouterr().err == ("error: 'credit-default' has no @champion: there is no spec to retrain "
                                       "(promote a first champion)\n")


@pytest.mark.slow
def test_a_better_retrain_is_promoted_and_a_copy_of_it_is_not(own_champion_store, concept_months, policy,
                                                                tmp_path: Path) -> None:
    """The drifted window beats the champion on the held-out drifted month; the same retrain again gains nothing."""
    champion = own_champion_store[1].registered_version
    first = retrain(NAME, concept_months, 1, "2025-04", policy, tmp_path / "retrain")
    assert (first.plan.train_months, first.plan.evaluate_month) == (("2025-02",), "2025-03")
    assert first.decision.outcome == "promoted", first.decision.report()
    gates = {g.key: g for g in first.decision.gates}
    assert gates["b"].figures["auc_gain"] >= policy.min_auc_gain and gates["b"].figures["auc_gain_ci_low"] > 0
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == first.version != champion
    run = client.get_run(first.run_id).data
    assert (run.tags[TRAIN_MONTHS], run.tags[EVALUATE_MONTH], run.tags[RETRAINED_FROM]) == ("2025-02", "2025-03",
                                                                                            champion)
    assert run.tags["data_source"] == str(tmp_path / "retrain" / "2025-04" / "train-2025-02-2025-02.parquet")
    assert run.params["data.rows"] == str(2_000 - int(run.params["data.rule_violations_dropped"]))
    audit = mlflow.get_run(first.decision.audit_run).data
    assert audit.params["eval.data_rows"] == "all" and audit.params["eval.source"].endswith("evaluate-2025-03.parquet")
    assert int(audit.params["eval.rows"]) > 1_900  # the whole month, not a held-out fifth of it
    assert "retrained on 2025-02..2025-02, compared on 2025-03 (as of 2025-04)" in audit.tags[f"{TAG}reason"]

    again = retrain(NAME, concept_months, 1, "2025-04", policy, tmp_path / "retrain")  # same spec, same window
    assert again.decision.outcome == "refused" and again.decision.exit_code == 3
    assert "not better than the champion by the margin +0.0050 (it scores every row as the champion does)" in \
        again.decision.reason
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == first.version
