"""Months as YYYY-MM text, their arithmetic, and the options of `creditflow data generate` (standard library only,
so the command line's parser stays cheap to build)."""

from __future__ import annotations

import argparse
import re
from typing import Literal, get_args

from creditflow.errors import DataError

DriftKind = Literal["none", "covariate", "concept", "both"]
DRIFT_KINDS: tuple[str, ...] = get_args(DriftKind)
MONTH_PATTERN = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def check_month(text: str, what: str = "month") -> str:
    """A YYYY-MM month, or a one-line error naming what it was meant to be."""
    if not MONTH_PATTERN.match(str(text)):
        raise DataError(f"{what} must be a month as YYYY-MM, got '{text}'")
    return str(text)


def add_months(month: str, count: int) -> str:
    """The month `count` months after `month` (YYYY-MM)."""
    year, mon = map(int, check_month(month).split("-"))
    index = year * 12 + mon - 1 + count
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def month_range(start: str, count: int) -> list[str]:
    """`count` consecutive months from `start`."""
    return [add_months(start, i) for i in range(count)]


def add_generate_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `creditflow data generate` (docs/generated_data.md)."""
    p.add_argument("--months", type=int, required=True, help="how many months")
    p.add_argument("--start", required=True, help="first month, YYYY-MM")
    p.add_argument("--drift", default="none", choices=DRIFT_KINDS,
                   help="covariate: the population shifts; concept: the relation shifts; both")
    p.add_argument("--onset", default="", help="the first drifted month, YYYY-MM (needed unless --drift none)")
    p.add_argument("--output", required=True, help="folder for applicants/, outcomes/ and truth/")
    p.add_argument("--rows-per-month", type=int, default=20_000, help="applicants a month (default 20000)")
    p.add_argument("--outcome-lag", type=int, default=12, help="months until an outcome is known (default 12)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    return p
