"""Online features read per batch from Feast's Redis online store: what replicas sharing one Redis decide from.

With `SENDWISE_ONLINE_STORE=redis` the engine keeps no snapshot of every customer. Each batch reads its own
customers' rows from the Redis that Feast materialized into, in one pipelined round trip, and turns them into the
arrays the SQLite mode's snapshot holds (`FeatureSnapshot.from_tables` on just these customers): the models see
exactly what they see there. The batch's offers are scored with the batch (`OfferCatalog.conversion`, its
eligible offers only), where the SQLite mode scores every customer's offers once per snapshot.

Feast stays the definition. The views, their features and their types come from the registry's
`open_propensity_v1` feature service (as `serving.snapshot.view_sources`); keys and hash fields are made by
Feast's own helpers as its `RedisOnlineStore` makes them (`serialize_entity_key` + project, `_mmh3` of
`view:feature`, `_ts:view`), and values are Feast's `ValueProto`s. It reads them itself rather than through
`RedisOnlineStore.online_read` for one reason: every view of a customer lives in one Redis hash, so one HMGET per
customer fetches all of them (Feast sends one per customer and view) and only the features decisions read are
fetched and decoded. The email-state view (whether email to a customer has stopped, which `POST /v1/events`
pushes) is one of them: a decision's stops come with its features, not from a read of their own.

A Redis that cannot be reached degrades the batch (population priors for everyone, `status: degraded` with a
reason naming Redis); the next batch tries again.
"""

from __future__ import annotations

import copy
import functools
import logging
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis
from feast import FeatureStore, FeatureView, Field
from feast.errors import FeatureViewNotFoundException
from feast.infra.key_encoding_utils import serialize_entity_key, serialize_entity_key_prefix
from feast.infra.online_stores.helpers import _mmh3, compute_versioned_name
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import FloatList, Value
from feast.type_map import feast_value_type_to_pa, feast_value_type_to_python_type
from feast.value_type import ValueType

from features.latest import ACTIVITY_COLUMNS, ACTIVITY_TEXTS, ACTIVITY_TIMES, EMAIL_FLAGS
from features.store import redis_client
from features.transform import HOURS
from sendwise.settings import Settings
from serving.online import BatchFeatures, OfferTable, OnlineState, RhythmPriors, batch_features
from serving.realtime import ACTIVITY_VIEW, EMAIL_STATE_VIEW
from serving.schemas import Recipient
from serving.snapshot import SERVICE, USED, FeatureSnapshot

logger = logging.getLogger(__name__)

REGISTRY_CHECK_SECONDS = 10.0
"""How often a batch looks whether the Feast registry changed (a new pipeline run may add attributes)."""

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
    found.append(_view_fields(state, [f for f in state.features if f.name in EMAIL_FLAGS], versioned))
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


def stopped_customers(table: pa.Table | None) -> set[str]:
    """The customers of an email-state table read from Redis whose email has stopped (any flag above 0), as
    `RealtimeFeatures.stopped` reads them through Feast."""
    if table is None or table.num_rows == 0:
        return set()
    flags = [pc.fill_null(pc.greater(table[f], 0), False) for f in table.column_names if f != "customer_id"]
    if not flags:
        return set()
    stopped = functools.reduce(pc.or_, flags)
    return set(table["customer_id"].filter(stopped).to_pylist())


def latest_values(table: pa.Table | None, ids: list[str]) -> dict[str, np.ndarray]:
    """The latest activity of each of `ids` (repeats allowed) from the activity view's rows read from Redis, as
    `RealtimeFeatures.latest` reads them through Feast."""
    found = {name: np.full(len(ids), np.nan) for name in ACTIVITY_TIMES}
    found.update({name: np.full(len(ids), None, dtype=object) for name in ACTIVITY_TEXTS})
    if table is None or table.num_rows == 0:
        return found
    at = pc.index_in(pa.array(ids, type=pa.string()), value_set=table["customer_id"]).to_numpy(zero_copy_only=False)
    has = ~np.isnan(at.astype(np.float64)) if at.dtype.kind == "f" else np.ones(len(ids), dtype=bool)
    rows = np.where(has, np.nan_to_num(at.astype(np.float64), nan=0.0), 0).astype(np.int64)
    for name in ACTIVITY_TIMES:
        if name in table.column_names:
            values = pc.cast(table[name], pa.float64()).to_numpy(zero_copy_only=False)
            found[name] = np.where(has, values[rows], np.nan)
    for name in ACTIVITY_TEXTS:
        if name in table.column_names:
            texts = np.asarray(table[name].to_pylist(), dtype=object)[rows]
            texts[~has] = None
            found[name] = texts
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


@functools.cache
def _float_template(width: int) -> tuple[int, np.ndarray]:
    """(serialized size, header bytes) of a `ValueProto` of one float (width 1) or a list of `width` floats."""
    zeros = Value(float_val=0.0) if width == 1 else Value(float_list_val=FloatList(val=[0.0] * width))
    template = zeros.SerializeToString()
    return len(template), np.frombuffer(template[: len(template) - 4 * width], dtype=np.uint8)


def _fixed_floats(raw: list[Any], kind: ValueType) -> pa.Array | None:
    """A float or a 24-float list column decoded at once with numpy, where every value present is serialized as
    protobuf serializes one of that size (checked against a template serialized by Feast's own `ValueProto`);
    None otherwise (other sizes, nulls inside: decoded value by value)."""
    width = 1 if kind == ValueType.FLOAT else HOURS
    size, header = _float_template(width)
    lengths = np.fromiter((len(b) if b else 0 for b in raw), dtype=np.int64, count=len(raw))
    fits = lengths == size
    if not (fits | (lengths == 0)).all():
        return None
    data = np.frombuffer(b"".join(b for b in raw if b), dtype=np.uint8).reshape(-1, size)
    if not (data[:, : len(header)] == header).all():
        return None
    values = np.zeros((len(raw), width), dtype=np.float32)
    values[fits] = np.ascontiguousarray(data[:, len(header) :]).view("<f4")
    if width == 1:
        return pa.array(values[:, 0], type=pa.float32(), mask=~fits)
    offsets = pa.array(np.arange(0, len(raw) * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.ravel()), mask=pa.array(~fits))


_STRING_TAG = Value(string_val="x").SerializeToString()[0]


def _string(raw: bytes | None) -> str | None:
    """A string `ValueProto`: a short one (the usual: time zones, interests, labels) read straight from its bytes,
    its tag and one-byte length as protobuf writes them; anything else parsed."""
    if not raw:
        return None
    if raw[0] == _STRING_TAG and raw[1] == len(raw) - 2 and len(raw) < 130:
        return raw[2:].decode()
    value = Value.FromString(raw)
    return value.string_val if value.WhichOneof("val") == "string_val" else None


def _decoded(raw: list[Any], kind: ValueType) -> list[Any]:
    """Feast `ValueProto` bytes as Python values (None where missing or null)."""
    parse = Value.FromString
    values: list[Any] = []
    if kind == ValueType.STRING:
        return [_string(b) for b in raw]
    if kind in _SCALARS:
        name = _SCALARS[kind]
        for b in raw:
            if not b:
                values.append(None)
                continue
            value = parse(b)
            values.append(getattr(value, name) if value.WhichOneof("val") == name else None)
        return values
    if kind in _LISTS:
        name = _LISTS[kind]
        for b in raw:
            if not b:
                values.append(None)
                continue
            value = parse(b)
            values.append(list(getattr(value, name).val) if value.WhichOneof("val") == name else None)
        return values
    return [None if not b else feast_value_type_to_python_type(parse(b)) for b in raw]


def read_tables(
    client: redis.Redis, layout: list[ViewFields], customer_ids: list[str], project: str, version: int
) -> dict[str, pa.Table]:
    """Each view's rows of `customer_ids` (distinct) in Redis, as tables: one HMGET per customer, pipelined."""
    fields = [f for view in layout for f in (view.timestamp_field, *view.fields)]
    with client.pipeline(transaction=False) as pipe:
        for key in entity_keys(customer_ids, project, version):
            pipe.execute_command("HMGET", key, *fields)
        replies = pipe.execute()
    columns = list(zip(*replies, strict=True)) if replies else [() for _ in fields]
    tables, at = {}, 0
    for view in layout:
        present = np.array([b is not None for b in columns[at]], dtype=bool)
        at += 1
        rows = np.flatnonzero(present)
        data: dict[str, pa.Array] = {"customer_id": pa.array([customer_ids[i] for i in rows], type=pa.string())}
        for name, kind, kind_pa in zip(view.features, view.kinds, view.types, strict=True):
            raw = columns[at]
            at += 1
            present_raw = [raw[i] for i in rows]
            fast = _fixed_floats(present_raw, kind) if kind in (ValueType.FLOAT, ValueType.FLOAT_LIST) else None
            data[name] = fast if fast is not None else pa.array(_decoded(present_raw, kind), type=kind_pa)
        tables[view.view] = pa.table(data)
    return tables


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

    def read(self, customer_ids: list[str]) -> tuple[FeatureSnapshot, set[str], pa.Table | None]:
        """The customers' rows (distinct ids) as a snapshot of just them, those of them whose email has stopped
        (the email-state view, pushed stops included) and their latest activity, from the same round trip."""
        config = self.store.config
        tables = read_tables(
            self.client, self.layout(), customer_ids, config.project, config.entity_key_serialization_version
        )
        stopped = stopped_customers(tables.pop(EMAIL_STATE_VIEW, None))
        activity = tables.pop(ACTIVITY_VIEW, None)
        return FeatureSnapshot.from_tables(tables, ()), stopped, activity

    def for_recipients(self, recipients: Sequence[Recipient]) -> BatchFeatures:
        """The recipients' feature rows as the models see them, with their stops; all unknown, and degraded, with
        nothing stopped, without Redis (as the SQLite mode decides while its online store is down)."""
        ids = [r.customer_id for r in recipients]
        try:
            snapshot, stopped, activity = self.read(list(dict.fromkeys(ids)))
        except (redis.RedisError, OSError) as error:
            self._failed(error)
            blank = self.blank
            found = batch_features(blank, ids, blank.snapshot.rows(ids), recipients, self.priors, degraded=True)
            found.stopped = np.zeros(len(ids), dtype=bool)
            return found
        self._recovered()
        state = OnlineState(
            snapshot, np.zeros((len(snapshot) + 1, 0), dtype=np.float32), {}
        )  # offers: scored per batch
        found = batch_features(state, ids, snapshot.rows(ids), recipients, self.priors)
        found.stopped = np.fromiter((c in stopped for c in ids), dtype=bool, count=len(ids))
        found.set_latest(latest_values(activity, ids))
        return found

    def _failed(self, error: Exception) -> None:
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
