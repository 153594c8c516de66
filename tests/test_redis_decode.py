"""Reading Feast's Redis hashes column by column (`serving.redis_features`): every field of a batch's keys in one
round trip, and the bulk decoders (numpy over a whole column) giving exactly what parsing each `ValueProto` gives,
on values of every shape Feast writes, and on the ones they must leave to the parser."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest
import redis
from feast.protos.feast.types.Value_pb2 import FloatList, StringList, Value
from feast.type_map import feast_value_type_to_pa
from feast.value_type import ValueType

from serving.redis_features import RawColumn, _column, _decoded, read_columns

pytestmark = [pytest.mark.integration]
ROWS = 100


def _column_of(values: list[Value | None]) -> RawColumn:
    raw = [b"" if v is None else v.SerializeToString() for v in values]
    return RawColumn(np.array([len(b) for b in raw], dtype=np.int64), b"".join(raw))


def _both(values: list[Value | None], kind: ValueType) -> tuple[pa.Array, pa.Array]:
    """(the column decoded as a batch decodes it, the same values parsed one by one)."""
    column = _column_of(values)
    rows = np.arange(len(values))
    expected = pa.array(_decoded(column.values(rows), kind), type=feast_value_type_to_pa(kind))
    return _column(column, rows, kind, feast_value_type_to_pa(kind)), expected


def _floats(n: int, rng: np.random.Generator) -> list[float]:
    return rng.standard_normal(n).astype(np.float32).tolist()


@pytest.mark.parametrize("with_odd_one", [False, True])
def test_float_columns_decode_as_parsed(with_odd_one: bool) -> None:
    rng = np.random.default_rng(0)
    values: list[Value | None] = [Value(float_val=f) for f in _floats(ROWS, rng)]
    values[3] = values[50] = None  # no such field in the hash
    values[7] = Value()  # Feast's null: no bytes at all
    values[8] = Value(float_val=0.0)
    if with_odd_one:
        values[20] = Value(double_val=2.5)  # not a float: parsed, and read as missing
    ours, parsed = _both(values, ValueType.FLOAT)
    assert ours.equals(parsed)
    assert ours.null_count == 3 + with_odd_one and ours[8].as_py() == 0.0
    assert ours[0].as_py() == pytest.approx(values[0].float_val)  # type: ignore[union-attr]


@pytest.mark.parametrize("longest", [24, 31, 40])
def test_float_list_columns_decode_as_parsed(longest: int) -> None:
    rng = np.random.default_rng(1)
    values: list[Value | None] = [
        Value(float_list_val=FloatList(val=_floats(int(k), rng))) for k in rng.integers(0, longest + 1, ROWS)
    ]
    values[0] = Value(float_list_val=FloatList(val=_floats(longest, rng)))
    values[1] = Value(float_list_val=FloatList())  # an empty list: a list, not a null
    values[2] = None
    ours, parsed = _both(values, ValueType.FLOAT_LIST)
    assert ours.equals(parsed)
    assert ours[1].as_py() == [] and ours[2].as_py() is None and len(ours[0].as_py()) == longest


@pytest.mark.parametrize("longest", [20, 127, 300])
def test_string_columns_decode_as_parsed(longest: int) -> None:
    rng = np.random.default_rng(2)
    words = ["Europe/Berlin", "America/New_York", "", "outdoor|books", "ü-Zürich", "x" * longest]
    values: list[Value | None] = [Value(string_val=words[k]) for k in rng.integers(0, len(words), ROWS)]
    values[0] = Value(string_val="x" * longest)
    values[4] = None
    values[5] = Value()
    ours, parsed = _both(values, ValueType.STRING)
    assert ours.equals(parsed)
    assert ours[0].as_py() == "x" * longest and ours[4].as_py() is None and ours[5].as_py() is None


def test_other_kinds_are_parsed_each_distinct_value_once() -> None:
    values: list[Value | None] = [Value(string_list_val=StringList(val=["books", "garden"]))] * ROWS
    values[9] = None
    column = _column_of(values)
    ours = _column(column, np.arange(ROWS), ValueType.STRING_LIST, feast_value_type_to_pa(ValueType.STRING_LIST))
    assert ours.to_pylist() == [None if v is None else ["books", "garden"] for v in values]
    decoded = _decoded(column.values(np.arange(ROWS)), ValueType.STRING_LIST)
    assert decoded[0] is decoded[1]  # one list for one distinct value


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    found = redis.Redis.from_url(f"{redis_url}/9")
    found.flushdb()
    yield found
    found.flushdb()


@pytest.mark.parametrize("chunk", [1_000, 64])  # one round trip, or eight (the last one short)
def test_read_columns_reads_every_field_of_every_key_in_order(
    client: redis.Redis, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("serving.redis_features.READ_CHUNK", chunk)
    keys = [f"k{i}".encode() for i in range(500)]
    with client.pipeline(transaction=False) as pipe:
        for i, key in enumerate(keys):
            if i % 7:  # every 7th key is not there at all
                pipe.hset(key, mapping={b"a": b"A" * (i % 5), b"b": str(i).encode()})
        pipe.execute()
    columns = read_columns(client, [*keys, b"nobody"], [b"a", b"b", b"c"])
    assert [c.lengths.tolist() for c in columns] == [
        [0 if i % 7 == 0 else i % 5 for i in range(500)] + [0],
        [0 if i % 7 == 0 else len(str(i)) for i in range(500)] + [0],
        [0] * 501,
    ]
    assert columns[1].values(np.array([1, 7, 499])) == [b"1", None, b"499"]
    assert columns[0].data == b"".join(b"A" * (i % 5) for i in range(500) if i % 7)
    assert [c.data for c in read_columns(client, [], [b"a"])] == [b""]


@pytest.mark.parametrize("chunk", [1_000, 1])  # the wrong reply in the only chunk, or in the second
def test_a_wrong_reply_fails_the_read_and_the_client_reads_on(
    client: redis.Redis, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("serving.redis_features.READ_CHUNK", chunk)
    client.set(b"plain", b"not a hash")
    client.hset(b"hash", b"a", b"1")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        read_columns(client, [b"hash", b"plain", b"hash"], [b"a"])
    assert read_columns(client, [b"hash"], [b"a"])[0].data == b"1"  # no reply of the failed read left unread
