"""`creditflow segments` end to end on a tiny generated data set: worker processes train the global model and each
region's, the registry decides, one table and the line that serves them; bad input is one line."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from creditflow.cli import main
from creditflow.data.synthetic import generate_credit_data, write_kaggle_csv
from tests.conftest import EXPERIMENTS, REGIONS_YAML, SegmentedStore, tracking_at

POLICY = str(EXPERIMENTS / "promotion.yaml")


def write_spec(folder: Path, segments: str = "{min_rows: 300, explain: {enabled: false}}") -> Path:
    (folder / "regions.yaml").write_text(f"extends: {REGIONS_YAML}\ngenerated: {{rows: 2400, segments: 2}}\n")
    spec = folder / "segmented.yaml"
    spec.write_text("name: segmented-tiny\ndataset: regions.yaml\nfamily: logistic\ncv_folds: 2\n"
                    f"explain: {{enabled: false}}\nsegments: {segments}\n")
    return spec


def test_segments_trains_in_worker_processes_registers_gates_and_prints_one_table(
        segmented_store: SegmentedStore) -> None:
    out = segmented_store.output.splitlines()
    header = next(i for i, line in enumerate(out) if line.split()[:2] == ["segment", "rows"])
    rows = [line.split() for line in out[header + 1:header + 6]]
    assert [r[0] for r in rows] == ["(global)", "R01", "R02", "R03", "R04"]
    assert rows[0][1] == f"{len(segmented_store.data.X):,}" and rows[0][4] == "promoted"
    assert rows[4][2:5] == ["-", "-", "kept"] and "too few rows" in out[header + 5]
    with tracking_at(segmented_store.uri):
        client = mlflow.MlflowClient()
        for segment, row in zip(("R01", "R02", "R03"), rows[1:4], strict=True):
            assert float(row[2]) > 0.5 and float(row[3]) > 0.5
            decided = client.search_model_versions(f"name = 'credit-default-{segment}'")[0].tags
            assert decided["creditflow.last_decision"] == {"promoted": "promoted", "kept": "kept_global",
                                                           "refused": "refused"}[row[4]]
        runs = mlflow.search_runs(experiment_names=["segmented"])
        parent = client.get_run(segmented_store.training.parent_run_id)
        assert client.download_artifacts(parent.info.run_id, "segments.txt")
    assert out[-1] == "serve them: creditflow serve --config serving/segments.yaml"
    children = runs[runs["tags.mlflow.parentRunId"] == parent.info.run_id]
    spans = sorted(zip(children["start_time"], children["end_time"], strict=True))
    overlapped = [a_end > b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)]
    assert any(overlapped), "no two runs trained at the same time"


def test_data_without_the_segment_column_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_kaggle_csv(generate_credit_data(300, seed=1).frame, tmp_path / "no-regions.csv")
    spec = write_spec(tmp_path)
    assert main(["segments", "--spec", str(spec), "--data", str(tmp_path / "no-regions.csv"), "--policy", POLICY]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {tmp_path / 'no-regions.csv'}: no segment column 'Region' (the dataset spec "
                   "'give_me_some_credit_regions' names it as its segment)")


def test_an_unknown_key_under_segments_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, segments="{min_rows: 300, min_row: 5}")
    assert main(["segments", "--spec", str(spec), "--policy", POLICY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {spec}: invalid field 'segments.min_row': Extra inputs are not permitted"]
