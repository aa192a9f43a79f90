"""Specs: every shipped spec loads; invalid fields are named in one line."""

from pathlib import Path

import pytest

from creditflow.errors import SpecError
from creditflow.specs import load_dataset_spec, load_experiment_spec
from tests.conftest import DATASET_YAML, EXPERIMENTS

EXPERIMENT_FILES = sorted(p for p in EXPERIMENTS.glob("*.yaml") if "family:" in p.read_text())


def test_shipped_experiments_cover_every_family() -> None:
    families = {load_experiment_spec(p)[0].family for p in EXPERIMENT_FILES}
    assert {"logistic", "xgboost", "hist_gradient_boosting"} <= families


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda p: p.name)
def test_every_experiment_spec_loads(path: Path) -> None:
    exp, ds = load_experiment_spec(path)
    assert exp.family in {"logistic", "xgboost", "hist_gradient_boosting", "random_forest"}
    assert ds.target.column == "SeriousDlqin2yrs"


def test_dataset_spec_maps_raw_names_and_groups() -> None:
    ds = load_dataset_spec(DATASET_YAML)
    assert len(ds.raw_columns) == 10
    assert ds.columns["MonthlyIncome"].name == "monthly_income"
    assert ds.model_columns("skewed") == ["revolving_utilization", "debt_ratio", "monthly_income"]
    assert ds.model_columns("indicator") == [
        "implausible_utilization", "high_debt_ratio", "missing_monthly_income", "missing_num_dependents"]
    assert ds.raw_name_of("missing_monthly_income") == "MonthlyIncome"
    assert ds.columns["NumberOfTimes90DaysLate"].sentinels == (96, 98)
    assert ds.monotone_columns() == {  # the flagship's declared directions: late payments and utilisation
        "RevolvingUtilizationOfUnsecuredLines": "increasing", "NumberOfTime30-59DaysPastDueNotWorse": "increasing",
        "NumberOfTimes90DaysLate": "increasing", "NumberOfTime60-89DaysPastDueNotWorse": "increasing"}


def _write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_unknown_spec_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="spec file not found: .*nope.yaml"):
        load_experiment_spec(tmp_path / "nope.yaml")


def test_invalid_field_is_named(tmp_path: Path) -> None:
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "d.yaml").write_text(DATASET_YAML.read_text())
    path = _write(tmp_path, "name: x\ndataset: datasets/d.yaml\nfamily: logistic\ncv_folds: 1\n")
    with pytest.raises(SpecError, match="invalid field 'cv_folds'"):
        load_experiment_spec(path)


def test_unknown_field_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ndataset: d.yaml\nfamily: logistic\nlearning_rat: 3\n")
    with pytest.raises(SpecError, match="invalid field 'learning_rat'"):
        load_experiment_spec(path)


def test_bayesian_search_needs_a_space(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ndataset: d.yaml\nfamily: logistic\nsearch: {type: bayesian}\n")
    with pytest.raises(SpecError, match="needs 'space'"):
        load_experiment_spec(path)


def test_not_yaml_is_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_experiment_spec(path)


def test_derived_must_use_known_column(tmp_path: Path) -> None:
    text = DATASET_YAML.read_text().replace("{column: debt_ratio, op: gt", "{column: debt_ratios, op: gt")
    with pytest.raises(SpecError, match="unknown column 'debt_ratios'"):
        load_dataset_spec(_write(tmp_path, text, "d.yaml"))


def test_monotone_is_a_direction_of_an_ordered_column(tmp_path: Path) -> None:
    upward = "{name: age, group: numeric,"
    text = DATASET_YAML.read_text().replace(upward, "{name: age, group: numeric, monotone: upward,")
    with pytest.raises(SpecError, match="invalid field 'columns.age.monotone'"):
        load_dataset_spec(_write(tmp_path, text, "d.yaml"))
    text = DATASET_YAML.read_text().replace(upward, "{name: age, group: categorical, monotone: decreasing,")
    with pytest.raises(SpecError, match="column 'age': a categorical column has no order to be monotone in"):
        load_dataset_spec(_write(tmp_path, text, "d.yaml"))


def test_report_by_names_a_column_in_bands_or_by_category(tmp_path: Path) -> None:
    """The flagship reports by age bands; an unknown column, a numeric one without bands, bands out of order and a
    categorical one with bands are each one line."""
    assert load_dataset_spec(DATASET_YAML).report_by["age"].bands == (30, 45, 60)
    for report_by, message in (("{ages: {bands: [30]}}", "report_by names unknown column 'ages'"),
                               ("{age: {}}", "report_by 'age': a numeric column needs bands"),
                               ("{age: {bands: [45, 30]}}", "report_by 'age': bands must be increasing")):
        text = DATASET_YAML.read_text().replace("report_by:\n  age: {bands: [30, 45, 60]}", f"report_by: {report_by}")
        with pytest.raises(SpecError, match=message):
            load_dataset_spec(_write(tmp_path, text, "d.yaml"))
    text = DATASET_YAML.read_text().replace("{name: age, group: numeric,", "{name: age, group: categorical,")
    with pytest.raises(SpecError, match="report_by 'age': a categorical column is reported by category, not bands"):
        load_dataset_spec(_write(tmp_path, text, "d.yaml"))


def test_overrides_are_validated() -> None:
    exp, _ = load_experiment_spec(EXPERIMENTS / "xgboost_bayes.yaml")
    assert exp.with_overrides(**{"search.trials": 3}).search.trials == 3
    with pytest.raises(SpecError, match="search.trials"):
        exp.with_overrides(**{"search.trials": 0})


def test_configs_load_from_yaml_with_command_line_overrides(tmp_path: Path) -> None:
    from creditflow.serving.online import ServingConfig
    from creditflow.specs import load_config

    (tmp_path / "empty.yaml").write_text("")
    assert load_config(ServingConfig, tmp_path / "empty.yaml", "serving config") == ServingConfig()
    (tmp_path / "online.yaml").write_text("port: 6001\nworkers: 2\n")
    config = load_config(ServingConfig, tmp_path / "online.yaml", "serving config", port=7001, host=None, model_uri="")
    assert (config.port, config.workers, config.host) == (7001, 2, "127.0.0.1")  # None and "" were not given
    assert load_config(ServingConfig, None, "serving config", workers=3).workers == 3
    with pytest.raises(SpecError, match="^serving config not found: .*none.yaml$"):
        load_config(ServingConfig, tmp_path / "none.yaml", "serving config")
    with pytest.raises(SpecError, match="online.yaml: invalid field 'workers'"):
        load_config(ServingConfig, tmp_path / "online.yaml", "serving config", workers=0)


def test_a_dataset_spec_extends_another_and_names_its_segment_column() -> None:
    base = load_dataset_spec(EXPERIMENTS / "datasets" / "give_me_some_credit.yaml")
    regions = load_dataset_spec(EXPERIMENTS / "datasets" / "give_me_some_credit_regions.yaml")
    assert (regions.segment, regions.generated.segments, regions.generated.rows) == ("Region", 20, base.generated.rows)
    assert regions.columns == base.columns and regions.raw_columns == base.raw_columns  # a key, not a feature


def test_a_segment_column_that_is_a_feature_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "ds.yaml"
    path.write_text(f"extends: {EXPERIMENTS / 'datasets' / 'give_me_some_credit.yaml'}\nsegment: age\n")
    with pytest.raises(SpecError, match="segment column 'age' must not be a feature, the target or the id column"):
        load_dataset_spec(path)
