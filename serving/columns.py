"""One feature view's rows, a customer per row, in the two forms the serving side reads them in.

`FeatureSnapshot.from_columns` builds its arrays from any view's rows through the few questions `ViewColumns`
answers (a column's numbers, its strings as codes, its lists flattened), so one definition of what the arrays
hold serves both forms:

- `ArrowColumns`: an Arrow table, as the snapshot reads the feature tables and as a batch's Redis replies are
  decoded column by column (thousands of customers: each answer is one vectorised Arrow call);
- `ValueColumns`: Python values, as a few customers' Redis replies are parsed one by one (a single recipient,
  a few merged requests). Each Arrow call has a fixed cost of some microseconds, and a snapshot of one
  customer made through Arrow took a few dozen of them, more than the rest of a decision's read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class ViewColumns(Protocol):
    """One view's rows (one per customer) as `FeatureSnapshot.from_columns` and the latest values read them."""

    names: frozenset[str]  # the columns it has

    def __len__(self) -> int: ...

    def customer_ids(self) -> pa.Array | list[str]:
        """Each row's customer."""
        ...

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """Each id's row (int64), -1 where the view has none."""
        ...

    def numbers(self, name: str, dtype: type[np.floating[Any]]) -> np.ndarray:
        """A numeric or boolean column as floats, NaN where missing."""
        ...

    def is_numeric(self, name: str) -> bool:
        """Whether the column holds numbers (or booleans) rather than labels."""
        ...

    def coded(self, name: str) -> tuple[np.ndarray, list[str]]:
        """A column's values as strings, coded: (int32 codes, -1 where missing; the distinct strings)."""
        ...

    def texts(self, name: str) -> list[str | None]:
        """A string column's values, None where missing."""
        ...

    def float_lists(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A list column: each row's length (-1 where missing) and every row's values, one after another (float32)."""
        ...

    def coded_lists(self, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """A list-of-strings column: each row's length (-1 where missing), every row's values one after another
        as codes (a missing value: code 0), and the distinct strings."""
        ...


class ArrowColumns:
    """A view's rows as an Arrow table: each answer is one Arrow call over the whole column."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.names = frozenset(table.column_names)

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def customer_ids(self) -> pa.Array:
        return pc.cast(self.table["customer_id"], pa.string()).combine_chunks()

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        found = pc.index_in(pa.array(ids, type=pa.string()), value_set=self.customer_ids())
        return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)

    def numbers(self, name: str, dtype: type[np.floating[Any]]) -> np.ndarray:
        kind = pa.float32() if dtype == np.float32 else pa.float64()
        return np.asarray(pc.cast(self.table[name], kind).to_numpy(zero_copy_only=False), dtype=dtype)

    def is_numeric(self, name: str) -> bool:
        kind = self.table.schema.field(name).type
        return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind))

    def coded(self, name: str) -> tuple[np.ndarray, list[str]]:
        """Coded in Arrow, without a Python string per row (a million customers' time zones)."""
        encoded = pc.dictionary_encode(pc.cast(self.table[name], pa.string()).combine_chunks())
        codes = pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int32)
        return codes, [str(v) for v in encoded.dictionary.to_pylist()]

    def texts(self, name: str) -> list[str | None]:
        return list(self.table[name].to_pylist())

    def float_lists(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        lists = self.table[name].combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(lists), -1).to_numpy().astype(np.int64)
        values = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
        return lengths, np.asarray(values, dtype=np.float32)

    def coded_lists(self, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        lists = self.table[name].combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(lists), -1).to_numpy().astype(np.int64)
        encoded = pc.dictionary_encode(pc.list_flatten(lists))
        codes = pc.fill_null(encoded.indices, 0).to_numpy().astype(np.int64)
        return lengths, codes, [str(v) for v in encoded.dictionary.to_pylist()]


class ValueColumns:
    """A few customers' rows as Python values (None where missing): each answer is a short Python loop."""

    def __init__(self, customer_ids: list[str], values: Mapping[str, list[Any]], types: Mapping[str, pa.DataType]):
        self.ids = customer_ids
        self.values = values
        self.types = types
        self.names = frozenset(["customer_id", *values])

    def __len__(self) -> int:
        return len(self.ids)

    def customer_ids(self) -> list[str]:
        return self.ids

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        row = {c: i for i, c in enumerate(self.ids)}
        return np.array([row.get(c, -1) for c in ids], dtype=np.int64)

    def numbers(self, name: str, dtype: type[np.floating[Any]]) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in self.values[name]], dtype=dtype)

    def is_numeric(self, name: str) -> bool:
        kind = self.types[name]
        return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind))

    def coded(self, name: str) -> tuple[np.ndarray, list[str]]:
        texts = [None if v is None else str(v) for v in self.values[name]]
        distinct = list(dict.fromkeys(t for t in texts if t is not None))
        code = {t: i for i, t in enumerate(distinct)}
        return np.array([-1 if t is None else code[t] for t in texts], dtype=np.int32), distinct

    def texts(self, name: str) -> list[str | None]:
        return list(self.values[name])

    def float_lists(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        lists = self.values[name]
        flat = [np.nan if x is None else x for v in lists if v is not None for x in v]
        return _lengths(lists), np.array(flat, dtype=np.float32)

    def coded_lists(self, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        lists = self.values[name]
        flat = [x for v in lists if v is not None for x in v]
        distinct = list(dict.fromkeys(str(x) for x in flat if x is not None))
        code = {t: i for i, t in enumerate(distinct)}
        codes = np.array([0 if x is None else code[str(x)] for x in flat], dtype=np.int64)
        return _lengths(lists), codes, distinct


def _lengths(lists: list[Any]) -> np.ndarray:
    return np.array([-1 if v is None else len(v) for v in lists], dtype=np.int64)


def customer_rows(views: Sequence[ViewColumns]) -> tuple[list[str] | np.ndarray, list[np.ndarray]]:
    """The distinct customers of `views` in the order first seen, and each view's rows' positions among them:
    with a Python dictionary where every view holds Python values, with Arrow otherwise."""
    keys = [v.customer_ids() for v in views]
    if all(isinstance(k, list) for k in keys):
        distinct = list(dict.fromkeys(c for k in keys for c in k))
        position = {c: i for i, c in enumerate(distinct)}
        return distinct, [np.array([position[c] for c in k], dtype=np.int64) for k in keys]
    arrays = [k if isinstance(k, pa.Array) else pa.array(k, type=pa.string()) for k in keys]
    unique = pc.unique(pa.chunked_array(arrays, type=pa.string())).drop_null() if arrays else pa.array([], pa.string())
    at = [pc.index_in(k, value_set=unique).to_numpy(zero_copy_only=False) for k in arrays]
    return unique.to_numpy(zero_copy_only=False), at
