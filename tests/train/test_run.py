"""One experiment = one MLflow run holding everything a reviewer needs to compare it."""

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from creditflow.train.run import train_and_log
from tests.conftest import small_experiment


@pytest.fixture(scope="module")
def logged(tmp_path_factory, small_spec, small_data):
    """A small Bayesian-search run logged once to its own store; (client, outcome)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        outcome = train_and_log(small_experiment("logistic_bayes.yaml"), small_spec, small_data)
    finally:
        mlflow.set_tracking_uri(None)
    return MlflowClient(uri), outcome


def test_run_logs_params_metrics_tags(logged) -> None:
    client, outcome = logged
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["family"] == "logistic" and run.data.params["search.type"] == "bayesian"
    assert run.data.params["search.trials"] == "2" and run.data.params["cv_folds"] == "3"
    assert "best.model__C" in run.data.params
    for name in ("roc_auc", "pr_auc", "log_loss", "brier"):
        assert run.data.metrics[f"cv_{name}_mean"] > 0 and f"cv_{name}_std" in run.data.metrics
    for name in ("roc_auc", "pr_auc", "log_loss", "brier", "ks", "f1", "balanced_accuracy"):
        assert f"test_{name}" in run.data.metrics
    assert 0.7 < run.data.metrics["test_roc_auc"] <= 1
    assert run.data.metrics["test_roc_auc"] == pytest.approx(outcome.test["test_roc_auc"])
    tags = run.data.tags
    assert tags["model_family"] == "logistic" and tags["search_type"] == "bayesian"
    assert tags["data_source"].startswith("generated(rows=6000")
    assert len(tags["git_commit"]) in (40, 7) or tags["git_commit"] == "unknown"
    assert run.data.metrics["seconds_search"] > 0


def test_trials_are_nested_child_runs(logged) -> None:
    client, outcome = logged
    run = client.get_run(outcome.run_id)
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{outcome.run_id}'")
    assert len(children) == 2
    assert all("cv_roc_auc_mean" in c.data.metrics and "model__C" in c.data.params for c in children)
    assert run.data.metrics["cv_roc_auc_mean"] == max(c.data.metrics["cv_roc_auc_mean"] for c in children)


def test_dataset_is_an_input_with_digest_and_source(logged) -> None:
    client, outcome = logged
    inputs = client.get_run(outcome.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    assert ds.name == "give_me_some_credit" and ds.digest
    assert "generated(rows=6000" in ds.source


def test_explanations_and_model_are_artifacts(logged) -> None:
    client, outcome = logged
    names = {f.path for f in client.list_artifacts(outcome.run_id, "explanations")}
    for expected in ("partial_dependence_1d.png", "partial_dependence_2d.png", "permutation_importance.png",
                     "permutation_importance.csv", "shap_beeswarm.png", "shap_bar.png", "shap_values.csv",
                     "roc_curve.png", "pr_curve.png", "calibration_curve.png"):
        assert f"explanations/{expected}" in names
    assert any(n.startswith("explanations/shap_waterfall_") for n in names)
    cards = {f.path for f in client.list_artifacts(outcome.run_id, "model_card")}
    assert cards == {"model_card/model_card.md", "model_card/model_card.html"}


def test_model_has_signature_over_raw_columns_and_predicts_probability(logged, small_spec, small_data) -> None:
    client, outcome = logged
    mlflow.set_tracking_uri(client._registry_uri)
    try:
        model = mlflow.pyfunc.load_model(outcome.model_uri)
    finally:
        mlflow.set_tracking_uri(None)
    assert model.metadata.get_input_schema().input_names() == small_spec.raw_columns
    out = model.predict(small_data.X.head(50))
    assert list(out.columns[:2]) == ["probability", "decision"]
    assert out["probability"].between(0, 1).all()
    assert set(out["decision"]) <= {"approve", "decline"}
    assert model.metadata.saved_input_example_info is not None


def test_model_is_registered_with_description_and_lineage(logged) -> None:
    client, outcome = logged
    mv = client.get_model_version("credit-default", outcome.registered_version)
    assert mv.run_id == outcome.run_id
    assert "held-out ROC AUC" in mv.description
    assert f"Model card: runs:/{outcome.run_id}/model_card/model_card.md" in mv.description
    assert mv.tags["model_family"] == "logistic" and float(mv.tags["test_roc_auc"]) > 0.7


def test_a_failing_run_ends_failed_not_running(small_spec, small_data) -> None:
    bad = small_experiment(params={"model__C": -1.0})  # sklearn refuses a negative C at fit time
    with pytest.raises(Exception):  # noqa: B017 - sklearn's own error type is not ours to name
        train_and_log(bad, small_spec, small_data.__class__(
            X=small_data.X, y=small_data.y, ids=small_data.ids, source="x"))
    runs = mlflow.search_runs(search_all_experiments=True)
    assert isinstance(runs, pd.DataFrame) and len(runs) >= 1
    assert set(runs["status"]) == {"FAILED"}


def test_a_calibrated_run_serves_the_map_fitted_on_its_training_split_only(tmp_path, small_spec, small_data) -> None:
    """`calibration: sigmoid` on an over-confident XGBoost (scale_pos_weight 5): the map comes from out-of-fold
    predictions of the training split (refitting it from that split alone gives the same numbers), the served
    probability is the calibrated one, and the held-out calibration error falls."""
    from creditflow.data.dataset import split_data
    from creditflow.model.calibration import Calibration
    from creditflow.model.pipeline import predict_default
    from creditflow.train.search import fit_out_of_fold_calibration

    params = {"model__n_estimators": 60, "model__max_depth": 4, "model__scale_pos_weight": 5.0}
    exp = small_experiment("xgboost_bayes.yaml", **{"search.type": "none", "explain.enabled": False,
                                                     "calibration": "sigmoid", "params": params})
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        outcome = train_and_log(exp.with_overrides(register_as=None), small_spec, small_data)
        run = MlflowClient().get_run(outcome.run_id)
        model = mlflow.pyfunc.load_model(outcome.model_uri).unwrap_python_model()
    finally:
        mlflow.set_tracking_uri(None)
    split = split_data(small_data, exp.test_size, exp.seed)
    refit = fit_out_of_fold_calibration(exp, small_spec, params, split.X_train, split.y_train)
    assert model.scoring.calibration == refit and isinstance(refit, Calibration)
    X = split.X_test.head(300)
    served = model.scoring(X).probability.to_numpy()
    assert served.tolist() == pytest.approx(refit.apply(predict_default(model.pipeline, X)).tolist(), abs=1e-12)
    metrics = run.data.metrics
    assert metrics["test_calibration_error"] < metrics["test_calibration_error_uncalibrated"] / 2, metrics
    assert run.data.params["calibration"] == "sigmoid"
