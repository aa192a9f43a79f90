"""The MLproject entry points through the `mlflow` CLI, against a real tracking server over HTTP."""

import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from creditflow.data.synthetic import generate_credit_data, write_kaggle_csv
from tests.conftest import ROOT, VENV_BIN, subprocess_env

# one worker runs the module: the tests share its server (session fixture) and its runs, so the explain and
# drift tests find what the train and main tests logged instead of training again
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("entry-points")]


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "cs-training.csv"
    write_kaggle_csv(generate_credit_data(3_000, seed=5).frame, path)
    return path


def mlflow_run(server: str, entry: str, *params: str, timeout: int = 600) -> subprocess.CompletedProcess:
    args = [str(VENV_BIN / "mlflow"), "run", str(ROOT), "-e", entry, "--env-manager", "local",
            "--experiment-name", "project-runs"]
    for p in params:
        args += ["-P", p]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env(MLFLOW_TRACKING_URI=server))


def test_train_entry_point_logs_a_run_on_the_server(mlflow_server, small_csv) -> None:
    proc = mlflow_run(mlflow_server, "train", "spec=experiments/logistic_grid.yaml", f"data={small_csv}",
                      "cv_folds=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("logistic-grid")
    parents = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                                 order_by=["attributes.start_time DESC"])
    top = [r for r in parents if "mlflow.parentRunId" not in r.data.tags][0]
    children = [r for r in parents if r.data.tags.get("mlflow.parentRunId") == top.info.run_id]
    assert len(children) == 16  # the course grid: 4 C x 2 class_weight x 2 add_indicator
    assert top.data.tags["data_source"] == str(small_csv)
    assert top.data.metrics["test_roc_auc"] > 0.7
    project_run = client.search_runs([client.get_experiment_by_name("project-runs").experiment_id])[0]
    assert project_run.data.tags["creditflow.runs"] == top.info.run_id
    assert {a.path for a in client.list_artifacts(top.info.run_id)} >= {"explanations", "specs.json"}
    assert len(client.get_run(top.info.run_id).outputs.model_outputs) == 1  # the logged model


def test_train_entry_point_bad_spec_is_one_line(mlflow_server) -> None:
    proc = mlflow_run(mlflow_server, "train", "spec=experiments/nope.yaml")
    assert proc.returncode != 0
    assert "error: spec file not found: experiments/nope.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr.split("=== Running command")[-1].split("mlflow.projects")[0]


@pytest.mark.slow
def test_main_entry_point_runs_every_family(mlflow_server, small_csv) -> None:
    proc = mlflow_run(mlflow_server, "main", f"data={small_csv}", "trials=2", "cv_folds=2", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    for name in ("logistic-baseline", "logistic-bayes", "xgboost-bayes", "hist-gradient-boosting"):
        exp = client.get_experiment_by_name(name)
        assert exp is not None, name
        assert any(r.info.status == "FINISHED" for r in client.search_runs([exp.experiment_id]))
    versions = client.search_model_versions("name = 'credit-default'")
    assert len(versions) >= 4
    assert "cv_roc_auc" in proc.stdout
    assert "[drift] 2,000 rows from data/demo-applicants.parquet" in proc.stdout  # the demo's last step
    monitoring = client.get_experiment_by_name("credit-default-monitoring")
    assert client.search_runs([monitoring.experiment_id])[0].data.tags["drift_status"] == "stable"


def test_explain_entry_point_rebuilds_artifacts(mlflow_server, small_csv) -> None:
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("logistic-grid")
    if exp is None:  # order-independent: make a run to explain
        assert mlflow_run(mlflow_server, "train", f"data={small_csv}", "cv_folds=2").returncode == 0
        exp = client.get_experiment_by_name("logistic-baseline")
    run = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags][0]
    proc = mlflow_run(mlflow_server, "explain", f"run_id={run.info.run_id}", f"data={small_csv}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"explanations and model card of run {run.info.run_id} rebuilt" in proc.stdout


def test_monitor_drift_entry_point_logs_the_report_on_the_project_run(mlflow_server, small_csv, tmp_path) -> None:
    client = MlflowClient(mlflow_server)
    if not client.search_model_versions("name = 'credit-default'"):  # order-independent: a model to monitor
        assert mlflow_run(mlflow_server, "train", f"data={small_csv}", "cv_folds=2").returncode == 0
    latest = max(int(v.version) for v in client.search_model_versions("name = 'credit-default'"))
    client.set_registered_model_alias("credit-default", "monitored", str(latest))
    proc = mlflow_run(mlflow_server, "monitor_drift", "model_uri=models:/credit-default@monitored",
                      f"input={small_csv}", f"report={tmp_path / 'drift.json'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3,000 rows" in proc.stdout and (tmp_path / "drift.json").is_file()
    project_run = client.search_runs([client.get_experiment_by_name("project-runs").experiment_id],
                                     order_by=["attributes.start_time DESC"])[0]
    assert project_run.data.tags["drift_status"] == "stable"
    assert project_run.data.tags["model_version"] == str(latest)
    assert len([m for m in project_run.data.metrics if m.startswith("psi.")]) == 11
