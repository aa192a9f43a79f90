"""Helpers of the batch tests: applicant files as clients send them, the partitions the job writes, killing a job."""

from __future__ import annotations

import os
import signal
import time
from contextlib import suppress
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


def session_alive(sid: int) -> list[int]:
    """The live processes of a session. Zombies count as gone: a killed job's orphans are left to PID 1, which
    need not reap them (in containers often does not), so `os.killpg(pgid, 0)` could find them for ever."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):  # gone meanwhile
            state, _, _, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
            if int(session) == sid and state != "Z":
                alive.append(int(stat.parent.name))
    return alive


def kill_session(sid: int, timeout: float = 60) -> None:
    """SIGKILL a job started with start_new_session=True and all it started, and return once none of it is alive.

    That is its process group (the job, its JVM) and the Python workers of Spark's daemon, which has a
    process group of its own in the same session; `os.killpg` reaches only the first.
    """
    deadline = time.monotonic() + timeout
    while alive := session_alive(sid):
        for pid in alive:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert time.monotonic() < deadline, f"processes {alive} of session {sid} outlived SIGKILL"
        time.sleep(0.01)
