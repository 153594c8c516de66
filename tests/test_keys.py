"""Ids hashed, deduplicated and looked up in bulk (sendwise.keys) give pandas' answers, whichever way the text is
held, and a hash collision never makes two different ids one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from sendwise import keys

IDS = ["a", "b", "a", None, "c", None, "b", "", "", "é-1", "é-1"]
REPEATED = [False, False, True, False, False, True, True, False, True, False, True]


def held(values: list[str | None]) -> list[pd.Series | pa.ChunkedArray]:
    """The same ids as Python objects, Arrow strings in pandas, and Arrow columns of both string types."""
    return [
        pd.Series(values, dtype=object),
        pd.Series(values, dtype="string[pyarrow]"),
        pa.chunked_array([pa.array(values[:4], pa.large_string()), pa.array(values[4:], pa.large_string())]),
        pa.chunked_array([pa.array(values, pa.string())]),
    ]


@pytest.mark.parametrize("values", held(IDS))
def test_repeated_ids_are_those_after_their_first(values: pd.Series | pa.ChunkedArray) -> None:
    assert keys.repeated(values).tolist() == REPEATED


def test_the_same_id_hashes_the_same_however_it_is_held() -> None:
    hashes = [keys.id_hashes(values) for values in held(IDS)]
    for other in hashes[1:]:
        assert other.tolist() == hashes[0].tolist()
    assert hashes[0][0] == hashes[0][2] and hashes[0][0] != hashes[0][1]
    assert hashes[0][3] == hashes[0][7]  # a missing id hashes as the empty one
    # FNV-1a 64 of "a" (0xaf63dc4c8601ec8c), as published
    assert int(hashes[0][0]) == 0xAF63DC4C8601EC8C


def test_ids_whose_hashes_collide_are_still_told_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "id_hashes", lambda values: np.zeros(len(values), dtype=np.uint64))
    for values in held(IDS):
        assert keys.repeated(values).tolist() == REPEATED


@pytest.mark.parametrize("values", held(IDS))
def test_is_in_answers_as_series_isin(values: pd.Series | pa.ChunkedArray) -> None:
    expected = pd.Series(IDS, dtype=object).isin(["a", "é-1", "z"]).tolist()
    found = keys.value_set(pd.Index(["a", "é-1", "z"]))
    assert keys.is_in(values, found).tolist() == expected
    with_missing = keys.value_set([pa.chunked_array([pa.array(["b", None], pa.large_string())])])
    assert keys.is_in(values, with_missing).tolist() == [v in ("b", None) for v in IDS]
    assert keys.is_in(values, keys.value_set([])).tolist() == [False] * len(IDS)
