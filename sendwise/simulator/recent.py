"""Each customer's recent site activity as of any time: the last visit, the last category viewed and the last
purchase before it, looked up for many (customer, time) pairs at once while the run adds sessions.

The run asks for the activity before each send (the recent-activity effect of `World.open_logit_at` and
`World.conversion_probability_at`) while clicks keep adding sessions; events are kept in a large sorted index,
and those added since it was built in a small one, merged into the large one once they are many.
"""

from __future__ import annotations

import numpy as np

from sendwise.simulator.records import ADD_TO_CART, PRODUCT_VIEW, PURCHASE
from sendwise.simulator.truth import Recent

_SHIFT = np.int64(32)
"""A key is (customer << 32) | whole seconds: one sort orders events by customer, then time."""
_MERGE_SHARE = 0.1


class _Index:
    """Events (customer, time, category) sorted by key, answering "the last one before t" per pair."""

    def __init__(self, c: np.ndarray, t: np.ndarray, category: np.ndarray) -> None:
        keys = _keys(c, t)
        order = np.argsort(keys, kind="stable")
        self.keys, self.t, self.category = keys[order], t[order], category[order]

    def last_before(self, c: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(time, category) of each customer's last event before `t` (NaN, -1 where none)."""
        at = np.searchsorted(self.keys, _keys(c, t), side="left") - 1
        found = at >= 0
        found[found] = (self.keys[at[found]] >> _SHIFT) == c[found]
        at = np.where(found, at, 0)
        if not len(self.keys):
            return np.full(len(c), np.nan), np.full(len(c), -1)
        return np.where(found, self.t[at], np.nan), np.where(found, self.category[at], -1)


def _keys(c: np.ndarray, t: np.ndarray) -> np.ndarray:
    return (np.asarray(c, dtype=np.int64) << _SHIFT) | np.floor(t).astype(np.int64)


class RecentLog:
    """The site events of a run: visits (any event), views (product views, carts and purchases with a category)
    and purchases."""

    def __init__(self) -> None:
        empty = (np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64))
        self._events = {kind: [empty] for kind in ("visit", "view", "purchase")}
        self._large: dict[str, _Index] = {kind: _Index(*empty) for kind in self._events}
        self._small: dict[str, _Index] | None = None
        self._fresh = 0

    def add(self, c: np.ndarray, event: np.ndarray, t: np.ndarray, category: np.ndarray) -> None:
        c, event, t, category = (np.broadcast_to(np.asarray(v), np.shape(t)) for v in (c, event, t, category))
        viewed = np.isin(event, (PRODUCT_VIEW, ADD_TO_CART, PURCHASE)) & (category >= 0)
        bought = event == PURCHASE
        self._events["visit"].append((c, t, np.full(len(c), -1)))
        self._events["view"].append((c[viewed], t[viewed], category[viewed]))
        self._events["purchase"].append((c[bought], t[bought], category[bought]))
        self._fresh += len(c)
        self._small = None

    def at(self, c: np.ndarray, t: np.ndarray) -> Recent:
        """Each customer's recent activity strictly before `t` (whole seconds)."""
        self._index()
        found = {kind: self._lookup(kind, c, t) for kind in self._events}
        return Recent(
            t=np.asarray(t, dtype=np.float64),
            visit=found["visit"][0],
            view=found["view"][0],
            view_category=found["view"][1],
            purchase=found["purchase"][0],
            purchase_category=found["purchase"][1],
        )

    def _lookup(self, kind: str, c: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        time, category = self._large[kind].last_before(c, t)
        if self._small is not None:
            late, late_category = self._small[kind].last_before(c, t)
            newer = np.isfinite(late) & ~(late <= time)
            time, category = np.where(newer, late, time), np.where(newer, late_category, category)
        return time, category

    def _index(self) -> None:
        if self._fresh == 0 or self._small is not None:
            return
        size = len(self._large["visit"].keys)
        merge = self._fresh > _MERGE_SHARE * size
        self._small = {}
        for kind, parts in self._events.items():
            if merge:
                self._large[kind] = _joined(parts)
                self._events[kind] = [
                    (self._large[kind].keys >> _SHIFT, self._large[kind].t, self._large[kind].category)
                ]
            else:
                self._small[kind] = _joined(parts[1:])
        if merge:
            self._small, self._fresh = None, 0


def _joined(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> _Index:
    return _Index(*(np.concatenate([part[i] for part in parts]) for i in range(3)))
