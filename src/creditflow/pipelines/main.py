"""The `main` pipeline (`make demo`): train every demo experiment, promote the best, batch-score a sample, check drift.

Which experiments run, and the promotion policy, come from `experiments/main.yaml`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict, Field

from creditflow.data.dataset import load_dataset
from creditflow.data.synthetic import TARGET, generate_credit_data
from creditflow.monitor.drift import monitor_drift
from creditflow.registry.client import check_tracking_server, quoted, version_uri
from creditflow.registry.policy import PromotionPolicy, PromotionRequest, load_policy
from creditflow.registry.promote import Decision, promote
from creditflow.serving.batch.job import BatchResult, run_batch
from creditflow.serving.batch.plan import plan_batch
from creditflow.serving.batch.spark import SparkConfig, start_spark
from creditflow.specs import ExperimentSpec, load_config, load_experiment_spec
from creditflow.train.run import TrainingOutcome, train_and_log

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

PIPELINE_SPEC = "main.yaml"  # in the experiments folder
DEMO_SAMPLE = Path("data") / "demo-applicants.parquet"  # the demo's new applicants (score_sample)


class MainSpec(BaseModel):
    """The demo's experiments (spec files, in order) and its promotion policy, relative to the experiments folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    experiments: list[str] = Field(min_length=1)
    policy: str = "promotion.yaml"


@dataclass(frozen=True)
class Budget:
    """Small budgets that keep the demo within minutes: trials and seconds per search, CV folds."""

    trials: int = 4
    cv_folds: int = 3
    search_seconds: float = 90.0  # a search starts no new trial after this (the first always runs)


def budgeted(exp: ExperimentSpec, budget: Budget) -> ExperimentSpec:
    changes: dict = {"cv_folds": budget.cv_folds}
    if exp.search.type == "bayesian":
        changes["search.trials"] = min(exp.search.trials, budget.trials)
        changes["search.timeout_seconds"] = budget.search_seconds
    return exp.with_overrides(**changes)


def run_main(experiments_dir: Path, data_path: str | None, budget: Budget) -> list[TrainingOutcome]:
    """Every demo experiment on the same data, the best promoted to @champion; returns outcomes best first."""
    main = load_config(MainSpec, experiments_dir / PIPELINE_SPEC, "pipeline spec")
    specs = [load_experiment_spec(experiments_dir / name) for name in main.experiments]
    policy = load_policy(experiments_dir / main.policy)
    check_tracking_server()
    data = load_dataset(specs[0][1], data_path)
    logger.info("data: %d rows from %s (%d broke value rules)", len(data.X), data.source, data.n_rule_violations)
    outcomes = []
    for exp, ds in specs:
        logger.info("== %s (%s, %s)", exp.name, exp.family, exp.search.type)
        outcomes.append(train_and_log(budgeted(exp, budget), ds, data))
    outcomes.sort(key=lambda o: o.cv["cv_roc_auc_mean"], reverse=True)
    logger.info("\nexperiment               cv_roc_auc  test_roc_auc  test_ks  version")
    for o in outcomes:
        logger.info("%-24s %.4f      %.4f        %.3f    %s", o.experiment, o.cv["cv_roc_auc_mean"],
                    o.test["test_roc_auc"], o.test["test_ks"], o.registered_version or "-")
    name_of = {exp.name: exp.register_as for exp, _ in specs}
    registered = [o for o in outcomes if o.registered_version]
    if registered:  # best first to @champion through the gates; a refusal is shown, not raised
        name = name_of[registered[0].experiment]
        versions = [o.registered_version for o in registered if name_of[o.experiment] == name]
        logger.info("\n== promotion of the best model (%s) to %s@champion", registered[0].experiment, name)
        promote_best(name, versions, policy, data_path)
    return outcomes


def promote_best(name: str, versions: list[str], policy: PromotionPolicy, data_path: str | None) -> Decision:
    """The best version (first) to @champion through the gates; when they refuse it, the next best is tried.

    Every decision is shown and audited, none raised.
    """
    for version in versions:
        decision = promote(PromotionRequest(name=name, version=version, data=data_path), policy)
        logger.info("%s", decision.report())
        if decision.exit_code == 0:
            return decision
    logger.info("no new version of '%s' passed the gates; @champion unchanged", name)
    return decision


def champion_or_best(outcomes: list[TrainingOutcome], alias: str = "champion") -> str:
    """models:/<name>@champion when the alias exists, else the best outcome's registered version (or its URI)."""
    client = mlflow.MlflowClient()
    best = outcomes[0]
    versions = client.search_model_versions(f"run_id = {quoted(best.run_id)}")
    if not versions:
        return best.model_uri
    name = versions[0].name
    try:
        client.get_model_version_by_alias(name, alias)
        return f"models:/{name}@{alias}"
    except MlflowException:
        return version_uri(name, str(versions[0].version))


def score_sample(outcomes: list[TrainingOutcome], rows: int, output: str | Path = "predictions",
                 spark: SparkSession | None = None) -> BatchResult:
    """Generate `rows` new applicants (no target) and batch-score them with the champion.

    Starts (and stops) its own Spark session unless one is given.
    """
    DEMO_SAMPLE.parent.mkdir(parents=True, exist_ok=True)
    generate_credit_data(rows, seed=2026).frame.drop(columns=[TARGET]).to_parquet(DEMO_SAMPLE, index=False)
    model_uri = champion_or_best(outcomes)
    logger.info("\n== batch scoring %s new applicants (%s) with %s", f"{rows:,}", DEMO_SAMPLE, model_uri)
    plan = plan_batch(model_uri, DEMO_SAMPLE, output)
    own = spark is None
    spark = start_spark(SparkConfig()) if own else spark
    try:
        result = run_batch(spark, plan)
    finally:
        if own:
            spark.stop()
    logger.info("%s", result.summary())
    logger.info("look one up: creditflow predictions get --id 1 --output %s", output)
    return result


def demo_tail(outcomes: list[TrainingOutcome], sample_rows: int) -> None:
    """The demo ends by batch-scoring a sample with the champion, then reporting the sample's drift."""
    result = score_sample(outcomes, sample_rows)
    logger.info("\n== drift of the sample against %s's training data", result.model_uri)
    monitor_drift(result.model_uri, DEMO_SAMPLE)
