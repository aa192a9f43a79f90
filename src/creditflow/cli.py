"""The `creditflow` command line: thin wrappers over the library, one subcommand per entry point.

Every user mistake (bad spec, bad data, unknown model, unreachable server) ends as one line on
stderr and exit code 2 (3 for a promotion refused by a gate); never a traceback. The library logs;
this module is what shows its progress lines on the terminal (`console_logging`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from creditflow.data.calendar import add_generate_arguments
from creditflow.errors import CreditflowError
from creditflow.monitor.policy import add_drift_arguments, add_performance_arguments
from creditflow.ops.tracking_server import add_tracking_server_arguments
from creditflow.pipelines.arguments import add_retraining_parsers, add_segments_arguments
from creditflow.registry.policy import add_promote_arguments
from creditflow.scoped import environ
from creditflow.serving.arguments import add_features_arguments, add_serve_arguments, add_stream_arguments
from creditflow.serving.batch.spark import add_batch_arguments
from creditflow.specs import CHAMPION_URI, DEFAULT_MODEL_NAME

Handler = Callable[[argparse.Namespace], int]
PROGRESS_BARS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"  # MLflow's switch for its artifact-download bars


def _cmd_train(args: argparse.Namespace) -> int:
    from creditflow.data.dataset import load_dataset
    from creditflow.registry.client import check_tracking_server
    from creditflow.specs import load_experiment_spec
    from creditflow.train.run import detach_project_run, link_to_project_run, train_and_log

    exp, ds = load_experiment_spec(args.spec)
    overrides = {k: v for k, v in {"search.trials": args.trials, "cv_folds": args.cv_folds}.items() if v}
    exp = exp.with_overrides(**overrides) if overrides else exp
    launcher = detach_project_run()
    check_tracking_server()
    outcome = train_and_log(exp, ds, load_dataset(ds, args.data or None))
    link_to_project_run(launcher, [outcome])
    print(f"run {outcome.run_id}: test_roc_auc={outcome.test['test_roc_auc']:.4f} model={outcome.model_uri}")
    return 0


def _cmd_main(args: argparse.Namespace) -> int:
    from creditflow.pipelines.main import Budget, demo_tail, run_main
    from creditflow.train.run import detach_project_run, link_to_project_run

    launcher = detach_project_run()
    outcomes = run_main(Path(args.experiments), args.data or None,
                        Budget(args.trials, args.cv_folds, args.search_seconds))
    link_to_project_run(launcher, outcomes)
    if args.batch_sample:
        demo_tail(outcomes, args.batch_sample)
    return 0


def _cmd_segments(args: argparse.Namespace) -> int:
    from creditflow.pipelines.segments import run_segments
    from creditflow.train.run import detach_project_run

    detach_project_run()
    run_segments(args.spec, args.data or None, args.master or None, args.policy)
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from creditflow.registry.client import check_tracking_server
    from creditflow.train.run import rebuild_explanations

    check_tracking_server()
    rebuild_explanations(args.run_id, args.data or None)
    return 0


def promote_command(args: argparse.Namespace, on_step: Callable[[str], None] | None = None) -> int:
    """`creditflow promote` / `scripts/promote_model.py`: show the decision, return its exit code.

    `on_step` is the registry's step hook (fault tests stop the process between two registry writes).
    """
    from creditflow.registry.lease import no_step
    from creditflow.registry.policy import load_policy, request_from_args
    from creditflow.registry.promote import promote
    from creditflow.train.run import detach_project_run

    req = request_from_args(args)
    policy = load_policy(args.policy)
    detach_project_run()
    decision = promote(req, policy, on_step or no_step)
    print(decision.report(), flush=True)
    return decision.exit_code


def _cmd_retrain(args: argparse.Namespace) -> int:
    from creditflow.pipelines.retrain import retrain_from_args

    result = retrain_from_args(args)
    print(result.report(), flush=True)
    return result.decision.exit_code


def _cmd_replay(args: argparse.Namespace) -> int:
    from creditflow.pipelines.replay import replay_from_args

    print(replay_from_args(args).summary())
    return 0


def _cmd_registry_history(args: argparse.Namespace) -> int:
    from creditflow.registry.audit import format_history, history
    from creditflow.registry.client import check_tracking_server, mlflow_errors

    check_tracking_server()
    with mlflow_errors(f"cannot read the history of '{args.name}'"):
        print(format_history(args.name, history(args.name, args.all)))
    return 0


def score_batch_command(args: argparse.Namespace, on_step: Callable[[str], None] | None = None) -> int:
    """`creditflow score batch`; `on_step` is the batch job's step hook (kill tests stop the process at a step)."""
    from creditflow.registry.lease import no_step
    from creditflow.serving.batch.job import log_batch, run_batch
    from creditflow.serving.batch.plan import plan_batch
    from creditflow.serving.batch.spark import load_batch_config, start_spark
    from creditflow.serving.segments import load_deployment
    from creditflow.train.run import detach_project_run

    config = load_batch_config(args.config or None, master=args.master)
    if bool(args.model_uri) == bool(args.deployment):
        raise CreditflowError("give one of --model-uri (one model) and --deployment (a segmented deployment)")
    deployment = load_deployment(args.deployment) if args.deployment else None
    launcher = detach_project_run()
    plan = plan_batch(args.model_uri, args.input, args.output, args.batch_id, args.id_column, args.table, deployment)
    spark = start_spark(config)  # only after the model and the input's columns are checked
    try:
        result = run_batch(spark, plan, config.progress_seconds, on_step or no_step)
    finally:
        spark.stop()
    log_batch(launcher, result)
    print(result.summary())
    return 0


def _cmd_predictions_get(args: argparse.Namespace) -> int:
    import json

    from creditflow.serving.batch.table import PredictionTable, default_table_url

    record = PredictionTable(args.table or default_table_url(args.output)).get_latest(args.id)
    print(json.dumps(record, indent=2))
    return 0


def _cmd_data_generate(args: argparse.Namespace) -> int:
    from creditflow.data.months import generate_months

    months = generate_months(args.output, args.months, args.start, args.drift, args.onset or None,
                             args.rows_per_month, args.outcome_lag, args.seed)
    print(f"{len(months)} months {months[0]}..{months[-1]} of {args.rows_per_month} applicants "
          f"(drift {args.drift}{' from ' + args.onset if args.onset else ''}) under {args.output}")
    return 0


def _cmd_monitor_drift(args: argparse.Namespace) -> int:
    from creditflow.monitor.drift import alert_if_major, monitor_drift
    from creditflow.monitor.segments import monitor_segments
    from creditflow.serving.segments import load_deployment
    from creditflow.train.run import detach_project_run

    deployment = load_deployment(args.deployment) if args.deployment else None
    if deployment and args.model_uri not in ("", deployment.fallback):
        raise CreditflowError(f"--model-uri {args.model_uri} is not the deployment's fallback {deployment.fallback}: "
                              "give one of --model-uri and --deployment")
    launcher = detach_project_run()
    if deployment:
        report = monitor_segments(deployment, args.input, args.report, args.log, launcher)
    else:
        report = monitor_drift(args.model_uri or CHAMPION_URI, args.input, args.report, args.log, launcher)
    alert_if_major(report)
    return 0


def _cmd_monitor_performance(args: argparse.Namespace) -> int:
    from creditflow.monitor.performance import alert_on, monitor_performance
    from creditflow.monitor.policy import load_monitoring_policy

    policy = load_monitoring_policy(args.policy)
    alert_on(monitor_performance(args.predictions, args.outcomes, policy, args.as_of or None, args.log, args.report))
    return 0


def _cmd_stream_score(args: argparse.Namespace) -> int:
    return stream_command(args)


def stream_command(args: argparse.Namespace, on_step: Callable[[str], None] | None = None) -> int:
    """`creditflow stream score`; `on_step` is the scorer's step hook (kill tests stop the process at a step)."""
    from creditflow.registry.lease import no_step
    from creditflow.serving.live import LiveModel, fetch
    from creditflow.serving.segments import SegmentRouter, follow_deployment
    from creditflow.serving.stream import StreamScorer
    from creditflow.serving.stream_config import load_stream_config

    config = load_stream_config(args.config, model_uri=args.model_uri, store=args.store,
                                reload_seconds=args.reload_seconds)
    live: LiveModel | SegmentRouter = (
        follow_deployment(config.segments, config.reload_seconds, "stream") if config.segments
        else LiveModel(config.model_uri, fetch(config.model_uri), config.reload_seconds, "stream"))
    scorer = StreamScorer(config, live, on_step=on_step or no_step)
    following = f", following {config.model_uri} every {config.reload_seconds:g} s" if live.follows else ""
    print(f"[stream] scoring {config.events_stream} of {config.store} with {live.current.label} as "
          f"{scorer.consumer} (group {config.group}{following})", flush=True)
    try:
        live.start()
        print(f"{scorer.run(args.max_events, args.idle_seconds).line()}; stopped", flush=True)
    finally:
        live.stop()
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from creditflow.serving.online import load_serving_config, serve

    serve(load_serving_config(args.config or None, model_uri=args.model_uri, host=args.host, port=args.port,
                              workers=args.workers, feature_store=args.feature_store,
                              reload_seconds=args.reload_seconds, shadow=args.shadow))
    return 0


def _cmd_features_load(args: argparse.Namespace) -> int:
    from creditflow.registry.client import resolve_model
    from creditflow.serving.features import FeatureStore, load_features

    spec = resolve_model(args.model_uri).dataset
    print(load_features(args.input, spec, FeatureStore(args.store, spec.name), args.ttl_hours).summary())
    return 0


def _cmd_tracking_server(args: argparse.Namespace) -> int:
    from creditflow.ops.tracking_server import build_config, launch, prepare, read_settings, server_env

    env_file = Path(args.env_file)
    settings = read_settings(os.environ, env_file if env_file.is_file() else None)
    config = build_config(args, settings)
    for line in prepare(config):
        print(line, flush=True)
    env = server_env(config, settings)
    if not args.check_only:
        launch(config, env)  # the process becomes `mlflow server`
    return 0


def add_training_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run one experiment spec as an MLflow run")
    p.add_argument("--spec", required=True, help="experiment spec YAML, e.g. experiments/logistic_baseline.yaml")
    p.add_argument("--data", default="", help="CSV/Parquet file instead of the spec's source (e.g. cs-training.csv)")
    p.add_argument("--trials", type=int, default=0, help="override the search's trial budget (0: the spec's)")
    p.add_argument("--cv-folds", type=int, default=0, help="override the CV folds (0: the spec's)")
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("main", help="the demo pipeline: one small experiment per family, best first")
    p.add_argument("--experiments", default="experiments", help="folder of experiment specs (and main.yaml)")
    p.add_argument("--data", default="", help="CSV/Parquet file instead of the generated default")
    p.add_argument("--trials", type=int, default=4, help="trials per Bayesian search")
    p.add_argument("--cv-folds", type=int, default=3, help="cross-validation folds")
    p.add_argument("--search-seconds", type=float, default=90.0,
                   help="a Bayesian search starts no new trial after this many seconds")
    p.add_argument("--batch-sample", type=int, default=2000,
                   help="applicants batch-scored with the champion at the end, into predictions/ (0: skip)")
    p.set_defaults(handler=_cmd_main)

    p = sub.add_parser("segments", help="a global model and a model per segment: trained, gated, promoted; one table")
    add_segments_arguments(p).set_defaults(handler=_cmd_segments)

    p = sub.add_parser("explain", help="rebuild the explanations and the model card of an existing run's model")
    p.add_argument("--run-id", required=True, help="the MLflow run that logged the model")
    p.add_argument("--data", default="", help="CSV/Parquet file instead of the run's dataset spec source")
    p.set_defaults(handler=_cmd_explain)


def add_data_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="generated data")
    data = p.add_subparsers(dest="data_command", required=True)
    p = data.add_parser("generate", help="applicants month by month, their outcomes later, with an optional drift "
                                         "(docs/generated_data.md)")
    add_generate_arguments(p).set_defaults(handler=_cmd_data_generate)


def add_registry_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("promote", help="promote a model version through the gates (exit 0 promoted, 3 refused)")
    add_promote_arguments(p).set_defaults(handler=promote_command)

    p = sub.add_parser("registry", help="read the model registry")
    reg = p.add_subparsers(dest="registry_command", required=True)
    p = reg.add_parser("history", help="the champion history of a registered model (from the audit runs)")
    p.add_argument("--name", default=DEFAULT_MODEL_NAME, help="registered model name")
    p.add_argument("--all", action="store_true", help="every audited decision, refusals and challengers included")
    p.set_defaults(handler=_cmd_registry_history)


def add_online_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="the REST endpoint: MLflow's scoring app with request limits and safe errors")
    add_serve_arguments(p).set_defaults(handler=_cmd_serve)
    p = sub.add_parser("features", help="precomputed applicant features for online prediction by id")
    feat = p.add_subparsers(dest="features_command", required=True)
    p = feat.add_parser("load", help="write a file of applicants' features into the feature store (Redis)")
    add_features_arguments(p).set_defaults(handler=_cmd_features_load)
    p = sub.add_parser("stream", help="streaming prediction: batch plus streaming features, per event")
    stream = p.add_subparsers(dest="stream_command", required=True)
    p = stream.add_parser("score", help="consume the events stream, score each event's applicant, publish")
    add_stream_arguments(p).set_defaults(handler=_cmd_stream_score)


def add_batch_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="batch scoring")
    score = p.add_subparsers(dest="score_command", required=True)
    p = score.add_parser("batch", help="score a CSV/Parquet file or directory on Spark with the model's spark_udf")
    add_batch_arguments(p).set_defaults(handler=score_batch_command)

    p = sub.add_parser("predictions", help="read stored batch predictions")
    pred = p.add_subparsers(dest="predictions_command", required=True)
    p = pred.add_parser("get", help="the latest stored prediction of an applicant, as JSON (exit 1: none)")
    p.add_argument("--id", required=True, help="applicant id")
    p.add_argument("--output", default="predictions", help="the batch job's output directory (its SQLite table)")
    p.add_argument("--table", default="", help="SQL table URL instead (sqlite:///... or postgresql://...)")
    p.set_defaults(handler=_cmd_predictions_get)


def add_monitor_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("monitor", help="data drift against the model's training data; realized performance")
    mon = p.add_subparsers(dest="monitor_command", required=True)
    p = mon.add_parser("drift", help="PSI of every input column and the score (exit 3: a major shift)")
    add_drift_arguments(p).set_defaults(handler=_cmd_monitor_drift)

    p = mon.add_parser("performance", help="realized performance of the scored batches by vintage, once outcomes "
                                           "are known (exit 3: the latest vintage decayed)")
    add_performance_arguments(p).set_defaults(handler=_cmd_monitor_performance)


def add_ops_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tracking-server", help="the MLflow tracking server, after start-up checks "
                                               "(scripts/start_tracking_server.sh)")
    add_tracking_server_arguments(p).set_defaults(handler=_cmd_tracking_server)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="creditflow", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_training_parsers, add_data_parsers, add_online_parsers, add_batch_parsers, add_monitor_parsers,
                add_registry_parsers, add_ops_parsers):
        add(sub)
    add_retraining_parsers(sub, _cmd_retrain, _cmd_replay)
    return parser


def quiet_downloads() -> AbstractContextManager[None]:
    """No artifact-download progress bars: on stderr they would bury the results and the one-line errors."""
    return environ(PROGRESS_BARS, "false")


@contextmanager
def console_logging() -> Iterator[None]:
    """The library's progress lines (creditflow loggers, INFO and up) on stdout, as they are, for the command."""
    logger = logging.getLogger("creditflow")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    before = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before[0])
        logger.propagate = before[1]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with quiet_downloads(), console_logging():
            return args.handler(args)
    except CreditflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
