"""The request path: the fitted pipeline's preprocessing compiled into one program of column operations.

scikit-learn's `ColumnTransformer` spends most of a one-row call on pandas selection and validation,
not arithmetic (docs/performance.md). `compile_scorer` reads the fitted parameters of the
pipeline (renames, sentinels, derived flags, imputer statistics, Yeo-Johnson lambdas, scaler
moments, categorical encoders) once and replays them as chains of column operations on a float matrix of the raw
columns, run in one compiled loop (`model.program`). The final
estimator is called as fitted, on the same preprocessed matrix, so probabilities equal the
pipeline's (tests check 1e-9 for every family). Explanations are computed on that same matrix:

- linear models: exact interventional SHAP in closed form, coef * (z - reference), where the
  reference is the mean preprocessed training row stored with the model (as `model.shap.raw_shap`
  with the training rows as background);
- trees: baseline Shapley against the reference applicant stored with the model, as `model.shap.raw_shap`
  with the training rows as background (shap's interventional `TreeExplainer` with that one background
  row). Boosted trees are packed into compiled loops (`model.forest`: the same probabilities, and the
  values with the leaves summed in float64), which explain every call and give its probability in the same
  walk; a call for the probability alone uses them where they are faster (`forest.compiled_rows`). Models
  logged without a reference
  (and XGBoost with native categorical splits) keep path-dependent TreeSHAP: XGBoost's own
  `pred_contribs`, shap's `TreeExplainer` for other trees.

Each is linear in the number of rows. Categorical columns arrive as codes into their vocabulary
(`model.categories`), and their fitted imputer and encoders are replayed on the codes. A pipeline
holding a step this module does not know raises `NotCompilable`; the caller then uses `fast=False`,
which keeps scikit-learn's preprocessing (on the codes turned back into texts) and shares the rest.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import expit
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, PowerTransformer, StandardScaler
from threadpoolctl import ThreadpoolController
from xgboost import XGBClassifier

from creditflow.model.categories import Codes, NotCompilable, category_tables, texts_series, vocabulary
from creditflow.model.forest import compiled_rows, packed
from creditflow.model.linear import LinearScorer
from creditflow.model.pipeline import CreditFeatures, is_linear, positive_index
from creditflow.model.program import (
    CAP,
    COMPARISONS,
    DIV,
    FILL,
    ISNAN,
    SENTINEL,
    SUB,
    YEO_JOHNSON,
    Chain,
    Program,
    Tables,
)
from creditflow.model.shap import (
    has_categorical_splits,
    linear_terms,
    raw_projection,
    tree_contributions,
    tree_explainer,
    xgboost_contributions,
)
from creditflow.specs import DatasetSpec

Block = Callable[[np.ndarray], np.ndarray]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    """Per row: P(default), and SHAP values in the raw columns (log-odds; probability for forests)."""

    probability: np.ndarray
    contributions: np.ndarray


# ---------------------------------------------------------------- preprocessing, as a program of column chains

Step = Callable[[list[Chain]], list[Chain]]


def _features(step: CreditFeatures, raw_columns: list[str]) -> tuple[list[str], list[Chain]]:
    """CreditFeatures as chains (sentinels, derived flags, caps): the model columns' names and chains."""
    known = {"renames", "sentinels", "derived", "caps"}
    if set(step.get_params()) != known:
        raise NotCompilable(f"the features step has parameters beyond {sorted(known)}")
    renames = step.renames or {}
    if list(renames) != raw_columns:
        raise NotCompilable("the features step does not read the raw columns in signature order")
    names = list(renames.values())
    chains = [Chain(j) for j in range(len(names))]
    for col, values in (step.sentinels or {}).items():
        j = names.index(col)
        for value in values or ():
            chains[j] = chains[j].then(SENTINEL, value)
    derived = [chains[names.index(col)].then(ISNAN) if op == "isnull" else chains[names.index(col)].then(
        COMPARISONS[op], value) for col, op, value in (step.derived or {}).values()]  # they see the sentinels' missing
    for col, ceiling in (step.caps or {}).items():  # after the indicators, which see the uncapped values
        chains[names.index(col)] = chains[names.index(col)].then(CAP, ceiling)
    return names + list(step.derived or {}), chains + derived


def _imputer(step: SimpleImputer) -> Step:
    if np.asarray(step.statistics_).dtype.kind not in "fiub":
        raise NotCompilable("imputer of text columns")
    stats = np.asarray(step.statistics_, dtype="float64")
    keep = np.ones(len(stats), bool) if step.keep_empty_features else ~np.isnan(stats)
    if not (isinstance(step.missing_values, float) and np.isnan(step.missing_values)):
        raise NotCompilable("imputer with a missing-value marker other than NaN")
    flags = [] if step.indicator_ is None else list(np.asarray(step.indicator_.features_))
    kept = np.flatnonzero(keep)
    return lambda chains: [chains[c].then(FILL, stats[c]) for c in kept] + [chains[c].then(ISNAN) for c in flags]


def _scaler(step: StandardScaler) -> Step:
    """scikit-learn's order: subtract the mean, then divide by the scale."""
    mean = step.mean_ if step.with_mean else None
    scale = step.scale_ if step.with_std else None

    def apply(chains: list[Chain]) -> list[Chain]:
        chains = [c.then(SUB, mean[i]) for i, c in enumerate(chains)] if mean is not None else chains
        return [c.then(DIV, scale[i]) for i, c in enumerate(chains)] if scale is not None else chains

    return apply


def _power(step: PowerTransformer) -> Step:
    if step.method != "yeo-johnson":
        raise NotCompilable(f"power transform '{step.method}'")
    lambdas = np.asarray(step.lambdas_, dtype="float64")
    standardize = _scaler(step._scaler) if step.standardize else None

    def apply(chains: list[Chain]) -> list[Chain]:
        out = [c.then(YEO_JOHNSON, lambdas[i]) for i, c in enumerate(chains)]
        return standardize(out) if standardize else out

    return apply


def _step(step: Any) -> Step:
    if isinstance(step, str) and step == "passthrough":
        return lambda chains: chains
    if isinstance(step, FunctionTransformer) and step.func is None:  # how ColumnTransformer stores passthrough
        return lambda chains: chains
    if isinstance(step, Pipeline):
        steps = [_step(s) for _, s in step.steps]

        def chain(chains: list[Chain]) -> list[Chain]:
            for apply in steps:
                chains = apply(chains)
            return chains

        return chain
    if isinstance(step, SimpleImputer):
        return _imputer(step)
    if isinstance(step, PowerTransformer):
        return _power(step)
    if isinstance(step, StandardScaler):
        return _scaler(step)
    raise NotCompilable(f"no fast path for {type(step).__name__}")


def _program(pipe: Pipeline, spec: DatasetSpec, codes: Codes) -> Program:
    """The features and preprocess steps as one program: raw matrix in, preprocessed matrix out."""
    names, features = _features(pipe.named_steps["features"], spec.raw_columns)
    categorical = set(spec.model_columns("categorical"))
    chains, tables = [], Tables()
    for group, transformer, cols in pipe.named_steps["preprocess"].transformers_:
        if transformer == "drop" or (group == "remainder" and len(cols) == 0):
            continue
        if group == "remainder":
            raise NotCompilable("the column transformer passes remainder columns through")
        inputs = [features[names.index(c)] for c in cols]
        if categorical.isdisjoint(cols):
            chains += _step(transformer)(inputs)
        elif categorical.issuperset(cols):  # codes into each column's vocabulary, looked up in the encoder's tables
            found = category_tables(transformer, list(cols), [codes.texts[spec.raw_name_of(c)] for c in cols])
            chains += [out for chain, table in zip(inputs, found, strict=True) for out in tables.lookups(chain, table)]
        else:
            raise NotCompilable("a transformer mixes categorical and numeric columns")
    return Program.of(chains, tables.flat)


# ---------------------------------------------------------------- estimator and explanations


def row_products(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """`A @ B` row by row (numpy's einsum loop, not BLAS): a row's answer is the same whichever rows are scored with
    it, bit for bit (BLAS sums in another order for one row than for several), so requests scored together
    (serving.coalesce) get the answers they get alone."""
    return np.einsum("ij,j->i" if B.ndim == 1 else "ij,jk->ik", np.ascontiguousarray(A), B)


def _linear(model: Any, reference: np.ndarray | None, to_raw: np.ndarray) -> tuple[Callable, Callable, LinearScorer]:
    if reference is None:
        raise NotCompilable("a linear model needs the SHAP reference row (mean preprocessed training row)")
    coef, intercept = linear_terms(model)
    terms = LinearScorer.of(coef, intercept, reference, to_raw)

    def probability(Z: np.ndarray) -> np.ndarray:
        return expit(terms.margins(Z))

    def contributions(Z: np.ndarray) -> np.ndarray:
        return (Z - reference) * coef

    return probability, contributions, terms


def _one_thread(model: Any) -> Any:
    """A copy of the estimator that predicts on one thread (docs/performance.md: a parallel region per tree costs
    far more than the arithmetic of a small request, and Spark runs one worker per core)."""
    if "n_jobs" not in model.get_params():
        return model
    model = copy.deepcopy(model)
    model.set_params(n_jobs=1)
    if isinstance(model, XGBClassifier):
        model.get_booster().set_param({"nthread": 1})
    return model


def _tree(model: Any, reference: np.ndarray | None) -> tuple[Callable, Callable, Callable | None]:
    """Probability, contributions, and both at once (None: no faster than the two). Packed boosted trees explain
    every call, giving the probability in the same walk, and score the calls they score faster than the library
    alone (`forest.compiled_rows`); other trees keep the libraries (`_library_tree`)."""
    forest = None if reference is None else packed(model)
    probability, contributions = _library_tree(model, reference, explain=forest is None)
    if forest is None:
        return probability, contributions, None
    route = forest.route(reference)
    forest.explain(reference[None, :], route)  # the kernels compiled (or read from numba's disk cache) at load,
    forest.probability(reference[None, :])  # not on the first request
    rows = compiled_rows(model)

    def fast_probability(Z: np.ndarray) -> np.ndarray:
        return forest.probability(Z) if len(Z) <= rows else probability(Z)

    def fast_contributions(Z: np.ndarray) -> np.ndarray:
        return forest.explain(Z, route)[1]

    def both(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        margin, values = forest.explain(Z, route)
        return forest.of_margin(margin), values

    return fast_probability, fast_contributions, both


def _library_tree(model: Any, reference: np.ndarray | None, explain: bool) -> tuple[Callable, Callable | None]:
    """The library's probability on one thread, and (if `explain`) shap's baseline Shapley against the reference
    applicant, or path-dependent TreeSHAP for models logged without one (XGBoost's own `pred_contribs`)."""
    pos = positive_index(model)
    model = _one_thread(model)
    threads = ThreadpoolController()  # HistGradientBoosting has no n_jobs: OpenMP limited for each call, restored

    def probability(Z: np.ndarray) -> np.ndarray:
        with threads.limit(limits=1, user_api="openmp"):
            return model.predict_proba(np.ascontiguousarray(Z))[:, pos].astype("float64")

    if not explain:
        return probability, None
    if reference is None and isinstance(model, XGBClassifier):
        return probability, lambda Z: xgboost_contributions(model, Z)[:, :-1]
    explainer = tree_explainer(model, None if has_categorical_splits(model) else reference)
    return probability, lambda Z: tree_contributions(explainer, model, Z)


# ---------------------------------------------------------------- the compiled scorer


@dataclass(frozen=True)
class FastScorer:
    """The compiled pipeline: raw float matrix (signature column order) → probability and raw-space SHAP."""

    raw_columns: list[str]
    preprocess: Block  # raw matrix -> preprocessed matrix (a `Program`'s run, or scikit-learn's own transform)
    probability_of: Callable[[np.ndarray], np.ndarray]
    contributions_of: Callable[[np.ndarray], np.ndarray]
    to_raw: np.ndarray  # preprocessed columns x raw columns, 1 where the column comes from the raw one
    codes: Codes  # categorical columns enter the raw matrix as codes into their vocabulary
    program: Program | None = None  # the compiled preprocessing (None: scikit-learn's own)
    linear: LinearScorer | None = None  # a linear model's terms, scored in one pass with the program
    both: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None  # packed trees: one walk for the two

    def transform(self, R: np.ndarray) -> np.ndarray:
        return self.preprocess(R)

    def probability(self, R: np.ndarray) -> np.ndarray:
        return self.probability_of(self.transform(R))

    def score(self, R: np.ndarray) -> Scored:
        if self.linear is not None and self.program is not None:  # one compiled call (model.linear): same values
            margin, raw = self.linear.score(self.program, R)
            return Scored(expit(margin), raw)
        Z = self.transform(R)
        if self.both is not None:
            probability, contributions = self.both(Z)
            return Scored(probability, row_products(contributions, self.to_raw))
        return Scored(self.probability_of(Z), self.raw_contributions(Z))

    def raw_contributions(self, Z: np.ndarray) -> np.ndarray:
        """SHAP values of preprocessed rows, summed back onto the raw columns they come from."""
        if self.linear is not None:
            return self.linear.raw_contributions(Z)
        return row_products(self.contributions_of(Z), self.to_raw)


def _pipeline_transform(pipe: Pipeline, raw_columns: list[str], codes: Codes) -> Block:
    """The slow path: scikit-learn's own transform on a DataFrame of the raw matrix (categories as texts)."""

    def transform(R: np.ndarray) -> np.ndarray:
        frame = pd.DataFrame({c: texts_series(codes.decode(c, R[:, j])) if c in codes.texts else R[:, j]
                              for j, c in enumerate(raw_columns)})
        Z = pipe[:-1].transform(frame)
        return Z.toarray() if sparse.issparse(Z) else np.asarray(Z, dtype="float64")

    return transform


def compile_scorer(
    pipe: Pipeline, spec: DatasetSpec, reference: np.ndarray | None = None, fast: bool = True
) -> FastScorer:
    """Compile a fitted features → preprocess → model pipeline; `reference` is the SHAP reference applicant.

    `fast=False` keeps scikit-learn's preprocessing (for pipelines with steps this module does not know).
    """
    if [name for name, _ in pipe.steps][-1:] != ["model"]:
        raise NotCompilable("expected the last step to be named 'model'")
    codes = Codes(vocabulary(pipe, spec))
    program = None
    if fast:
        if [name for name, _ in pipe.steps] != ["features", "preprocess", "model"]:
            raise NotCompilable("expected the steps features, preprocess, model")
        program = _program(pipe, spec, codes)
        preprocess = program.run
    else:
        preprocess = _pipeline_transform(pipe, spec.raw_columns, codes)
    model, to_raw = pipe.named_steps["model"], raw_projection(pipe, spec)
    if is_linear(model):
        probability, contributions, linear = _linear(model, reference, to_raw)
        return FastScorer(spec.raw_columns, preprocess, probability, contributions, to_raw, codes, program, linear)
    probability, contributions, both = _tree(model, reference)
    return FastScorer(spec.raw_columns, preprocess, probability, contributions, to_raw, codes, program, both=both)
