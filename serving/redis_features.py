"""Online features read per batch from Feast's Redis online store: what replicas sharing one Redis decide from.

With `SENDWISE_ONLINE_STORE=redis` the engine keeps no snapshot of every customer. Each batch reads its own
customers' rows from the Redis that Feast materialized into, in one pipelined round trip, and turns them into the
arrays the SQLite mode's snapshot holds (`FeatureSnapshot.from_columns` on just these customers, the same
constructor the snapshot's tables go through): the models see exactly what they see there. The batch's offers
are scored with the batch (`OfferCatalog.conversion`, its eligible offers only), where the SQLite mode scores
every customer's offers once per snapshot.

Feast stays the definition. The views, their features and their types come from the registry's
`open_propensity_v1` feature service (as `serving.snapshot.view_sources`); keys and hash fields are made by
Feast's own helpers as its `RedisOnlineStore` makes them (`serialize_entity_key` + project, `_mmh3` of
`view:feature`, `_ts:view`), and values are Feast's `ValueProto`s. It reads them itself rather than through
`RedisOnlineStore.online_read` for one reason: every view of a customer lives in one Redis hash, so one HMGET per
customer fetches all of them (Feast sends one per customer and view) and only the features decisions read are
fetched and decoded. The email-state view (whether email to a customer has stopped, which `POST /v1/events`
pushes) is one of them: a decision's stops come with its features, not from a read of their own.

The HMGETs are packed into one write and their replies read back on one connection; the replies are laid out as
one column per field (its values' lengths and bytes) and decoded a column at a time with numpy, reading the
`ValueProto` layouts Feast writes (a float, a short float list, a short string) straight from the bytes and
parsing only values laid out otherwise (each distinct one once): decoding makes no Python object per value. A few
customers (a single recipient) are decoded value by value, where numpy's fixed cost per call would dominate.

A Redis that cannot be reached degrades the batch (population priors for everyone, `status: degraded` with a
reason naming Redis); the next batch tries again.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import operator
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import redis
from feast import FeatureStore, FeatureView, Field
from feast.errors import FeatureViewNotFoundException
from feast.infra.key_encoding_utils import serialize_entity_key, serialize_entity_key_prefix
from feast.infra.online_stores.helpers import _mmh3, compute_versioned_name
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import FloatList, Value
from feast.type_map import feast_value_type_to_pa, feast_value_type_to_python_type
from feast.value_type import ValueType

from features.latest import ACTIVITY_COLUMNS, ACTIVITY_TEXTS, ACTIVITY_TIMES, EMAIL_CONSENTS, EMAIL_FLAGS
from features.store import redis_client
from sendwise.settings import Settings
from serving.columns import ArrowColumns, ValueColumns, ViewColumns
from serving.offer_scores import FIELD as OFFER_SCORES
from serving.offer_scores import KeptScores, customer_digest
from serving.online import BatchFeatures, OfferTable, OnlineState, RhythmPriors, batch_features
from serving.realtime import ACTIVITY_VIEW, EMAIL_STATE_VIEW, EmailState
from serving.schemas import Recipient
from serving.snapshot import FEW_IDS, SERVICE, USED, FeatureSnapshot

logger = logging.getLogger(__name__)

REGISTRY_CHECK_SECONDS = 10.0
"""How often a batch looks whether the Feast registry changed (a new pipeline run may add attributes)."""
READ_CHUNK = 1_000
"""Customers whose hashes are read in one round trip: their replies are turned into columns before the next
chunk is read."""

_STRING_VALUE = struct.Struct("<II")  # a key's value: its type and its length
_SCALARS: dict[ValueType, str] = {
    ValueType.FLOAT: "float_val",
    ValueType.DOUBLE: "double_val",
    ValueType.STRING: "string_val",
    ValueType.INT64: "int64_val",
    ValueType.INT32: "int32_val",
    ValueType.BOOL: "bool_val",
}
_LISTS: dict[ValueType, str] = {
    ValueType.FLOAT_LIST: "float_list_val",
    ValueType.STRING_LIST: "string_list_val",
    ValueType.DOUBLE_LIST: "double_list_val",
}


@dataclass(frozen=True)
class ViewFields:
    """One view of the feature service as it lies in Redis: its hash fields and the features' Arrow types."""

    view: str
    timestamp_field: bytes  # `_ts:VIEW`: set when the customer has a row of this view
    features: tuple[str, ...]
    fields: tuple[bytes, ...]  # one per feature
    kinds: tuple[ValueType, ...]
    types: tuple[pa.DataType, ...]


def redis_layout(store: FeatureStore) -> list[ViewFields]:
    """The views of the service the open and send-time models read, with the features decisions read (and every
    `attr_*`), as Feast's Redis online store keys them; then the email-state view (`serving.realtime`), where the
    registry has it, with its stop flags: one HMGET per customer reads a decision's features and its stops."""
    versioned = store.config.registry.enable_online_feature_view_versioning
    found = []
    for projection in store.get_feature_service(SERVICE).feature_view_projections:
        used = [f for f in projection.features if f.name in USED or f.name.startswith("attr_")]
        found.append(_view_fields(store.get_feature_view(projection.name), used, versioned))
    found = [v for v in found if v.view != ACTIVITY_VIEW]
    try:
        state = store.get_feature_view(EMAIL_STATE_VIEW)
        activity = store.get_feature_view(ACTIVITY_VIEW)
    except FeatureViewNotFoundException:  # a home from before the latest-value views: no stop was ever pushed
        return found
    kept = (*EMAIL_FLAGS, *EMAIL_CONSENTS)
    found.append(_view_fields(state, [f for f in state.features if f.name in kept], versioned))
    found.append(_view_fields(activity, [f for f in activity.features if f.name in ACTIVITY_COLUMNS], versioned))
    return found


def _view_fields(view: FeatureView, used: Sequence[Field], versioned: bool) -> ViewFields:
    name = compute_versioned_name(view, versioned)
    kinds = tuple(f.dtype.to_value_type() for f in used)
    return ViewFields(
        view=view.name,
        timestamp_field=f"_ts:{name}".encode(),
        features=tuple(f.name for f in used),
        fields=tuple(_mmh3(f"{name}:{f.name}") for f in used),
        kinds=kinds,
        types=tuple(feast_value_type_to_pa(k) for k in kinds),
    )


def stopped_customers(view: ViewColumns | None) -> set[str]:
    """The customers of an email-state view read from Redis whose email has stopped (any flag above 0)."""
    if view is None or len(view) == 0:
        return set()
    keys = view.customer_ids()
    ids = keys.to_pylist() if isinstance(keys, pa.Array) else keys
    return {c for c, stopped in zip(ids, pushed_email_state(view, ids).stopped, strict=True) if stopped}


def pushed_email_state(view: ViewColumns | None, ids: list[str]) -> EmailState:
    """The stops and pushed consents of each of `ids` (repeats allowed) from the email-state view's rows read
    from Redis, as `RealtimeFeatures.email_state` reads them through Feast."""
    found = EmailState.none(len(ids))
    if view is None or len(view) == 0:
        return found
    rows = view.rows_of(ids)
    has = rows >= 0
    flags = [np.nan_to_num(view.numbers(f, np.float64), nan=0.0) > 0 for f in EMAIL_FLAGS if f in view.names]
    if flags:
        found.stopped[:] = has & np.logical_or.reduce(flags)[rows]
    for name, values in zip(EMAIL_CONSENTS, (found.consent_email, found.consent_profiling), strict=True):
        if name in view.names:
            values[:] = np.where(has, view.numbers(name, np.float64)[rows], np.nan)
    return found


def latest_values(view: ViewColumns | None, ids: list[str]) -> dict[str, np.ndarray]:
    """The latest activity of each of `ids` (repeats allowed) from the activity view's rows read from Redis, as
    `RealtimeFeatures.latest` reads them through Feast."""
    found = {name: np.full(len(ids), np.nan) for name in ACTIVITY_TIMES}
    found.update({name: np.full(len(ids), None, dtype=object) for name in ACTIVITY_TEXTS})
    if view is None or len(view) == 0:
        return found
    rows = view.rows_of(ids)
    has = rows >= 0
    for name in ACTIVITY_TIMES:
        if name in view.names:
            found[name] = np.where(has, view.numbers(name, np.float64)[rows], np.nan)
    for name in ACTIVITY_TEXTS:
        if name in view.names:
            texts = np.array([*view.texts(name), None], dtype=object)  # the last: customers without a row
            found[name] = texts[rows]
    return found


def entity_keys(customer_ids: Sequence[str], project: str, version: int) -> list[bytes]:
    """Each customer's Redis key, as Feast's `RedisOnlineStore` makes it (`serialize_entity_key` + project).

    Feast's helper builds a proto per key (about 10 µs, a tenth of a 10,000-recipient read): the keys are made
    as it lays them out, its key prefix and then the value's type, length and bytes, and the first is checked
    against the helper itself, so that a change in Feast's encoding fails loudly instead of finding no one."""
    if not customer_ids:
        return []
    head = serialize_entity_key_prefix(["customer_id"], entity_key_serialization_version=version)
    suffix = project.encode()
    keys = []
    for customer_id in customer_ids:
        value = customer_id.encode()
        keys.append(b"".join((head, _STRING_VALUE.pack(ValueType.STRING.value, len(value)), value, suffix)))
    reference = serialize_entity_key(
        EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=customer_ids[0])]),
        entity_key_serialization_version=version,
    )
    if keys[0] != reference + suffix:
        raise RuntimeError(f"Feast's entity key encoding (version {version}) is not the one sendwise reads Redis with")
    return keys


@dataclass(frozen=True)
class RawColumn:
    """One hash field of a batch's customers: each one's value length (0: no value) and the values concatenated."""

    lengths: np.ndarray  # int64, one per customer
    data: bytes

    def starts(self) -> np.ndarray:
        """Where each customer's value starts in `data`."""
        starts = np.zeros(len(self.lengths), dtype=np.int64)
        np.cumsum(self.lengths[:-1], out=starts[1:])
        return starts

    def values(self, rows: np.ndarray) -> list[bytes | None]:
        """The values of `rows` as bytes (None where there is none): for kinds without a decoder of their own."""
        starts, lengths, data = self.starts(), self.lengths, self.data
        return [data[starts[i] : starts[i] + lengths[i]] if lengths[i] else None for i in rows.tolist()]


def read_columns(client: redis.Redis, keys: list[bytes], fields: list[bytes]) -> list[RawColumn]:
    """Every field of every key (one HMGET a key, `READ_CHUNK` keys a round trip), as one `RawColumn` per field."""
    return _hmget_columns(client, keys, fields)


def _as_columns(replies: list[list[bytes | None]], width: int) -> list[RawColumn]:
    """HMGET replies of `width` fields as columns. A field a hash lacks and a field holding nothing (Feast's null
    `ValueProto` serializes to no bytes) both have length 0: decisions read both as missing."""
    flat = [value or b"" for value in itertools.chain.from_iterable(replies)]
    lengths = np.fromiter(map(len, flat), dtype=np.int64, count=len(flat)).reshape(len(replies), width)
    return [RawColumn(np.ascontiguousarray(lengths[:, j]), b"".join(flat[j::width])) for j in range(width)]


def _hmget_columns(
    client: redis.Redis,
    keys: list[bytes],
    fields: list[bytes],
    each: Callable[[list[list[bytes | None]]], None] | None = None,
) -> list[RawColumn]:
    """`read_columns`, handing each chunk's replies to `each` (if given) before they are let go: a batch's
    replies are never all held as Python objects at once (10,000 customers' were about 40 MB)."""
    pieces = [_as_columns(replies, len(fields)) for replies in _hmget_chunks(client, keys, fields, each)]
    if len(pieces) == 1:
        return pieces[0]
    return [
        RawColumn(np.concatenate([p[j].lengths for p in pieces]), b"".join([p[j].data for p in pieces]))
        for j in range(len(fields))
    ]


def _hmget_chunks(
    client: redis.Redis,
    keys: list[bytes],
    fields: list[bytes],
    each: Callable[[list[list[bytes | None]]], None] | None = None,
) -> Iterator[list[list[bytes | None]]]:
    """The replies of `HMGET key *fields` for each key, `READ_CHUNK` keys at a time (at least one chunk, empty
    without keys), each chunk handed to `each` first. Each chunk's commands are packed into one write and read
    back reply by reply on one connection of the client's pool: what a pipeline sends, without building a
    command object per key and parsing its answer through the pipeline's layers (two thirds of a 10,000-key
    read went there)."""
    command = b"*%d\r\n$5\r\nHMGET\r\n" % (len(fields) + 2)
    tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in fields)
    if not keys:
        yield []
        return
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        for first in range(0, len(keys), READ_CHUNK):
            chunk = keys[first : first + READ_CHUNK]
            packed = b"".join([b"%s$%d\r\n%s\r\n%s" % (command, len(k), k, tail) for k in chunk])
            connection.send_packed_command([packed])
            replies = [connection.read_response() for _ in chunk]
            if each is not None:
                each(replies)
            yield replies
    except BaseException:
        connection.disconnect()  # replies may be left unread: the connection is not reused
        raise
    finally:
        pool.release(connection)


_FLOAT_HEAD = np.frombuffer(Value(float_val=0.0).SerializeToString()[:-4], dtype=np.uint8)
"""The bytes before the value of a float `ValueProto` (its tag), as protobuf writes one (Feast's own class)."""
_LIST_HEAD = np.frombuffer(Value(float_list_val=FloatList()).SerializeToString()[:-1], dtype=np.uint8)
"""The tag of a float list `ValueProto`; a one-byte length, then the packed floats' tag and length follow."""
_PACKED_TAG = FloatList(val=[0.0]).SerializeToString()[0]
_STRING_TAG = Value(string_val="x").SerializeToString()[0]
SHORT = 128
"""Lengths below this are one byte in protobuf's varints: the bulk decoders read those, anything else is parsed."""


def _heads_are(data: np.ndarray, starts: np.ndarray, head: np.ndarray) -> bool:
    return all(bool((data[starts + k] == byte).all()) for k, byte in enumerate(head.tolist()))


def _cut(data: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """`data[starts[i] : starts[i] + sizes[i]]` for every i, concatenated: one gather, no Python loop."""
    if len(sizes) and (sizes == sizes[0]).all():  # the usual: a whole column of one size
        return data[starts[:, None] + np.arange(sizes[0])].ravel()
    offsets = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1], out=offsets[1:])
    total = int(sizes.sum())
    within = np.arange(total, dtype=np.int64) - np.repeat(offsets, sizes)
    return data[np.repeat(starts, sizes) + within]


def _floats(column: RawColumn, rows: np.ndarray) -> pa.Array | None:
    """A float column decoded at once with numpy, where every value present is a float `ValueProto` (its tag
    and 4 bytes); None otherwise (decoded value by value)."""
    lengths, starts = column.lengths[rows], column.starts()[rows]
    present = lengths > 0
    data = np.frombuffer(column.data, dtype=np.uint8)
    if not (lengths[present] == len(_FLOAT_HEAD) + 4).all() or not _heads_are(data, starts[present], _FLOAT_HEAD):
        return None
    values = np.zeros(len(rows), dtype=np.float32)
    values[present] = _cut(data, starts[present] + len(_FLOAT_HEAD), np.full(present.sum(), 4)).view("<f4")
    return pa.array(values, type=pa.float32(), mask=~present)


def _float_lists(column: RawColumn, rows: np.ndarray) -> pa.Array | None:
    """A float list column (hourly rhythms, product views per category) decoded at once with numpy, where every
    value present is a float list `ValueProto` of fewer than 32 floats, laid out as protobuf writes one: its tag,
    its length, the packed floats' tag, their length, the floats; None otherwise (decoded value by value)."""
    lengths, starts = column.lengths[rows], column.starts()[rows]
    present = lengths > 0
    data = np.frombuffer(column.data, dtype=np.uint8)
    at, sizes = starts[present], lengths[present]
    tag = len(_LIST_HEAD)
    empty = sizes == tag + 1
    counts = np.where(empty, 0, (sizes - tag - 3) // 4)
    inner = 4 * counts
    if not (
        (np.where(empty, tag + 1, tag + 3 + inner) == sizes).all()
        and (inner + 2 < SHORT).all()
        and _heads_are(data, at, _LIST_HEAD)
        and (data[at + tag] == np.where(empty, 0, inner + 2)).all()
    ):
        return None
    full = at[~empty]
    if not ((data[full + tag + 1] == _PACKED_TAG).all() and (data[full + tag + 2] == inner[~empty]).all()):
        return None
    floats = _cut(data, at + tag + 3, inner).view("<f4")
    per_row = np.zeros(len(rows), dtype=np.int32)
    per_row[present] = counts
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(per_row, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(floats, type=pa.float32()), mask=pa.array(~present))


def _short_strings(column: RawColumn, rows: np.ndarray) -> pa.Array | None:
    """A string column decoded at once, where every value present is a short string `ValueProto` (the usual: time
    zones, interests, labels): its tag, a one-byte length, the text, as protobuf writes them. The texts are cut
    out of the column's bytes with numpy and handed to Arrow as one buffer; None where any value is otherwise."""
    lengths, starts = column.lengths[rows], column.starts()[rows]
    present = lengths > 0
    data = np.frombuffer(column.data, dtype=np.uint8)
    at, sizes = starts[present], lengths[present]
    if not (
        ((sizes >= 2) & (sizes < SHORT + 2)).all()
        and (data[at] == _STRING_TAG).all()
        and (data[at + 1] == sizes - 2).all()
    ):
        return None
    texts = np.where(present, lengths - 2, 0)
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(texts, out=offsets[1:])
    validity = pa.array(present).buffers()[1]
    return pa.StringArray.from_buffers(
        len(rows), pa.py_buffer(offsets), pa.py_buffer(_cut(data, starts + 2, texts)), validity, int((~present).sum())
    )


def _string(raw: bytes | None) -> str | None:
    """A string `ValueProto`, parsed."""
    if not raw:
        return None
    value = Value.FromString(raw)
    return value.string_val if value.WhichOneof("val") == "string_val" else None


def _decoded(raw: list[bytes | None], kind: ValueType) -> list[Any]:
    """Feast `ValueProto` bytes as Python values (None where missing or null), each distinct value parsed once
    (time zones, labels and category lists repeat across customers)."""
    parsed: dict[bytes, Any] = {}
    if kind == ValueType.STRING:
        decode: Callable[[bytes], Any] = _string
    elif kind in _SCALARS:
        decode = functools.partial(_scalar, name=_SCALARS[kind])
    elif kind in _LISTS:
        decode = functools.partial(_listed, name=_LISTS[kind])
    else:
        decode = _any
    values: list[Any] = []
    for b in raw:
        if not b:
            values.append(None)
            continue
        value = parsed.get(b, parsed)
        if value is parsed:
            value = parsed[b] = decode(b)
        values.append(value)
    return values


def _scalar(raw: bytes, name: str) -> Any:
    value = Value.FromString(raw)
    return getattr(value, name) if value.WhichOneof("val") == name else None


def _listed(raw: bytes, name: str) -> Any:
    value = Value.FromString(raw)
    return list(getattr(value, name).val) if value.WhichOneof("val") == name else None


def _any(raw: bytes) -> Any:
    return feast_value_type_to_python_type(Value.FromString(raw))


def _column(column: RawColumn, rows: np.ndarray, kind: ValueType, kind_pa: pa.DataType) -> pa.Array:
    """The values of `rows` in one field, as an Arrow array of the feature's type."""
    fast: pa.Array | None = None
    if kind == ValueType.FLOAT:
        fast = _floats(column, rows)
    elif kind == ValueType.FLOAT_LIST:
        fast = _float_lists(column, rows)
    elif kind == ValueType.STRING:
        fast = _short_strings(column, rows)
    if fast is not None:
        return fast
    return pa.array(_decoded(column.values(rows), kind), type=kind_pa)


def read_views(
    client: redis.Redis, layout: list[ViewFields], customer_ids: list[str], project: str, version: int
) -> dict[str, ViewColumns]:
    """Each view's rows of `customer_ids` (distinct) in Redis: every field of every customer read in one round
    trip, decoded column by column into Arrow, with numpy where the kind allows; a few customers (a single
    recipient, a few merged requests) value by value into Python values, where the fixed cost of each numpy and
    Arrow call would be most of it."""
    fields = [f for view in layout for f in (view.timestamp_field, *view.fields)]
    return _read_views(client, layout, customer_ids, entity_keys(customer_ids, project, version), fields)


def _read_views(
    client: redis.Redis,
    layout: list[ViewFields],
    customer_ids: list[str],
    keys: list[bytes],
    fields: list[bytes],
    each: Callable[[list[list[bytes | None]]], None] | None = None,
) -> dict[str, ViewColumns]:
    """`fields` of each key (the layout's first, in order; any after them are not the views') as each view's
    rows: a few customers value by value, more as columns; each chunk's replies handed to `each` first."""
    if len(keys) <= FEW_IDS:
        (replies,) = _hmget_chunks(client, keys, fields, each)
        return _few_views(layout, customer_ids, replies)
    return columns_as_views(layout, customer_ids, _hmget_columns(client, keys, fields, each))


def columns_as_views(
    layout: list[ViewFields], customer_ids: list[str], columns: list[RawColumn]
) -> dict[str, ViewColumns]:
    """The HMGET columns of `read_views` (the layout's fields first, in order) as each view's rows."""
    views: dict[str, ViewColumns] = {}
    at = 0
    for view in layout:
        rows = np.flatnonzero(columns[at].lengths > 0)
        at += 1
        data: dict[str, pa.Array] = {"customer_id": pa.array([customer_ids[i] for i in rows], type=pa.string())}
        for name, kind, kind_pa in zip(view.features, view.kinds, view.types, strict=True):
            data[name] = _column(columns[at], rows, kind, kind_pa)
            at += 1
        views[view.view] = ArrowColumns(pa.table(data))
    return views


def digested_fields(layout: list[ViewFields]) -> list[int]:
    """The positions among the layout's fields of what the offer model reads of a customer: every view's but the
    email state's, which says only whether email has stopped."""
    positions: list[int] = []
    at = 0
    for view in layout:
        width = 1 + len(view.fields)
        if view.view != EMAIL_STATE_VIEW:
            positions.extend(range(at, at + width))
        at += width
    return positions


def _few_views(
    layout: list[ViewFields], customer_ids: list[str], replies: list[list[bytes | None]]
) -> dict[str, ViewColumns]:
    """`read_views` of a few customers: each value parsed on its own, kept as Python values."""
    views: dict[str, ViewColumns] = {}
    at = 0
    for view in layout:
        rows = [i for i, reply in enumerate(replies) if reply[at]]
        at += 1
        values: dict[str, list[Any]] = {}
        for name, kind in zip(view.features, view.kinds, strict=True):
            values[name] = _decoded([replies[i][at] for i in rows], kind)
            at += 1
        views[view.view] = ValueColumns(
            [customer_ids[i] for i in rows], values, dict(zip(view.features, view.types, strict=True))
        )
    return views


class RedisFeatures:
    """The online features of each batch, read from Redis when the batch is decided: the `OnlineFeatures` of a
    replica that shares its store (the same `for_recipients`, no snapshot to keep fresh)."""

    state: OnlineState | None = None  # no snapshot of every customer: each batch has its own

    def __init__(
        self,
        settings: Settings,
        store: FeatureStore,
        priors: RhythmPriors,
    ) -> None:
        self.settings = settings
        self.store = store
        self.priors = priors
        self.degraded_reasons: list[str] = []
        self.blank = OnlineState.empty()
        """What a batch reads while Redis cannot be reached: set by the engine, with its models' attributes."""
        self.refresh_in_background = False  # nothing is read in the background: kept for the engine's interface
        self.where = redis_location(settings.redis_url)
        self.client = redis_client(settings.redis_url)
        self._lock = threading.Lock()
        self._layout: tuple[float, int, list[ViewFields]] | None = None  # (checked at, registry mtime, layout)

    def layout(self) -> list[ViewFields]:
        """The registry's views and features, read again when the registry changed (looked at every 10 s)."""
        with self._lock:
            current = self._layout
            now = time.monotonic()
            if current is not None and now - current[0] < REGISTRY_CHECK_SECONDS:
                return current[2]
            path = self.settings.feast_dir / "registry.db"
            stamp = path.stat().st_mtime_ns if path.exists() else 0
            if current is not None and current[1] == stamp:
                self._layout = (now, stamp, current[2])
                return current[2]
            layout = redis_layout(self.store)
            self._layout = (now, stamp, layout)
            return layout

    def read(
        self, customer_ids: list[str]
    ) -> tuple[FeatureSnapshot, ViewColumns | None, ViewColumns | None, KeptScores]:
        """The customers' rows (distinct ids) as a snapshot of just them, their email state (the email-state
        view's rows: pushed stops and consents), their latest activity and their kept offer scores
        (`serving.offer_scores`), from the same round trip."""
        config = self.store.config
        layout = self.layout()
        fields = [f for view in layout for f in (view.timestamp_field, *view.fields)]
        keys = entity_keys(customer_ids, config.project, config.entity_key_serialization_version)
        digested = operator.itemgetter(*digested_fields(layout))
        digests: list[bytes] = []
        values: list[bytes | None] = []

        def keep_scores(replies: list[list[bytes | None]]) -> None:
            digests.extend(customer_digest(digested(reply)) for reply in replies)
            values.extend(reply[-1] for reply in replies)

        views = _read_views(self.client, layout, customer_ids, keys, [*fields, OFFER_SCORES], keep_scores)
        email_state = views.pop(EMAIL_STATE_VIEW, None)
        activity = views.pop(ACTIVITY_VIEW, None)
        snapshot = FeatureSnapshot.from_columns(views)
        rows = snapshot.rows(customer_ids)
        kept = KeptScores(client=self.client, keys=keys, digests=digests, values=values, rows=rows)
        return snapshot, email_state, activity, kept

    def for_recipients(self, recipients: Sequence[Recipient]) -> BatchFeatures:
        """The recipients' feature rows as the models see them, with their stops and their kept offer scores;
        all unknown, and degraded, with nothing stopped, without Redis (as the SQLite mode decides while its
        online store is down)."""
        ids = [r.customer_id for r in recipients]
        distinct = list(dict.fromkeys(ids))
        try:
            snapshot, email_state, activity, kept = self.read(distinct)
        except (redis.RedisError, OSError) as error:
            self.failed(error)
            blank = self.blank
            found = batch_features(blank, ids, blank.snapshot.rows(ids), recipients, self.priors, degraded=True)
            found.stopped = np.zeros(len(ids), dtype=bool)
            return found
        self._recovered()
        state = OnlineState(
            snapshot, np.zeros((len(snapshot) + 1, 0), dtype=np.float32), {}
        )  # offers: looked up in `kept`, or scored per batch
        pushed = pushed_email_state(email_state, ids)
        rows = kept.rows if len(distinct) == len(ids) else snapshot.rows(ids)  # no id twice: the same rows
        found = batch_features(state, ids, rows, recipients, self.priors, pushed=pushed)
        found.set_latest(latest_values(activity, ids))
        found.kept = kept
        return found

    def failed(self, error: Exception) -> None:
        """Redis could not be read: answers are degraded, with a reason naming it, until a read succeeds."""
        if not self.degraded_reasons:
            logger.error("the Redis online store at %s cannot be read (%s): answers are degraded", self.where, error)
        self.degraded_reasons = [
            f"online features unavailable: the Redis online store at {self.where} cannot be read "
            f"({type(error).__name__}: {error})"
        ]

    def _recovered(self) -> None:
        if self.degraded_reasons:
            logger.warning("the Redis online store at %s is readable again: answers are no longer degraded", self.where)
            self.degraded_reasons = []

    # The rest of `OnlineFeatures`' interface: nothing is held, so nothing is refreshed or scored again.
    def current(self) -> OnlineState | None:
        return None

    def refresh(self) -> None:
        """Nothing to read again: every batch reads Redis."""

    def wait_for_refresh(self, timeout: float | None = None) -> None:
        """Nothing is read in the background."""

    def rescored(self, score_offers: Callable[[FeatureSnapshot], OfferTable], offers_changed: bool) -> RedisFeatures:
        """The same reader for an engine with new champions: offers are scored with each batch, by its catalog."""
        twin = copy.copy(self)  # the same Redis client and registry layout
        twin.degraded_reasons = list(self.degraded_reasons)
        return twin


def redis_location(url: str) -> str:
    """`host:port/db` of a Redis URL: where it is, without its password (for reasons and logs)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}/{parts.path.strip('/') or '0'}"
