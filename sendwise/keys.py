"""Event ids and customer ids compared in bulk without making them Python objects: a 64-bit hash of each id's
UTF-8 bytes (compiled, over Arrow's buffers), which rows repeat an earlier id, and which ids are in a set.

The hash only narrows the work: rows are called repeated only after their ids are compared exactly, so a
collision costs time, never a wrong answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def text_array(values: pd.Series | pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    """The values as an Arrow text column (without a copy where pandas holds them in Arrow already)."""
    if isinstance(values, pd.Series):
        array = values.array
        arrow = getattr(array, "_pa_array", None)
        values = arrow if isinstance(arrow, pa.ChunkedArray) else pa.array(values.to_numpy(dtype=object), pa.string())
    if isinstance(values, pa.Array):
        values = pa.chunked_array([values])
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = values.cast(pa.string())
    return values


def id_hashes(values: pd.Series | pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A 64-bit hash (FNV-1a) of each id's UTF-8 bytes: the same id always the same hash, whichever way its text
    is held (a missing id hashes as the empty one)."""
    from sendwise.fnv import fnv1a  # numba: not imported where ids are never hashed (a service replica)

    chunks = text_array(values).chunks
    out = np.empty(sum(len(chunk) for chunk in chunks), dtype=np.uint64)
    start = 0
    for chunk in chunks:
        if not len(chunk):
            continue
        kind = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
        _, offsets, data = chunk.buffers()
        positions = np.frombuffer(offsets, dtype=kind)[chunk.offset : chunk.offset + len(chunk) + 1]
        payload = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
        fnv1a(positions, payload, out[start : start + len(chunk)])
        start += len(chunk)
    return out


def buckets(values: pd.Series | pa.ChunkedArray | pa.Array, count: int) -> np.ndarray:
    """The bucket (0 .. `count` − 1) of each id, by its hash (`id_hashes`): the same id always in the same bucket,
    in every run and whichever way its text is held."""
    if count == 1:
        return np.zeros(len(values), dtype=np.int64)
    return (id_hashes(values) % np.uint64(count)).astype(np.int64)


def repeated(keys: pd.Series | pa.ChunkedArray) -> np.ndarray:
    """Which keys repeat an earlier one (missing keys repeat each other): the rows whose hashes repeat are
    compared exactly, through their codes, so that Arrow strings are not made Python objects."""
    hashes = id_hashes(keys)
    candidates = np.flatnonzero(pd.Series(hashes).duplicated(keep=False).to_numpy())
    found = np.zeros(len(keys), dtype=bool)
    if len(candidates):
        alike = keys.iloc[candidates] if isinstance(keys, pd.Series) else pd.Series(keys.take(candidates).to_pylist())
        codes, _ = pd.factorize(alike, use_na_sentinel=False)
        found[candidates] = pd.Series(codes).duplicated(keep="first").to_numpy()
    return found


def value_set(values: pd.Series | pd.Index | pa.ChunkedArray | pa.Array | list[pa.ChunkedArray]) -> pa.Array:
    """Ids as the set ``is_in`` looks them up in (built once, looked up in many times); a list of columns is
    their ids together."""
    if isinstance(values, pd.Index):
        values = values.to_series()
    parts = values if isinstance(values, list) else [values]
    chunks = [chunk.cast(pa.string()) for part in parts for chunk in text_array(part).chunks]
    return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())


def is_in(values: pd.Series | pa.ChunkedArray, found: pa.Array) -> np.ndarray:
    """A boolean per value: whether it is one of ``found`` (``value_set``); what ``Series.isin`` answers for
    text, without making the set Python strings on every call."""
    if not len(values):
        return np.zeros(0, dtype=bool)
    return pc.is_in(text_array(values), value_set=found).to_numpy(zero_copy_only=False).astype(bool)
