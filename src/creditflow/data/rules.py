"""The dataset spec's value rules, written once as a table, and their checks over pandas and numpy.

`value_rules` lists every rule of a spec in the order checks apply them (by column; then missing,
unknown category or below the minimum, above the maximum, not a whole number, infinite), each with
the message every checker uses. `rule_violations` checks a DataFrame (training, monitoring, the
feature store), `RuleCheck` the raw float matrix the served model scores; the batch job turns the
same table into Spark conditions (`serving.batch.columns.rule_checks`). Per row, the first broken
rule is reported. Tests check the three agree.

What breaks a rule on a float value is written once, `_breaks`, compiled by numba: the column check (`broken`) and
the matrix checks (`RuleCheck`) loop over it, so a served request's rules cost one call, not one numpy pass per kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal

import numpy as np
import pandas as pd
from numba import njit

from creditflow.specs import DatasetSpec

Check = Literal["missing", "category", "below", "above", "whole", "infinite"]
CHECKS: tuple[Check, ...] = ("missing", "category", "below", "above", "whole", "infinite")  # the kernels' codes


@dataclass(frozen=True)
class Rule:
    """One value rule of one raw column, and how it is worded."""

    column: str
    check: Check
    message: str
    bound: float = np.nan  # below: the minimum, above: the maximum
    allowed: tuple = ()  # below/above: sentinel values exempt from the bound; category: the known categories


def value_rules(spec: DatasetSpec) -> list[Rule]:
    """Every value rule of the spec, in the order they are checked."""
    rules = []
    for raw, col in spec.columns.items():
        if not col.nullable:
            rules.append(Rule(raw, "missing", f"{raw} is missing"))
        if col.group == "categorical":
            if col.categories:
                rules.append(Rule(raw, "category", f"{raw} is not a known category", allowed=col.categories))
            continue
        if col.min is not None:
            rules.append(Rule(raw, "below", f"{raw} below {col.min:g}", col.min, col.sentinels))
        if col.max is not None:
            rules.append(Rule(raw, "above", f"{raw} above {col.max:g}", col.max, col.sentinels))
        if col.integer:
            rules.append(Rule(raw, "whole", f"{raw} is not a whole number"))
        rules.append(Rule(raw, "infinite", f"{raw} is infinite"))
    return rules


@njit(cache=True, inline="always")
def _breaks(v: float, check: int, bound: float, allowed: np.ndarray) -> bool:
    """Whether one value (NaN for missing; a categorical column's code) breaks a rule (`CHECKS[check]`).

    missing: NaN; category: not NaN and not an allowed code; below/above: beyond the bound and not an allowed
    sentinel (NaN is neither); whole: not NaN and with a fraction (infinities have no whole value); infinite: ±inf.
    """
    if check == 0:
        return np.isnan(v)
    if check == 1 or check == 2 or check == 3:
        if check == 1:
            if np.isnan(v):
                return False
        elif not (v < bound if check == 2 else v > bound):
            return False
        for a in allowed:  # noqa: SIM110 (a loop numba compiles, not a generator)
            if v == a:
                return False
        return True
    if check == 4:
        return not np.isnan(v) and v % 1.0 != 0.0
    return np.isinf(v)


@njit(cache=True)
def _broken_column(values: np.ndarray, check: int, bound: float, allowed: np.ndarray) -> np.ndarray:
    out = np.empty(len(values), dtype=np.bool_)
    for i in range(len(values)):
        out[i] = _breaks(values[i], check, bound, allowed)
    return out


@njit(cache=True)
def _first_broken(R: np.ndarray, checks: np.ndarray, positions: np.ndarray, bounds: np.ndarray, allowed: np.ndarray,
                  starts: np.ndarray, any_only: bool) -> np.ndarray:
    """Per row, the index of the first rule it breaks (-1: none); `any_only`: stop at the first broken row."""
    out = np.full(len(R), -1, dtype=np.int64)
    for i in range(len(R)):
        for r in range(len(checks)):
            if _breaks(R[i, positions[r]], checks[r], bounds[r], allowed[starts[r]:starts[r + 1]]):
                out[i] = r
                break
        if any_only and out[i] >= 0:
            return out[:i + 1]
    return out


def broken(rule: Rule, values: np.ndarray) -> np.ndarray:
    """Where a column of the float matrix (NaN for missing; a categorical one holds codes) breaks the rule."""
    allowed = np.asarray(rule.allowed, dtype="float64")
    return _broken_column(np.asarray(values, dtype="float64"), CHECKS.index(rule.check), float(rule.bound), allowed)


def _broken_category(rule: Rule, values: pd.Series) -> np.ndarray:
    if rule.check == "missing":
        return values.isna().to_numpy()
    return (values.notna() & ~values.isin(rule.allowed)).to_numpy()


def rule_violations(X: pd.DataFrame, spec: DatasetSpec) -> pd.Series:
    """Per row, the first value rule it breaks ("" when none): the rules travel with the model."""
    reasons, unbroken = np.full(len(X), "", dtype=object), np.ones(len(X), dtype=bool)
    numeric: dict[str, np.ndarray] = {}
    for rule in value_rules(spec):
        if spec.columns[rule.column].group == "categorical":
            mask = _broken_category(rule, X[rule.column])
        else:
            if rule.column not in numeric:
                numeric[rule.column] = X[rule.column].to_numpy(dtype="float64", na_value=np.nan)
            mask = broken(rule, numeric[rule.column])
        first = mask & unbroken  # boolean arrays only: comparing the texts is far slower
        reasons[first], unbroken = rule.message, unbroken & ~first
    return pd.Series(reasons, index=X.index, dtype=object)


@dataclass(frozen=True)
class RuleCheck:
    """The value rules over the raw float matrix the model scores (signature column order).

    A categorical column holds codes: positions in its vocabulary (`model.categories`), which `from_spec` is given.
    """

    rules: tuple[Rule, ...]
    positions: tuple[int, ...]  # each rule's column in the matrix
    messages: np.ndarray

    @classmethod
    def from_spec(cls, spec: DatasetSpec, vocabulary: Mapping[str, Sequence[str]] | None = None) -> RuleCheck:
        """`vocabulary`: per categorical column, the texts whose positions its codes are (all its categories)."""
        if vocabulary is None and any(c.group == "categorical" for c in spec.columns.values()):
            raise ValueError("categorical columns: give their vocabulary, or use rule_violations")
        rules = tuple(replace(r, allowed=tuple(float(list(vocabulary[r.column]).index(c)) for c in r.allowed))
                      if r.check == "category" else r for r in value_rules(spec))
        positions = tuple(spec.raw_columns.index(r.column) for r in rules)
        return cls(rules, positions, np.asarray([r.message for r in rules], dtype=object))

    @cached_property
    def _table(self) -> tuple[np.ndarray, ...]:
        """The rules as the kernel reads them: check codes, columns, bounds, allowed values (flat) and their starts."""
        allowed = [np.asarray(r.allowed, dtype="float64") for r in self.rules]
        return (np.asarray([CHECKS.index(r.check) for r in self.rules], dtype=np.int64),
                np.asarray(self.positions, dtype=np.int64),
                np.asarray([r.bound for r in self.rules], dtype="float64"),
                np.concatenate([np.empty(0), *allowed]),
                np.cumsum([0, *(len(a) for a in allowed)], dtype=np.int64))

    def _first(self, R: np.ndarray, any_only: bool) -> np.ndarray:
        return _first_broken(np.asarray(R, dtype="float64"), *self._table, any_only)

    def reasons(self, R: np.ndarray) -> np.ndarray:
        """Per row, the first rule it breaks ("" when none)."""
        first = self._first(R, any_only=False)
        return np.where(first >= 0, self.messages[first] if len(self.rules) else "", "")

    def any_broken(self, R: np.ndarray) -> bool:
        """Whether any row breaks a rule (it stops at the first that does)."""
        return bool(len(R)) and bool(self.rules) and self._first(R, any_only=True)[-1] >= 0
