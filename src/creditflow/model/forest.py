"""Boosted trees packed into flat arrays and walked by compiled (numba) loops: score and reasons in microseconds.

A small request pays the libraries' per-call overhead, not arithmetic: XGBoost's `inplace_predict` has a fixed
cost whatever the size, scikit-learn's HistGradientBoosting calls Cython once per tree, and shap's explainer
converts the model for each call (docs/performance.md says when each path is faster). `pack` reads a fitted binary
HistGradientBoostingClassifier or XGBClassifier once into node arrays; `margin` gives the log-odds exactly as the
library computes them (HistGradientBoosting: float64, left when x <= threshold; XGBoost: float32 inputs,
thresholds and sums, left when x < split, which is x <= the float32 just below the split). `explain` gives, in
the same walk, the margin and the interventional Shapley values against one reference row: the values of shap's
`TreeExplainer(model, data=reference[None], feature_perturbation="interventional")`, with the leaf values summed
in float64 (shap sums float32) and the model's own splits (shap rounds HistGradientBoosting's float64 thresholds
to float32, so a training value lying between the two goes the other way than in the model, and shap's values then
miss the margin by a whole leaf).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier
from xgboost import XGBClassifier

from creditflow.model.categories import NotCompilable
from creditflow.model.pipeline import positive_index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Forest:
    """A tree ensemble as node arrays (node ids global, trees one after another) and the margin it starts from."""

    feature: np.ndarray  # int32 per node; -1 at a leaf
    threshold: np.ndarray  # go left when x <= threshold (float32 for XGBoost, float64 for HistGradientBoosting)
    left: np.ndarray  # int32 child node ids
    right: np.ndarray
    missing: np.ndarray  # int32: the child a missing value goes to
    value: np.ndarray  # leaf values, in the dtype the library sums them in
    roots: np.ndarray  # int32: the first node of each tree, then the number of nodes
    base: np.floating  # the margin before any tree (the library's baseline prediction / logit of base_score)
    weights: np.ndarray  # w[n, m] = m! (n-m-1)! / n!: the Shapley weight of a feature joining m of n others

    @property
    def trees(self) -> int:
        return len(self.roots) - 1

    @property
    def single(self) -> bool:
        """XGBoost: inputs, comparisons and sums in float32."""
        return self.value.dtype == np.float32

    def inputs(self, Z: np.ndarray) -> np.ndarray:
        """Rows as the library reads them (XGBoost rounds them to float32), C-ordered for the row walks."""
        return np.ascontiguousarray(Z, dtype=self.value.dtype)

    def margin(self, Z: np.ndarray) -> np.ndarray:
        """The raw score (log-odds) of each row, in the library's dtype."""
        out = np.full(len(Z), self.base, dtype=self.value.dtype)
        _margin(self.inputs(Z), self.feature, self.threshold, self.left, self.right, self.missing, self.value,
                self.roots, out)
        return out

    def probability(self, Z: np.ndarray) -> np.ndarray:
        """P(default) as predict_proba gives it (XGBoost: its float32 sigmoid), as float64."""
        return self.of_margin(self.margin(Z))

    def of_margin(self, m: np.ndarray) -> np.ndarray:
        """The library's probability of a margin of `margin`'s dtype (overwritten)."""
        if self.single:
            _sigmoid32(m)
            return m.astype("float64")
        return expit(m)

    def route(self, reference: np.ndarray) -> np.ndarray:
        """The child the reference row goes to at each split node (-1 at a leaf): found once per reference."""
        r = np.asarray(reference, dtype=self.value.dtype)
        return _route(r, self.feature, self.threshold, self.left, self.right, self.missing)

    def explain(self, Z: np.ndarray, route: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row, the margin (as `margin`) and the Shapley values of the margin against the reference whose
        `route` this is (float64), in one walk."""
        margin = np.full(len(Z), self.base, dtype=self.value.dtype)
        out = np.zeros(Z.shape, dtype="float64")
        _walk(self.inputs(Z), route, self.feature, self.threshold, self.left, self.right, self.missing, self.value,
              self.roots, self.weights, margin, out)
        return margin, out

    def baseline_shapley(self, Z: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Per row, the interventional Shapley values of the margin against the one reference row (float64)."""
        return self.explain(Z, self.route(reference))[1]


def pack(model: Any) -> Forest:
    """The fitted binary classifier as a Forest; NotCompilable for what the kernels do not replay."""
    if isinstance(model, HistGradientBoostingClassifier):
        return _pack_hist(model)
    if isinstance(model, XGBClassifier):
        return _pack_xgboost(model)
    raise NotCompilable(f"no compiled trees for {type(model).__name__}")


def packed(model: Any) -> Forest | None:
    """The Forest of a binary boosted-tree model whose class 1 is P(default), or None where the libraries stay."""
    try:
        if positive_index(model) != 1:
            raise NotCompilable("class 1 is not predict_proba's second column")
        return pack(model)
    except NotCompilable as err:
        log.info("trees keep the library's scoring: %s", err)
        return None


def xgboost_iterations(model: XGBClassifier) -> tuple[int, int]:
    """The trees predict() uses: those up to the best iteration after early stopping, else all (0, 0)."""
    try:
        return 0, model.best_iteration + 1
    except AttributeError:
        return 0, 0


def compiled_rows(model: Any) -> float:
    """Up to how many rows the packed trees score a call (probability alone) faster than the library
    (docs/performance.md): XGBoost's predictor costs more a call but less a row than the compiled loop,
    HistGradientBoosting's more at any size."""
    return 64 if isinstance(model, XGBClassifier) else np.inf


def _join(trees: list[dict[str, np.ndarray]], value_dtype: str, base: np.floating) -> Forest:
    """Trees with local node ids as one Forest with global ids."""
    sizes = np.array([len(t["feature"]) for t in trees], dtype=np.int64)
    roots = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    glue = {k: np.concatenate([t[k] for t in trees]) for k in trees[0]}
    offset = np.repeat(roots[:-1], sizes)
    leaf = glue["feature"] < 0
    left = np.where(leaf, -1, glue["left"] + offset).astype(np.int32)
    right = np.where(leaf, -1, glue["right"] + offset).astype(np.int32)
    missing = np.where(glue["default_left"].astype(bool), left, right).astype(np.int32)
    depth = int(max(_depth(t["left"], t["right"], t["feature"] < 0) for t in trees))
    return Forest(glue["feature"].astype(np.int32), glue["threshold"], left, right, missing,
                  glue["value"].astype(value_dtype), roots, base, _weights(depth))


def _depth(left: np.ndarray, right: np.ndarray, leaf: np.ndarray) -> int:
    deepest, stack = 0, [(0, 0)]
    while stack:
        node, d = stack.pop()
        if leaf[node]:
            deepest = max(deepest, d)
        else:
            stack += [(int(left[node]), d + 1), (int(right[node]), d + 1)]
    return deepest


def _pack_hist(model: HistGradientBoostingClassifier) -> Forest:
    if model.n_trees_per_iteration_ != 1:
        raise NotCompilable("HistGradientBoosting with more than one class column")
    trees = []
    for (predictor,) in model._predictors:
        nodes = predictor.nodes
        if nodes["is_categorical"].any():
            raise NotCompilable("HistGradientBoosting with categorical splits")
        leaf = nodes["is_leaf"].astype(bool)
        trees.append({"feature": np.where(leaf, -1, nodes["feature_idx"]), "threshold": nodes["num_threshold"],
                      "left": nodes["left"].astype(np.int64), "right": nodes["right"].astype(np.int64),
                      "default_left": nodes["missing_go_to_left"], "value": nodes["value"]})
    return _join(trees, "float64", np.float64(np.ravel(model._baseline_prediction)[0]))


def _pack_xgboost(model: XGBClassifier) -> Forest:
    learner = json.loads(model.get_booster().save_raw("json"))["learner"]
    booster, params = learner["gradient_booster"], learner["learner_model_param"]
    if booster["name"] != "gbtree" or learner["objective"]["name"] != "binary:logistic":
        raise NotCompilable(f"XGBoost {booster['name']} / {learner['objective']['name']}: only gbtree binary:logistic")
    if int(params.get("num_target", 1)) != 1 or int(booster["model"]["gbtree_model_param"]["num_parallel_tree"]) != 1:
        raise NotCompilable("XGBoost with several targets or parallel trees")
    if not (isinstance(model.missing, float) and math.isnan(model.missing)):
        raise NotCompilable("XGBoost with a missing-value marker other than NaN")
    trees = booster["model"]["trees"]
    _, stop = xgboost_iterations(model)
    trees = trees[:stop] if stop else trees
    packed = []
    for tree in trees:
        if any(tree["split_type"]):
            raise NotCompilable("XGBoost with native categorical splits")
        left = np.asarray(tree["left_children"], dtype=np.int64)
        split = np.asarray(tree["split_conditions"], dtype=np.float32)
        leaf = left == -1
        packed.append({"feature": np.where(leaf, -1, np.asarray(tree["split_indices"], dtype=np.int64)),
                       "threshold": np.where(leaf, np.float32(0), np.nextafter(split, np.float32(-np.inf))),
                       "left": left, "right": np.asarray(tree["right_children"], dtype=np.int64),
                       "default_left": np.asarray(tree["default_left"], dtype=bool),
                       "value": np.where(leaf, split, np.float32(0))})
    score = np.float32(params["base_score"].strip("[]"))  # a probability; the trees start from its log-odds,
    odds = float(np.float32(1) / score - np.float32(1))  # -logf(1/p - 1) as XGBoost: a correctly rounded log (numpy's
    return _join(packed, "float32", np.float32(-math.log(odds)))  # float32 log can be one unit in the last place off)


def _weights(depth: int) -> np.ndarray:
    """w[n, m] = m! (n-m-1)! / n!, the Shapley weight of a feature joining m others of n."""
    w = np.zeros((depth + 2, depth + 2))
    for n in range(1, depth + 2):
        for m in range(n):
            w[n, m] = 1.0 / (n * math.comb(n - 1, m))
    return w


@njit(cache=True)
def _margin(Z, feature, threshold, left, right, missing, value, roots, out):  # noqa: ANN001, ANN202
    """Adds each tree's leaf to each row's margin, tree by tree (the tree stays in cache; each row's sum in the
    library's order). The split rule (NaN its own way, left when x <= threshold) is written out in each kernel here:
    a shared helper, even inlined, made the loops slower (docs/performance.md)."""
    for t in range(roots.shape[0] - 1):
        for i in range(Z.shape[0]):
            node = roots[t]
            while feature[node] >= 0:
                x = Z[i, feature[node]]
                if np.isnan(x):
                    node = missing[node]
                elif x <= threshold[node]:
                    node = left[node]
                else:
                    node = right[node]
            out[i] += value[node]


@njit(cache=True)
def _sigmoid32(m):  # noqa: ANN001, ANN202
    """XGBoost's float32 sigmoid, 1 / (1 + exp(-x)) with -x capped at 88.7, in place."""
    one, cap = np.float32(1.0), np.float32(88.7)
    for i in range(m.shape[0]):
        m[i] = one / (math.exp(min(-m[i], cap)) + one)


@njit(cache=True)
def _route(r, feature, threshold, left, right, missing):  # noqa: ANN001, ANN202
    out = np.full(feature.shape[0], -1, np.int32)
    for node in range(feature.shape[0]):
        f = feature[node]
        if f >= 0:
            out[node] = missing[node] if np.isnan(r[f]) else (left[node] if r[f] <= threshold[node] else right[node])
    return out


@njit(cache=True)
def _walk(X, route, feature, threshold, left, right, missing, value, roots, w, margin, out):  # noqa: ANN001, ANN202, C901
    """Baseline Shapley of each tree, tree by tree (it stays in cache), row by row. Where x and the reference part
    on a feature not yet taken, the walk goes both ways, x's side first with the feature taken from x (`taken` 1,
    pushed on `xs`), then the reference's with it taken from the reference (-1, on `rs`); a feature taken follows
    its side further down. A leaf reached needing the a features of `xs` and the b of `rs` adds
    value * (a-1)! b! / (a+b)! to each of `xs` and takes value * a! (b-1)! / (a+b)! from each of `rs`. The first
    leaf reached is x's own: its value goes to the margin, in the library's order and dtype."""
    taken = np.zeros(X.shape[1], np.int8)
    xs = np.zeros(w.shape[0], np.int32)
    rs = np.zeros(w.shape[0], np.int32)
    parted = np.zeros(w.shape[0], np.int32)  # the nodes where the walk went both ways, outermost first
    for t in range(roots.shape[0] - 1):
        for i in range(X.shape[0]):
            node, a, b, depth, first = roots[t], 0, 0, 0, True
            while True:
                while feature[node] >= 0:
                    f = feature[node]
                    if taken[f] < 0:
                        node = route[node]
                        continue
                    v = X[i, f]
                    nx = missing[node] if np.isnan(v) else (left[node] if v <= threshold[node] else right[node])
                    if taken[f] == 0 and nx != route[node]:
                        parted[depth] = node
                        depth += 1
                        taken[f] = 1
                        xs[a] = f
                        a += 1
                    node = nx
                if first:
                    margin[i] += value[node]
                    first = False
                if a + b:
                    leaf = np.float64(value[node])
                    if a:
                        share = leaf * w[a + b, a - 1]
                        for k in range(a):
                            out[i, xs[k]] += share
                    if b:
                        share = leaf * w[a + b, a]
                        for k in range(b):
                            out[i, rs[k]] -= share
                while depth:  # back up to the last split whose reference side is still to walk
                    f = feature[parted[depth - 1]]
                    if taken[f] > 0:
                        a -= 1
                        taken[f] = -1
                        rs[b] = f
                        b += 1
                        node = route[parted[depth - 1]]
                        break
                    b -= 1
                    taken[f] = 0
                    depth -= 1
                if not depth:
                    break
