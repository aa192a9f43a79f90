"""The dataset spec's value rules, written once as a table, and their checks over pandas and numpy.

`value_rules` lists every rule of a spec in the order checks apply them (by column; then missing,
unknown category or below the minimum, above the maximum, not a whole number, infinite), each with
the message every checker uses. `rule_violations` checks a DataFrame (training, monitoring, the
feature store), `RuleCheck` the raw float matrix the served model scores; the batch job turns the
same table into Spark conditions (`serving.batch.columns.rule_checks`). Per row, the first broken
rule is reported. Tests check the three agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal

import numpy as np
import pandas as pd

from creditflow.specs import DatasetSpec

Check = Literal["missing", "category", "below", "above", "whole", "infinite"]


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


def broken(rule: Rule, values: np.ndarray) -> np.ndarray:
    """Where a column of the float matrix (NaN for missing; a categorical one holds codes) breaks the rule."""
    with np.errstate(invalid="ignore"):
        if rule.check == "missing":
            return np.isnan(values)
        if rule.check == "category":  # allowed: the known categories' codes
            return ~np.isnan(values) & ~np.isin(values, rule.allowed)
        if rule.check in ("below", "above"):
            outside = values < rule.bound if rule.check == "below" else values > rule.bound
            return outside & ~np.isin(values, rule.allowed) if rule.allowed else outside
        if rule.check == "whole":
            return ~np.isnan(values) & (np.remainder(values, 1) != 0)
        return np.isinf(values)


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

    def reasons(self, R: np.ndarray) -> np.ndarray:
        """Per row, the first rule it breaks ("" when none)."""
        if not self.rules:
            return np.full(len(R), "", dtype=object)
        masks = np.column_stack([broken(r, R[:, j]) for r, j in zip(self.rules, self.positions, strict=True)])
        return np.where(masks.any(axis=1), self.messages[masks.argmax(axis=1)], "")

    @cached_property
    def _by_check(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per kind of check: (rule indices, their columns, their bounds), for `any_broken`'s column reductions."""
        out = {}
        for check in ("missing", "category", "below", "above", "whole", "infinite"):
            which = [i for i, r in enumerate(self.rules) if r.check == check]
            out[check] = (np.asarray(which, dtype=np.intp), np.asarray([self.positions[i] for i in which], np.intp),
                          np.asarray([self.rules[i].bound for i in which], dtype="float64"))
        return out

    def any_broken(self, R: np.ndarray) -> bool:
        """Whether any row breaks a rule, with no per-row text (the common, clean case).

        Column reductions first, one array operation per kind of rule (no copy of the whole batch, no loop over
        rules): they flag every rule a row breaks, and maybe more (they ignore the sentinels' exemption). Only the
        flagged rules get the exact checks.
        """
        if not len(R) or not self.rules:
            return False
        smallest, largest = np.fmin.reduce(R, axis=0), np.fmax.reduce(R, axis=0)  # NaN skipped; ±inf kept
        flagged = np.zeros(len(self.rules), dtype=bool)
        by = self._by_check
        flagged[by["missing"][0]] = np.isnan(R.sum(axis=0))[by["missing"][1]]
        flagged[by["category"][0]] = True  # codes: checked exactly (one isin per column)
        flagged[by["below"][0]] = smallest[by["below"][1]] < by["below"][2]
        flagged[by["above"][0]] = largest[by["above"][1]] > by["above"][2]
        rules, columns, _ = by["infinite"]
        flagged[rules] = np.isinf(smallest[columns]) | np.isinf(largest[columns])
        rules, columns, _ = by["whole"]
        if len(rules):
            W = R[:, columns]
            flagged[rules] = ((np.trunc(W) != W) & ~np.isnan(W)).any(axis=0)
        return any(broken(self.rules[i], R[:, self.positions[i]]).any() for i in np.flatnonzero(flagged))
