"""FNV-1a over the UTF-8 bytes of Arrow text, compiled (numba): the kernel of `sendwise.keys.id_hashes`, in a
module of its own so that a process that never hashes ids (a service replica) does not import the compiler."""

from __future__ import annotations

import numba
import numpy as np

_OFFSET_BASIS = np.uint64(14695981039346656037)
_PRIME = np.uint64(1099511628211)


@numba.njit(cache=True, nogil=True)
def fnv1a(offsets: np.ndarray, data: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """Each row's hash into `out`: row i is `data[offsets[i]:offsets[i + 1]]`."""
    for row in range(out.shape[0]):
        hashed = _OFFSET_BASIS
        for at in range(offsets[row], offsets[row + 1]):
            hashed ^= np.uint64(data[at])
            hashed *= _PRIME
        out[row] = hashed
