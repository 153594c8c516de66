"""Policies that sendwise's decisions are measured against, and nothing decides with.

`training.evaluate` compares the per-hour cap's assignment (`serving.assign.assign_hours`) with what a sending
system does when it throttles a queue.
"""

from __future__ import annotations

import numpy as np


def greedy_hours(scores: np.ndarray, allowed: np.ndarray, capacity: np.ndarray | int) -> np.ndarray:
    """First come, first served by score: the most likely openers take their best hour with room first.

    The baseline an assignment is measured against; what a sending system does when it throttles a queue.
    """
    n, width = scores.shape
    room = np.broadcast_to(np.asarray(capacity, dtype=np.int64), (width,)).copy()
    masked = np.where(allowed, scores, -np.inf)
    hours = np.full(n, -1, dtype=np.int64)
    for i in np.argsort(-masked.max(axis=1), kind="stable"):
        options = np.where(room > 0, masked[i], -np.inf)
        h = int(options.argmax())
        if np.isfinite(options[h]):
            hours[i] = h
            room[h] -= 1
    return hours
