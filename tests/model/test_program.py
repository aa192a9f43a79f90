"""The preprocessing program: each column operation equals the step it replays, a row alone equals it among others."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.impute import SimpleImputer
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, PowerTransformer, StandardScaler

from creditflow.model.categories import UNSEEN_TEXT, category_tables
from creditflow.model.pipeline import OPS
from creditflow.model.program import (
    CAP,
    COMPARISONS,
    DIV,
    FILL,
    GE,
    GT,
    ISNAN,
    LE,
    LT,
    SENTINEL,
    SUB,
    YEO_JOHNSON,
    Chain,
    Program,
    Tables,
)


def values(n: int = 400, seed: int = 3) -> np.ndarray:
    """Negative, zero, positive and missing values."""
    x = np.random.default_rng(seed).normal(0, 3, n)
    x[::7] = np.nan
    x[1::11] = 0.0
    x[2::13] = 96.0
    return x


def run(chain: Chain, x: np.ndarray) -> np.ndarray:
    return Program.of([chain]).run(x[:, None])[:, 0]


def test_each_operation_equals_numpy() -> None:
    x = values()
    with np.errstate(invalid="ignore"):
        expected = {
            SENTINEL: np.where(x == 96.0, np.nan, x), GT: (x > 1).astype(float), GE: (x >= 0).astype(float),
            LT: (x < 0).astype(float), LE: (x <= 0).astype(float), ISNAN: np.isnan(x).astype(float),
            CAP: np.minimum(x, 1.5), FILL: np.where(np.isnan(x), 2.5, x), SUB: x - 0.25,
        }
    args = {SENTINEL: 96.0, GT: 1.0, GE: 0.0, LT: 0.0, LE: 0.0, ISNAN: 0.0, CAP: 1.5, FILL: 2.5, SUB: 0.25}
    for code, want in expected.items():
        np.testing.assert_array_equal(run(Chain(0).then(code, args[code]), x), want, err_msg=f"operation {code}")


def test_yeo_johnson_equals_scipy_for_every_branch() -> None:
    x = values()
    x = x[~np.isnan(x)]
    for lmbda in (0.0, 0.37, 2.0, -1.2):  # log1p branch (0), the usual one, the negative side's log1p branch (2)
        got = run(Chain(0).then(YEO_JOHNSON, lmbda), x)
        np.testing.assert_allclose(got, stats.yeojohnson(x, lmbda=lmbda), rtol=1e-13, atol=1e-13)


def test_a_chain_applies_its_operations_in_order() -> None:
    """Impute with the median, then Yeo-Johnson, then standardize: PowerTransformer after SimpleImputer."""
    x = values()
    imputer = SimpleImputer(strategy="median").fit(x[:, None])
    power = PowerTransformer().fit(imputer.transform(x[:, None]))
    chain = (Chain(0).then(FILL, imputer.statistics_[0]).then(YEO_JOHNSON, power.lambdas_[0])
             .then(SUB, power._scaler.mean_[0]).then(DIV, power._scaler.scale_[0]))
    expected = power.transform(imputer.transform(x[:, None]))[:, 0]
    np.testing.assert_allclose(run(chain, x), expected, rtol=0, atol=1e-12)
    scaler = StandardScaler().fit(x[~np.isnan(x), None])
    np.testing.assert_allclose(run(Chain(0).then(SUB, scaler.mean_[0]).then(DIV, scaler.scale_[0]), x),
                               scaler.transform(x[:, None])[:, 0], rtol=0, atol=1e-12)


def test_lookups_read_each_columns_table_for_codes_unknown_and_missing() -> None:
    texts = pd.DataFrame({"a": ["x", "y", "z", "x"], "b": ["u", "v", "u", None]}, dtype=object)
    vocabs = [("x", "y", "z"), ("u", "v")]
    for encoder in (OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                    OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan)):
        encoder.fit(texts)
        tables = Tables()
        chains = [out for j, table in enumerate(category_tables(encoder, ["a", "b"], vocabs))
                  for out in tables.lookups(Chain(j), table)]
        program = Program.of(chains, tables.flat)
        codes = np.array([[0.0, 1.0], [2.0, np.nan], [-1.0, 0.0], [1.0, -1.0]])  # -1: a text in no vocabulary
        asked = pd.DataFrame({"a": ["x", "z", UNSEEN_TEXT, "y"], "b": ["v", None, "u", UNSEEN_TEXT]}, dtype=object)
        np.testing.assert_array_equal(program.run(codes), encoder.transform(asked))


def test_a_row_gets_the_same_values_alone_and_among_others() -> None:
    x = np.column_stack([values(), values(seed=4)])
    program = Program.of([Chain(0).then(YEO_JOHNSON, 0.4), Chain(1).then(FILL, 1.0).then(SUB, 0.5), Chain(0)])
    together = program.run(x)
    alone = np.vstack([program.run(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_array_equal(together, alone)
    assert together.shape == (len(x), 3) and together.flags.c_contiguous


def test_the_comparisons_are_those_the_features_step_knows() -> None:
    """The features step's derived indicators (`model.pipeline.OPS`, and "isnull") each have an operation."""
    assert set(COMPARISONS) == set(OPS)
