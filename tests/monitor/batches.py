"""Batch-job output written directly, in its layout (scored/batch_id=<id>/*.parquet with lineage columns)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_batch(output: Path, batch_id: str, ids: np.ndarray, probability: np.ndarray, version: str = "1",
                name: str = "credit-default", run_id: str = "run") -> None:
    """One published batch as `creditflow score batch` leaves it under `output`."""
    part = output / "scored" / f"batch_id={batch_id}"
    part.mkdir(parents=True, exist_ok=True)
    n = len(ids)
    pq.write_table(pa.table({
        "applicant_id": [str(i) for i in ids], "probability": np.asarray(probability, dtype="float64"),
        "decision": ["approve"] * n, "reason_codes": ["[]"] * n, "reason_statements": ["[]"] * n,
        "model_name": [name] * n, "model_version": [version] * n, "run_id": [run_id] * n,
        "scored_at": ["2026-01-01T00:00:00Z"] * n,
    }), part / "part-00000.parquet")
