"""Boosted trees packed into flat arrays and walked by compiled (numba) loops: score and reasons in microseconds.

A small request pays the libraries' per-call overhead, not arithmetic: XGBoost's `inplace_predict` has a fixed
cost whatever the size, scikit-learn's HistGradientBoosting calls Cython once per tree, and shap's explainer
converts the model for each call (docs/performance.md says when each path is faster). `pack` reads a fitted binary
HistGradientBoostingClassifier or XGBClassifier once into node arrays; `margin` gives the log-odds exactly as the
library computes them (HistGradientBoosting: float64, left when x <= threshold; XGBoost: float32 inputs,
thresholds and sums, left when x < split, which is x <= the float32 just below the split), and
`baseline_shapley` the interventional Shapley values against one reference row, the algorithm of shap's
`TreeExplainer(model, data=reference[None], feature_perturbation="interventional")` carried over line by line,
with its float32 leaf values and partial sums, so the values are shap's own (equal to the last bit in tests). One
deliberate difference: the splits are the library's. shap rounds HistGradientBoosting's float64 thresholds to
float32, so a value lying between the two (HGB takes thresholds from the training values: it happens) goes the
other way than in the model, and shap's values then miss the margin by a whole leaf; ours add up to the margin
difference to float32 rounding.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from numba import njit
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier
from xgboost import XGBClassifier

from creditflow.model.categories import NotCompilable
from creditflow.model.shap import xgboost_iterations

FROM_NEITHER, FROM_X, FROM_R = 0, 1, 2  # how the walk reached a node: both rows, only x's side, only r's side


@dataclass(frozen=True)
class Forest:
    """A tree ensemble as node arrays (node ids global, trees one after another) and the margin it starts from."""

    feature: np.ndarray  # int32 per node; -1 at a leaf
    threshold: np.ndarray  # go left when x <= threshold (float32 for XGBoost, float64 for HistGradientBoosting)
    left: np.ndarray  # int32 child node ids
    right: np.ndarray
    missing: np.ndarray  # int32: the child a missing value goes to
    parent: np.ndarray  # int32: the parent node id (a root its own)
    value: np.ndarray  # leaf values, in the dtype the library sums them in
    roots: np.ndarray  # int32: the first node of each tree, then the number of nodes
    base: np.floating  # the margin before any tree (the library's baseline prediction / logit of base_score)
    weights: np.ndarray  # float32 w[n, m] = m! (n-m-1)! / n!: the Shapley weight of a feature joining m of n others

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
        m = self.margin(Z)
        if self.single:
            _sigmoid32(m)
            return m.astype("float64")
        return expit(m)

    @cached_property
    def value32(self) -> np.ndarray:
        """Leaf values in float32, as shap's explainer holds them."""
        return self.value.astype("float32")

    def baseline_shapley(self, Z: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Per row, the interventional Shapley values of the margin against the one reference row (float64)."""
        X = self.inputs(Z).astype("float64")  # shap compares float64 rows with float32 thresholds
        r = np.asarray(reference, dtype=self.value.dtype).astype("float64")
        out = np.zeros(X.shape, dtype="float64")
        _shapley(X, r, self.feature, self.threshold, self.left, self.right, self.missing, self.parent,
                 self.value32, self.roots, self.weights, out)
        return out


def pack(model: Any) -> Forest:
    """The fitted binary classifier as a Forest; NotCompilable for what the kernels do not replay."""
    if isinstance(model, HistGradientBoostingClassifier):
        return _pack_hist(model)
    if isinstance(model, XGBClassifier):
        return _pack_xgboost(model)
    raise NotCompilable(f"no compiled trees for {type(model).__name__}")


def compiled_rows(model: Any) -> tuple[float, float]:
    """Up to how many rows the packed trees score and explain a call faster than the libraries (docs/performance.md):
    XGBoost's predictor costs more a call but less a row than the compiled loop, HistGradientBoosting's more at any
    size; shap's explainer costs more a call but less a row than the compiled port (one-row XGBoost calls only)."""
    return (64, 1) if isinstance(model, XGBClassifier) else (np.inf, 0)


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
    parent = np.arange(len(leaf), dtype=np.int32)
    parent[left[~leaf]] = np.flatnonzero(~leaf)
    parent[right[~leaf]] = np.flatnonzero(~leaf)
    depth = int(max(_depth(t["left"], t["right"], t["feature"] < 0) for t in trees))
    return Forest(glue["feature"].astype(np.int32), glue["threshold"], left, right, missing, parent,
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
    """w[n, m] = m! (n-m-1)! / n!, the Shapley weight of a feature joining m others of n, in float32 as shap."""
    w = np.zeros((depth + 2, depth + 2), dtype=np.float32)
    for n in range(1, depth + 2):
        for m in range(n):
            w[n, m] = 1.0 / (n * math.comb(n - 1, m))
    return w


@njit(cache=True)
def _margin(Z, feature, threshold, left, right, missing, value, roots, out):  # noqa: ANN001, ANN202
    """Adds each tree's leaf to each row's margin, tree by tree (the tree stays in cache; each row's sum in the
    library's order)."""
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


@njit(cache=True, inline="always")  # inlined in numba's IR: no array reference counting per node
def _step(x, r, feature, threshold, left, right, missing, node):  # noqa: ANN001, ANN202
    """The children x and r go to at a split node (shap's rule: right when above the threshold)."""
    f = feature[node]
    nx = missing[node] if np.isnan(x[f]) else (right[node] if x[f] > threshold[node] else left[node])
    nr = missing[node] if np.isnan(r[f]) else (right[node] if r[f] > threshold[node] else left[node])
    return nx, nr


@njit(cache=True)
def _shapley(X, r, feature, threshold, left, right, missing, parent, value, roots, w, out):  # noqa: ANN001, ANN202, C901
    """shap's tree_shap_indep (cext/tree_shap.h), iterative, tree by tree: each tree walked with x and r together;
    where they part on a feature not yet assigned, it counts as from x on x's side (M of N) and from r on r's side;
    a leaf's value weighted by w goes to the positive (x) and negative (r) lists that parents combine into the
    feature's value. Node scratch (lists, flags) is indexed from the tree's root."""
    size = np.max(roots[1:] - roots[:-1])
    pos = np.zeros(size, np.float32)
    neg = np.zeros(size, np.float32)
    flag = np.zeros(size, np.int8)
    hist = np.zeros(X.shape[1], np.int32)
    stack = np.zeros(w.shape[0] + 1, np.int32)
    for t in range(roots.shape[0] - 1):
        root = roots[t]
        if feature[root] < 0:
            continue
        for i in range(X.shape[0]):
            x = X[i]
            hist[:] = 0
            M = 0
            N = 0
            depth = 0
            nx, nr = _step(x, r, feature, threshold, left, right, missing, root)
            if nx != nr:
                flag[nx - root] = FROM_X
                flag[nr - root] = FROM_R
                nxt = left[root]
                if nr == nxt:
                    N += 1
                    hist[feature[root]] -= 1
                else:
                    M += 1
                    N += 1
                    hist[feature[root]] += 1
            else:
                flag[nx - root] = FROM_NEITHER
                nxt = nx
            stack[depth] = root
            depth += 1
            child = -1
            while True:
                node = nxt
                f = feature[node]
                if f < 0:  # a leaf
                    if N != 0:
                        if M != 0:
                            pos[node - root] = value[node] * w[N, M - 1]
                        if M != N:
                            neg[node - root] = -value[node] * w[N, M]
                    depth -= 1
                    nxt = stack[depth]
                    child = node
                    M, N = _unwind(hist, feature[parent[node]], flag[node - root], M, N)
                    continue
                nx, nr = _step(x, r, feature, threshold, left, right, missing, node)
                if nx != nr:
                    flag[nx - root] = FROM_X
                    flag[nr - root] = FROM_R
                else:
                    flag[nx - root] = FROM_NEITHER
                if child == -1:  # arriving from the parent
                    stack[depth] = node
                    depth += 1
                    nxt = -1
                    if hist[f] > 0:  # the feature is assigned upstream: follow its side
                        nxt = nx
                        hist[f] += 1
                    elif hist[f] < 0:
                        nxt = nr
                        hist[f] -= 1
                    if nxt < 0 and nx == nr:
                        nxt = nx
                    if nxt >= 0:
                        continue
                    nxt = left[node]  # both ways: left first
                    if nr == nxt:
                        N += 1
                        hist[f] -= 1
                    else:
                        M += 1
                        N += 1
                        hist[f] += 1
                    continue
                if nr == nx or hist[f] != 0:  # back from the one path taken: pass its lists up
                    if node == root:
                        break
                    pos[node - root] = pos[child - root]
                    neg[node - root] = neg[child - root]
                    child = node
                    depth -= 1
                    nxt = parent[node]
                    M, N = _unwind(hist, feature[parent[node]], flag[node - root], M, N)
                    continue
                if child == left[node]:  # back from the left: go right
                    stack[depth] = node
                    depth += 1
                    nxt = right[node]
                    if nx == nxt:
                        M += 1
                        N += 1
                        hist[f] += 1
                    else:
                        N += 1
                        hist[f] -= 1
                    child = -1
                    continue
                out[i, f] += pos[nx - root] + neg[nr - root]  # back from the right: the feature's share
                pos[node - root] = pos[nx - root] + pos[nr - root]
                neg[node - root] = neg[nx - root] + neg[nr - root]
                if node == root:
                    break
                depth -= 1
                nxt = stack[depth]
                child = node
                M, N = _unwind(hist, feature[parent[node]], flag[node - root], M, N)


@njit(cache=True, inline="always")
def _unwind(hist, pf, from_flag, M, N):  # noqa: ANN001, ANN202
    """Leaving a node: release its parent's feature assignment, and its count when no longer assigned."""
    if hist[pf] > 0:
        hist[pf] -= 1
    elif hist[pf] < 0:
        hist[pf] += 1
    if hist[pf] == 0:
        if from_flag == FROM_X:
            N -= 1
            M -= 1
        elif from_flag == FROM_R:
            N -= 1
    return M, N
