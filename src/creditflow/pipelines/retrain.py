"""Retraining: the champion's own experiment spec, trained on the most recent labelled months, through the gates.

`retrain` reads the champion's experiment and dataset specs from its run's `specs.json`, trains them on the
`window` most recent application months whose outcomes are known (`data.months.labelled_window`), registers the
version, and promotes it through the usual gates (`registry.promote`), scored on every row of the most recent
labelled month, which neither model trained on. A model that is not better is refused, and the refusal is
audited like any other decision. The window and the evaluation month are written as Parquet files (the
training run's data source, the audit's evaluation data), so both decisions can be reproduced.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient

from creditflow.data.calendar import check_month
from creditflow.data.dataset import load_dataset
from creditflow.data.months import labelled_window, month_files
from creditflow.data.synthetic import ID_COLUMN
from creditflow.errors import DataError, SpecError, TrackingError
from creditflow.registry.audit import TAG
from creditflow.registry.client import check_tracking_server, mlflow_errors, require_model
from creditflow.registry.policy import PromotionPolicy, PromotionRequest, load_policy
from creditflow.registry.promote import Decision, promote
from creditflow.train.held_out import run_specs
from creditflow.train.run import detach_project_run, train_and_log

logger = logging.getLogger(__name__)

TRAIN_MONTHS = f"{TAG}train_months"  # run tag: the application months a retrained model learned from
EVALUATE_MONTH = f"{TAG}evaluate_month"  # run tag: the labelled month its promotion was decided on
RETRAINED_FROM = f"{TAG}retrained_from"  # run tag: the champion version whose spec it retrained
DEFAULT_OUTPUT = Path("data") / "retrain"


@dataclass(frozen=True)
class RetrainPlan:
    """What a retrain trains on and is judged on, decided before any training."""

    name: str
    champion: str
    champion_run: str
    as_of: str
    train_months: tuple[str, ...]
    evaluate_month: str

    def line(self) -> str:
        return (f"[retrain] {self.name} v{self.champion}'s spec on {len(self.train_months)} labelled month(s) "
                f"{self.train_months[0]}..{self.train_months[-1]} (as of {self.as_of}); gates on "
                f"{self.evaluate_month}, which neither model trained on")


@dataclass(frozen=True)
class Retrained:
    plan: RetrainPlan
    version: str
    run_id: str
    decision: Decision

    @property
    def promoted(self) -> bool:
        return self.decision.outcome == "promoted"

    def report(self) -> str:
        return f"{self.plan.line()}\n[retrain] run {self.run_id} registered v{self.version}\n{self.decision.report()}"


def latest_month(folder: str | Path) -> str:
    """The most recent application month of a months folder: the retrain's "now" unless told otherwise."""
    months = list(month_files(Path(folder) / "applicants"))
    if not months:
        raise DataError(f"{folder}: no applicants/YYYY-MM.csv files")
    return months[-1]


def trained_months(client: MlflowClient, run_id: str) -> tuple[str, ...]:
    """The application months a run trained on (none for a model trained on another data set)."""
    text = client.get_run(run_id).data.tags.get(TRAIN_MONTHS, "")
    return tuple(m for m in text.split(",") if m)


def plan_retrain(client: MlflowClient, name: str, folder: str | Path, window: int, as_of: str) -> RetrainPlan:
    """The window (the `window` labelled months before the most recent one) and the month the gates score."""
    with mlflow_errors(f"cannot read the champion of '{name}'"):
        champion = require_model(client, name).get("champion")
        if not champion:
            raise TrackingError(f"'{name}' has no @champion: there is no spec to retrain (promote a first champion)")
        champion_run = client.get_model_version(name, champion).run_id
        learned = trained_months(client, champion_run)
    labelled = labelled_window(folder, as_of, window + 1).months  # none labelled: one line from the data layer
    if len(labelled) < window + 1:
        raise DataError(f"{folder}: {len(labelled)} application month(s) labelled by {as_of} ({labelled[0]}.."
                        f"{labelled[-1]}); a window of {window} needs {window + 1} (the most recent is held out to "
                        "compare the models)")
    newest = labelled[-1]
    if newest in learned:
        raise DataError(f"{name} v{champion} trained on {newest}, the most recent month labelled by {as_of}: no "
                        "labelled month is left that neither model trained on (retrain when more outcomes are known)")
    return RetrainPlan(name, champion, champion_run, as_of, tuple(labelled[:-1]), newest)


def write_window(folder: str | Path, plan: RetrainPlan, output: Path) -> tuple[Path, Path]:
    """The training window and the evaluation month as Parquet files under `output/<as_of>/`."""
    window = labelled_window(folder, plan.as_of, len(plan.train_months) + 1).frame
    latest = labelled_window(folder, plan.as_of, 1).frame
    target = output / plan.as_of
    target.mkdir(parents=True, exist_ok=True)
    train_path = target / f"train-{plan.train_months[0]}-{plan.train_months[-1]}.parquet"
    evaluate_path = target / f"evaluate-{plan.evaluate_month}.parquet"
    window[~window[ID_COLUMN].isin(latest[ID_COLUMN])].to_parquet(train_path, index=False)
    latest.to_parquet(evaluate_path, index=False)
    return train_path.absolute(), evaluate_path.absolute()


def retrain(name: str, folder: str | Path, window: int, as_of: str | None, policy: PromotionPolicy,
            output: str | Path = DEFAULT_OUTPUT) -> Retrained:
    """Train the champion's spec on the labelled window, register it, promote it through the gates if it is better."""
    if window < 1:
        raise SpecError(f"the window must be at least one month, got {window}")
    as_of = check_month(as_of, "--as-of") if as_of else latest_month(folder)
    check_tracking_server()
    client = MlflowClient()
    plan = plan_retrain(client, name, folder, window, as_of)
    logger.info("%s", plan.line())
    exp, ds = run_specs(plan.champion_run)
    train_path, evaluate_path = write_window(folder, plan, Path(output))
    ds = ds.model_copy(update={"source": str(train_path)})  # the run's specs.json names the window it learned
    outcome = train_and_log(exp.model_copy(update={"register_as": name}), ds, load_dataset(ds))
    for key, value in ((TRAIN_MONTHS, ",".join(plan.train_months)), (EVALUATE_MONTH, plan.evaluate_month),
                       (RETRAINED_FROM, plan.champion)):
        client.set_tag(outcome.run_id, key, value)
    reason = (f"retrained on {plan.train_months[0]}..{plan.train_months[-1]}, compared on {plan.evaluate_month} "
              f"(as of {plan.as_of})")
    request = PromotionRequest(name=name, version=outcome.registered_version, data=str(evaluate_path),
                               data_rows="all", reason=reason)
    return Retrained(plan, str(outcome.registered_version), outcome.run_id, promote(request, policy))


def retrain_from_args(args: argparse.Namespace) -> Retrained:
    """`creditflow retrain` (pipelines.arguments.add_retrain_arguments): the policy loaded, then `retrain` (under
    `mlflow run`, its runs land in their own experiments, not the project run)."""
    policy = load_policy(args.policy)
    detach_project_run()
    return retrain(args.name, args.months, args.window, args.as_of or None, policy, args.output)
