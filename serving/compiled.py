"""A booster's trees as flat arrays walked by compiled code (numba): the same predictions, without LightGBM's
fixed cost per call (about 35 µs, most of a single recipient's scoring) and on both cores for a campaign.

`CompiledTrees.of(booster)` reads the model's text (split features, thresholds, decision types, children,
leaf values, categorical bitsets) and walks it as LightGBM's `Tree::Decision` does: NaN and zero as missing
values, the default direction, categories as bitsets. It is checked against `booster.predict` on rows the
caller gives before it is used, and anything it does not read (linear trees, several classes, another
objective) leaves the booster to LightGBM.
"""

from __future__ import annotations

import math
import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import lightgbm as lgb
import numba
import numpy as np

TOLERANCE = 1e-12
"""Largest difference from LightGBM's own prediction (raw score or probability) on the check rows."""
SPLIT_ROWS = 4_000
"""From this many rows a predict is split between two threads (the walk releases the interpreter)."""

_CATEGORICAL = 1  # decision_type bits: 1 categorical, 2 default left, (>> 2) & 3 the missing type


@numba.njit(cache=True, nogil=True)
def _walk(
    rows: np.ndarray,
    roots: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    decision: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    leaf_value: np.ndarray,
    cat_bounds: np.ndarray,
    cat_words: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    for i in range(rows.shape[0]):
        total = 0.0
        for t in range(roots.shape[0]):
            node = roots[t]
            while node >= 0:
                value = rows[i, feature[node]]
                kind = decision[node]
                go_left = False
                if kind & 1:  # categorical: NaN and negatives go right, else the bitset decides
                    if not math.isnan(value):
                        category = int(value)  # toward zero, as C++'s static_cast<int>
                        if category >= 0:
                            k = int(threshold[node])
                            word = category // 32
                            if word < cat_bounds[k + 1] - cat_bounds[k]:
                                go_left = ((cat_words[cat_bounds[k] + word] >> (category % 32)) & 1) == 1
                else:  # missing type 1: zero (|x| <= 1e-35, LightGBM's kZeroThreshold), 2: NaN
                    missing = (kind >> 2) & 3
                    if math.isnan(value) and missing != 2:
                        value = 0.0
                    if (missing == 1 and -1e-35 <= value <= 1e-35) or (missing == 2 and math.isnan(value)):
                        go_left = (kind & 2) != 0
                    else:
                        go_left = value <= threshold[node]
                node = left[node] if go_left else right[node]
            total += leaf_value[-node - 1]
        out[i] = total


def _numbers(text: str, dtype: type) -> np.ndarray:
    return np.array(text.split(), dtype=dtype)


@dataclass(frozen=True)
class CompiledTrees:
    """Every tree of one booster as flat arrays: nodes of all trees together, leaves as -(leaf + 1)."""

    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    decision: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf_value: np.ndarray
    cat_bounds: np.ndarray
    cat_words: np.ndarray
    features: int
    sigmoid: float

    @classmethod
    def parse(cls, model: str) -> CompiledTrees | None:
        """From `booster.model_to_string()`; None for what the walk does not read."""
        header, _, body = model.partition("\nTree=")
        fields = dict(line.split("=", 1) for line in header.splitlines() if "=" in line)
        objective = fields.get("objective", "").split()
        if fields.get("num_class") != "1" or not objective or objective[0] != "binary":
            return None
        sigmoid = float(next((p.split(":")[1] for p in objective[1:] if p.startswith("sigmoid:")), "1"))
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("feature", "threshold", "decision", "left", "right")}
        roots: list[int] = []
        leaves: list[np.ndarray] = []
        bounds: list[int] = [0]  # where each categorical split's bitset starts in `words`, and the end
        words: list[int] = []
        nodes = leaf_base = 0
        for text in ("Tree=" + body.split("end of trees")[0]).split("\nTree="):
            tree = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
            if tree.get("is_linear", "0") != "0":
                return None
            leaf_value = _numbers(tree["leaf_value"], np.float64)
            if int(tree["num_leaves"]) == 1:
                roots.append(-(leaf_base + 1))
            else:
                decision = _numbers(tree["decision_type"], np.int8)
                threshold = _numbers(tree["threshold"], np.float64)
                categorical = (decision & _CATEGORICAL) != 0
                if categorical.any():
                    tree_bounds = _numbers(tree["cat_boundaries"], np.int64)
                    threshold[categorical] += len(bounds) - 1  # the tree's k-th bitset, numbered across trees
                    bounds.extend((tree_bounds[1:] + len(words)).tolist())
                    words.extend(_numbers(tree["cat_threshold"], np.uint32).tolist())
                roots.append(nodes)
                for side in ("left", "right"):
                    child = _numbers(tree[f"{side}_child"], np.int64)
                    parts[side].append(np.where(child >= 0, child + nodes, child - leaf_base))
                parts["feature"].append(_numbers(tree["split_feature"], np.int64))
                parts["threshold"].append(threshold)
                parts["decision"].append(decision)
                nodes += len(decision)
            leaves.append(leaf_value)
            leaf_base += len(leaf_value)

        def joined(name: str, dtype: type) -> np.ndarray:
            return np.concatenate(parts[name]).astype(dtype) if parts[name] else np.zeros(0, dtype)

        return cls(
            roots=np.array(roots, dtype=np.int64),
            feature=joined("feature", np.int64),
            threshold=joined("threshold", np.float64),
            decision=joined("decision", np.int8),
            left=joined("left", np.int64),
            right=joined("right", np.int64),
            leaf_value=np.concatenate(leaves) if leaves else np.zeros(0),
            cat_bounds=np.array(bounds, dtype=np.int64),
            cat_words=np.array(words, dtype=np.uint32),
            features=int(fields["max_feature_idx"]) + 1,
            sigmoid=sigmoid,
        )

    def raw(self, rows: np.ndarray, threads: int = 1) -> np.ndarray:
        """The summed leaf values of every row of a float64 matrix with the booster's columns."""
        rows = np.ascontiguousarray(rows, dtype=np.float64)
        out = np.empty(len(rows))
        arrays = (self.roots, self.feature, self.threshold, self.decision, self.left, self.right)
        tables = (self.leaf_value, self.cat_bounds, self.cat_words)
        if threads < 2 or len(rows) < SPLIT_ROWS:
            _walk(rows, *arrays, *tables, out)
            return out
        cut = len(rows) // 2
        halves = [(rows[:cut], out[:cut]), (rows[cut:], out[cut:])]
        list(_executor().map(lambda half: _walk(half[0], *arrays, *tables, half[1]), halves))
        return out

    def predict(self, rows: np.ndarray, *, raw_score: bool = False, threads: int = 1) -> np.ndarray:
        raw = self.raw(rows, threads)
        return raw if raw_score else 1.0 / (1.0 + np.exp(-self.sigmoid * raw))


_pool: ThreadPoolExecutor | None = None
_pool_pid: int | None = None


def _executor() -> ThreadPoolExecutor:
    """Two threads for the halves of a large predict (made again in a forked process: threads do not fork)."""
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        _pool, _pool_pid = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sendwise-trees"), os.getpid()
    return _pool


def warm_up() -> None:
    """Compile the walk now (a second or so the first time, then numba's cache) rather than in the first
    request that predicts."""
    empty_i, empty_f = np.zeros(0, dtype=np.int64), np.zeros(0)
    rows, out = np.zeros((1, 1)), np.empty(1)
    _walk(  # one tree of one leaf
        rows,
        np.array([-1]),
        empty_i,
        empty_f,
        np.zeros(0, np.int8),
        empty_i,
        empty_i,
        np.zeros(1),
        np.zeros(1, np.int64),
        np.zeros(0, np.uint32),
        out,
    )


_compiled: weakref.WeakKeyDictionary[lgb.Booster, CompiledTrees | None] = weakref.WeakKeyDictionary()


def compiled(booster: lgb.Booster, check_rows: np.ndarray) -> CompiledTrees | None:
    """The booster's compiled trees, made and checked against LightGBM on `check_rows` the first time it is
    asked for; None (LightGBM predicts) when the model has something the walk does not read or they differ."""
    if booster in _compiled:
        return _compiled[booster]
    trees = CompiledTrees.parse(booster.model_to_string())
    if trees is not None:
        rows = np.ascontiguousarray(check_rows[:200], dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != trees.features or not len(rows):
            return None  # not a matrix of the booster's columns: ask again with one
        for raw_score in (True, False):
            expected = np.asarray(booster.predict(rows, raw_score=raw_score, num_threads=1))
            if not np.allclose(trees.predict(rows, raw_score=raw_score), expected, rtol=0.0, atol=TOLERANCE):
                trees = None
                break
    _compiled[booster] = trees
    return trees


__all__ = ["CompiledTrees", "compiled", "warm_up"]
