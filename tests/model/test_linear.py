"""A linear model scored in one compiled pass: the values of the transform, the log-odds and the raw products."""

from __future__ import annotations

import numpy as np
import pytest

from creditflow.model.compiled import compile_scorer
from creditflow.model.shap import linear_terms
from creditflow.train.log_model import shap_reference


@pytest.fixture(scope="module")
def scorer_and_rows(small_spec, fitted_logistic):
    pipe, split = fitted_logistic[1:]
    reference = np.asarray(shap_reference(pipe, split.X_train, small_spec))
    R = split.X_test[small_spec.raw_columns].head(200).to_numpy(dtype="float64", copy=True)
    R[0, 3], R[1, 4] = np.nan, np.nan  # missing values go through the imputer's chain
    return compile_scorer(pipe, small_spec, reference), R, pipe, reference


def test_one_pass_gives_the_bits_of_the_transform_then_the_products(scorer_and_rows) -> None:
    scorer, R, _, _ = scorer_and_rows
    margin, raw = scorer.linear.score(scorer.program, R)
    Z = scorer.transform(R)
    np.testing.assert_array_equal(margin, scorer.linear.margins(Z))
    np.testing.assert_array_equal(raw, scorer.linear.raw_contributions(Z))
    np.testing.assert_array_equal(scorer.score(R).probability, scorer.probability_of(Z))


def test_each_row_alone_gets_the_bits_it_gets_among_others(scorer_and_rows) -> None:
    scorer, R, _, _ = scorer_and_rows
    many = scorer.score(R)
    alone = [scorer.score(R[i:i + 1]) for i in range(len(R))]
    np.testing.assert_array_equal([a.probability[0] for a in alone], many.probability)
    np.testing.assert_array_equal(np.vstack([a.contributions for a in alone]), many.contributions)


def test_the_values_are_the_closed_form_products(scorer_and_rows) -> None:
    scorer, R, pipe, reference = scorer_and_rows
    coef, intercept = linear_terms(pipe.named_steps["model"])
    Z = scorer.transform(R)
    margin, raw = scorer.linear.score(scorer.program, R)
    np.testing.assert_allclose(margin, Z @ coef + intercept, rtol=0, atol=1e-12)
    np.testing.assert_allclose(raw, ((Z - reference) * coef) @ scorer.to_raw, rtol=0, atol=1e-12)
    assert raw.shape == (len(R), len(scorer.raw_columns))


def test_a_matrix_of_another_width_is_refused_not_read_past_its_end(scorer_and_rows) -> None:
    scorer, R, _, _ = scorer_and_rows
    Z = scorer.transform(R)
    with pytest.raises(ValueError, match="preprocessed columns for a linear model"):
        scorer.linear.margins(Z[:, :-1])
    with pytest.raises(ValueError, match="preprocessed columns for a linear model"):
        scorer.linear.raw_contributions(np.hstack([Z, Z[:, :1]]))
