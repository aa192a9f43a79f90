"""Helpers of the batch tests: applicant files as clients send them, and the partitions the job writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from creditflow.data.dataset import CreditData


def applicants(data: CreditData, rows: int, first_id: int = 1000, offset: int = 0) -> pd.DataFrame:
    """Raw applicant rows with an integer Id column, as a client's file holds them."""
    X = data.X.iloc[offset:offset + rows].reset_index(drop=True)
    return X.assign(Id=np.arange(first_id, first_id + len(X)))[["Id", *X.columns]]


def partition(output: Path, kind: str, batch_id: str) -> pd.DataFrame:
    return pd.read_parquet(output / kind / f"batch_id={batch_id}")
