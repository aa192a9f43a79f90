"""Months as YYYY-MM: arithmetic across years, one-line errors."""

from __future__ import annotations

import pytest

from creditflow.data.calendar import add_months, check_month, month_range
from creditflow.errors import DataError


def test_months_count_across_years() -> None:
    assert month_range("2025-11", 4) == ["2025-11", "2025-12", "2026-01", "2026-02"]
    assert add_months("2025-01", 12) == "2026-01"
    assert add_months("2025-03", -3) == "2024-12"


@pytest.mark.parametrize("text", ["2025-13", "2025-1", "25-01", "2025-00"])
def test_a_month_that_is_not_yyyy_mm_is_one_line(text: str) -> None:
    with pytest.raises(DataError, match=f"--as-of must be a month as YYYY-MM, got '{text}'"):
        check_month(text, "--as-of")
