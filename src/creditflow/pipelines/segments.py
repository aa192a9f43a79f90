"""`creditflow segments` (`mlflow run . -e segments`): a global model and a model per segment, trained, registered,
gated against the global champion and promoted, then one table of what each segment got.

Segments train on this machine's cores, or with a Spark master (`spark://...`, `local[2]`) as one `applyInPandas`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow

from creditflow.data.dataset import load_dataset
from creditflow.errors import SpecError
from creditflow.registry.client import check_tracking_server
from creditflow.registry.policy import load_policy
from creditflow.registry.segments import SegmentDecision, decide_segments, table
from creditflow.serving.batch.spark import SparkConfig, start_spark
from creditflow.specs import load_experiment_spec
from creditflow.train.segments import SegmentedTraining, segmented_dataset, train_segments
from creditflow.train.segments_spark import spark_trainer

logger = logging.getLogger(__name__)
DEPLOYMENT = "serving/segments.yaml"  # the deployment that serves what this command promotes
TABLE_ARTIFACT = "segments.txt"  # the table, on the parent run


def run_segments(spec_path: str | Path, data_path: str | None, master: str | None, policy_path: str | Path,
                 ) -> tuple[SegmentedTraining, list[SegmentDecision]]:
    """Train, register, gate and promote every segment's model and the global model; log and return the table."""
    exp, ds = load_experiment_spec(spec_path)
    ds = segmented_dataset(exp, ds)
    if not exp.register_as:
        raise SpecError(f"{spec_path}: a segmented experiment registers its models: set `register_as`")
    policy = load_policy(policy_path)
    check_tracking_server()
    data = load_dataset(ds, data_path)
    logger.info("data: %d rows from %s (%d broke value rules)", len(data.X), data.source, data.n_rule_violations)
    if master:
        spark = start_spark(SparkConfig(master=master), app_name="creditflow-segments")
        try:
            training = train_segments(exp, ds, data, spark_trainer(spark))
        finally:
            spark.stop()
    else:
        training = train_segments(exp, ds, data)
    logger.info("\n== registry: the global model, then each segment's model against the global champion")
    decisions = decide_segments(training, exp.register_as, policy, data_path)
    text = table(decisions)
    mlflow.MlflowClient().log_text(training.parent_run_id, text + "\n", TABLE_ARTIFACT)
    logger.info("\n%s", text)
    logger.info("\nserve them: creditflow serve --config %s", DEPLOYMENT)
    return training, decisions
