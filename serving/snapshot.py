"""Every customer's online features in memory, as arrays: what the engine reads for each decision.

Feast stays the one definition of the features. The views of the `open_propensity_v1` service, their features,
their Parquet sources and the end of their last materialization all come from the Feast registry, and the
snapshot holds what Feast's online store holds after `materialize`: for each view, each customer's latest row
with a timestamp inside the materialized interval (Feast's DuckDB store filters `start <= ts <= end` and keeps
the latest). It reads those rows in bulk from the sources instead of entity by entity from SQLite, which costs
about 60 ms per 1,000 customers through `get_online_features`, most of a campaign's decision time.

The arrays are compact (float32 features, the two daily rhythms, product views over one category vocabulary,
time zones and interests as codes) and carry one extra, empty row at the end: the row of every customer the
snapshot does not know. `tests/test_snapshot.py` checks the designs built from it against Feast's online store.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from feast import FeatureStore, FileSource

from features.transform import ENGAGEMENT_FEATURES, HOURS, SCALAR_FEATURES, CustomerMatrix
from sendwise.settings import Settings
from serving.columns import ArrowColumns, ViewColumns, customer_rows

SERVICE = "open_propensity_v1"
BATCH_ROWS = 100_000
"""Rows of a source read at a time: the latest rows are kept, the rest let go (a source holds one row per
customer and snapshot day, several times the customers)."""
CONSENT_COLUMNS = ("profiling_allowed", "consent_email", "email_eligible")
RHYTHMS = ("rhythm_weekday", "rhythm_weekend")
CONTEXT = ("timezone", "interests", "category_names", "category_views")
FEW_IDS = 64
"""Up to this many ids are looked up one by one (a single recipient, a few merged requests)."""
USED = frozenset((*SCALAR_FEATURES, *RHYTHMS, *CONSENT_COLUMNS, *CONTEXT))
"""The features decisions read (with every `attr_*`): the views' other features (hourly profiles of opens,
clicks and sessions, country) stay in the tables; reading them too tripled the memory a load peaks at."""


@dataclass(frozen=True)
class ViewSource:
    """Where one feature view's rows come from, as the registry says."""

    view: str
    path: Path
    timestamp_field: str
    features: tuple[str, ...]
    start: datetime | None
    end: datetime | None  # None: never materialized, so the online store has none of its rows


def snapshot_signature(settings: Settings) -> tuple[tuple[str, int], ...]:
    """The feature tables and the registry with their modification times: a change means a new snapshot."""
    files = [*sorted(settings.feature_tables_dir.glob("*.parquet")), settings.feast_dir / "registry.db"]
    return tuple((p.name, p.stat().st_mtime_ns) for p in files if p.exists())


def view_sources(store: FeatureStore, settings: Settings) -> list[ViewSource]:
    """The views of the service the open and send-time models read, resolved into the home (a home may have
    been copied: the registry's absolute paths would name the original)."""
    service = store.get_feature_service(SERVICE)
    sources = []
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        source = view.batch_source
        if not isinstance(source, FileSource):
            raise TypeError(f"{view.name} reads {type(source).__name__}: the snapshot reads Parquet file sources")
        intervals = view.materialization_intervals
        sources.append(
            ViewSource(
                view=view.name,
                path=settings.feature_tables_dir / Path(source.path).name,
                timestamp_field=source.timestamp_field,
                features=tuple(f.name for f in projection.features),
                start=min(a for a, _ in intervals) if intervals else None,
                end=max(b for _, b in intervals) if intervals else None,
            )
        )
    return sources


def latest_rows(source: ViewSource, key: str = "customer_id", with_timestamp: bool = False) -> pa.Table:
    """Each customer's latest row of `source` inside its materialized interval: the rows the online store has."""
    columns = [key, *((source.timestamp_field,) if with_timestamp else ()), *source.features]
    if source.end is None:
        return pa.table({name: pa.array([], type=pa.string()) for name in columns})
    if not source.path.exists():  # materialized, so the online store has its rows: a file gone is an outage
        raise FileNotFoundError(f"{source.path} (the source of {source.view}, materialized until {source.end}) is gone")
    try:
        handle = pq.ParquetFile(source.path)
    except (OSError, pa.ArrowException) as error:
        raise OSError(f"cannot read {source.path} (the source of {source.view}): {error}") from error
    available = set(handle.schema_arrow.names)
    columns = [c for c in columns if c in available]
    keys = handle.read(columns=[key, source.timestamp_field])
    stamps = keys[source.timestamp_field].cast(pa.timestamp("us", tz="UTC")).to_numpy().astype("datetime64[us]")
    inside = stamps <= np.datetime64(source.end.astimezone(UTC).replace(tzinfo=None), "us")
    if source.start is not None:
        inside &= stamps >= np.datetime64(source.start.astimezone(UTC).replace(tzinfo=None), "us")
    codes = pc.fill_null(pc.dictionary_encode(keys[key].combine_chunks()).indices, -1).to_numpy()
    inside &= codes >= 0  # a row without a customer id is no customer's
    order = np.lexsort((stamps, codes))
    order = order[inside[order]]
    last = order[np.r_[codes[order][1:] != codes[order][:-1], True]] if len(order) else order
    keep = np.zeros(len(stamps), dtype=bool)
    keep[last] = True
    parts, offset = [], 0
    for batch in handle.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        mask = keep[offset : offset + batch.num_rows]
        offset += batch.num_rows
        if mask.any():
            parts.append(batch.filter(pa.array(mask)))
    if not parts:
        return handle.schema_arrow.empty_table().select(columns)
    return pa.Table.from_batches(parts)


def _fixed_lists(columns: ViewColumns, name: str, rows: np.ndarray, out: np.ndarray) -> None:
    """Write the lists of length HOURS into `out[rows]` (other lengths and nulls stay zero, as online)."""
    lengths, values = columns.float_lists(name)
    whole = lengths == HOURS
    if whole.any():
        kept = np.repeat(whole, np.maximum(lengths, 0))
        out[rows[whole]] = values[kept].reshape(-1, HOURS)


@dataclass
class FeatureSnapshot:
    """The latest online features of every customer, one array row per customer plus the empty row."""

    index: pd.Index  # customer_id -> row
    known: np.ndarray  # a customer_fv row with a time zone: the customer is known
    zones: np.ndarray  # time zone names; `zone_codes` index them
    zone_codes: np.ndarray
    interest_sets: list[frozenset[str]]
    interest_codes: np.ndarray
    consent: dict[str, np.ndarray]  # profiling_allowed, consent_email, email_eligible: > 0 means yes
    scalars: np.ndarray  # [rows, SCALAR_FEATURES] float32, NaN where missing
    rhythm: np.ndarray  # [rows, 2, 24] float32: weekday, weekend (zeros where missing)
    categories: list[str]  # the vocabulary of product-view categories
    views: np.ndarray  # [rows, categories] float32
    has_views: np.ndarray  # an engagement row with a category list
    attributes: dict[str, _PlainColumn]  # the attr_* columns, one value per array row
    signature: tuple[tuple[str, int], ...]  # `snapshot_signature` when read: another one means a stale snapshot

    @property
    def empty_row(self) -> int:
        return len(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, customer_ids: list[str]) -> np.ndarray:
        """Each id's array row; the empty row for ids the snapshot does not have."""
        if len(customer_ids) <= FEW_IDS:  # one hash look-up each: get_indexer's fixed cost is 25 µs
            found = []
            for customer_id in customer_ids:
                try:
                    found.append(self.index.get_loc(customer_id))
                except KeyError:
                    found.append(self.empty_row)
            return np.array(found, dtype=np.int64)
        found = self.index.get_indexer(customer_ids)
        return np.where(found < 0, self.empty_row, found)

    def matrix(self, customer_ids: list[str], rows: np.ndarray, blank: np.ndarray | None = None) -> CustomerMatrix:
        """The rows as the models' input arrays (copies: the engine overlays context). The positions in `blank`
        get no engagement features (NaN), as for a customer without profiling consent."""
        views = self.views[rows]
        named = self.has_views[rows]
        vocabulary = list(self.categories)
        scalars = self.scalars[rows]
        if blank is not None and len(blank):
            scalars[np.ix_(blank, np.arange(len(ENGAGEMENT_FEATURES)))] = np.nan
        return CustomerMatrix(
            customer_id=np.asarray(customer_ids, dtype=object),
            timezone=self.zones[self.zone_codes[rows]],
            interests=[self.interest_sets[c] for c in self.interest_codes[rows]],  # shared, never changed
            profiles={name: self.rhythm[rows, k].copy() for k, name in enumerate(RHYTHMS)},
            scalars=scalars,
            attributes={name: column.take(rows) for name, column in self.attributes.items()},
            category_names=[vocabulary if has else [] for has in named],
            category_views=list(views),
        )

    @classmethod
    def empty(cls, attributes: Mapping[str, bool] | None = None) -> FeatureSnapshot:
        """No customers at all (no feature store yet, or none readable): every recipient is unknown. `attributes`
        names the `attr_*` columns the models read (True: a label), all missing here, so that a design has them."""
        blank = cls.from_tables({}, ())
        for name, label in (attributes or {}).items():
            if label:
                blank.attributes[name] = _PlainColumn(np.array([np.nan], dtype=object), np.full(1, -1, np.int32))
            else:
                blank.attributes[name] = _PlainColumn(np.full(1, np.nan), None)
        return blank

    @classmethod
    def load(
        cls, store: FeatureStore, settings: Settings, progress: Callable[[str], None] | None = None
    ) -> FeatureSnapshot:
        use_system_allocator()
        signature = snapshot_signature(settings)  # before reading: a change while reading is seen next time
        sources = view_sources(store, settings)
        tables: dict[str, pa.Table] = {}
        for source in sources:
            if progress:
                progress(f"reading the latest {source.view} rows")
            used = tuple(f for f in source.features if f in USED or f.startswith("attr_"))
            if not used:  # a view decisions read at decision time instead (the latest values)
                continue
            tables[source.view] = latest_rows(replace(source, features=used))
        release_memory()
        return cls.from_tables(tables, signature)

    @classmethod
    def from_tables(cls, tables: dict[str, pa.Table], signature: tuple[tuple[str, int], ...]) -> FeatureSnapshot:
        """The snapshot of each view's latest rows (`customer_id` and the view's features; one row per customer),
        as `latest_rows` reads them from the sources."""
        return cls.from_columns({view: ArrowColumns(table) for view, table in tables.items()}, signature)

    @classmethod
    def from_columns(
        cls, views: Mapping[str, ViewColumns], signature: tuple[tuple[str, int], ...] = ()
    ) -> FeatureSnapshot:
        """The snapshot of each view's rows (one per customer), in either form `serving.columns` reads: the
        feature tables' latest rows, or what an online store returns (`serving.redis_features`)."""
        views = {view: columns for view, columns in views.items() if len(columns)}
        distinct, positions = customer_rows(list(views.values()))
        ids = pd.Index(distinct, dtype=object)
        n = len(ids)
        scalars = np.full((n + 1, len(SCALAR_FEATURES)), np.nan, dtype=np.float32)
        rhythm = np.zeros((n + 1, 2, HOURS), dtype=np.float32)
        consent = {c: np.zeros(n + 1, dtype=np.float32) for c in CONSENT_COLUMNS}
        zone_names: np.ndarray = np.array([None], dtype=object)
        zone_codes = np.zeros(n + 1, dtype=np.int32)
        interest_values: list[str | None] = [None]
        interest_codes = np.zeros(n + 1, dtype=np.int32)
        known = np.zeros(n + 1, dtype=bool)
        categories: list[str] = []
        views_per_category = np.zeros((n + 1, 0), dtype=np.float32)
        has_views = np.zeros(n + 1, dtype=bool)
        attributes: dict[str, _PlainColumn] = {}
        for columns, at in zip(views.values(), positions, strict=True):
            names = columns.names
            for k, name in enumerate(SCALAR_FEATURES):
                if name in names:
                    scalars[at, k] = columns.numbers(name, np.float32)
            for k, name in enumerate(RHYTHMS):
                if name in names:
                    _fixed_lists(columns, name, at, rhythm[:, k])
            for name in CONSENT_COLUMNS:
                if name in names:
                    consent[name][at] = np.nan_to_num(columns.numbers(name, np.float32), nan=0.0)
            if "timezone" in names:
                codes, uniques = columns.coded("timezone")
                zone_names = np.array([None, *uniques], dtype=object)
                zone_codes[at] = codes + 1
                known[at] = codes >= 0
            if "interests" in names:
                codes, uniques = columns.coded("interests")
                interest_values = [None, *uniques]
                interest_codes[at] = codes + 1
            if "category_names" in names and "category_views" in names:
                categories, views_per_category, has_views = _category_views(columns, at, n + 1)
            for column in sorted(c for c in names if c.startswith("attr_")):
                attributes[column] = _attribute(columns, column, at, n + 1)
        return cls(
            index=ids,
            known=known,
            zones=zone_names,
            zone_codes=zone_codes,
            interest_sets=[_interest_set(v) for v in interest_values],
            interest_codes=interest_codes,
            consent=consent,
            scalars=scalars,
            rhythm=rhythm,
            categories=categories,
            views=views_per_category,
            has_views=has_views,
            attributes=attributes,
            signature=signature,
        )


def use_system_allocator() -> None:
    """Arrow allocates with the system's allocator from here on, so that what a load frees goes back to the
    system with `release_memory` (Arrow's default, mimalloc, kept about 60 MB of a million customers' load
    resident)."""
    pa.set_memory_pool(pa.system_memory_pool())


def release_memory() -> None:
    """Hand the memory a load freed back to the system: Arrow's pool and glibc's heap keep it otherwise, and
    the service's resident memory would stay at the load's peak."""
    pa.default_memory_pool().release_unused()
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
            ctypes.CDLL(name).malloc_trim(0)


@dataclass(frozen=True)
class _PlainColumn:
    """An attribute column as `take` hands it out: labels as objects (the request's context may add values the
    snapshot never saw, and NaN where missing), numbers as they are."""

    values: np.ndarray  # numbers, or the labels followed by NaN
    codes: np.ndarray | None  # labels: each row's position in `values`, -1 (the NaN at the end) where missing

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.values[rows] if self.codes is None else self.values[self.codes[rows]]


def _attribute(columns: ViewColumns, name: str, at: np.ndarray, rows: int) -> _PlainColumn:
    """An `attr_*` column over the snapshot's rows: numbers as they are, labels coded (a Python string per
    customer would be a million of them)."""
    if columns.is_numeric(name):
        numbers = np.full(rows, np.nan)
        numbers[at] = columns.numbers(name, np.float64)
        return _PlainColumn(numbers, None)
    found, labels = columns.coded(name)
    codes = np.full(rows, -1, dtype=np.int32)
    codes[at] = found
    return _PlainColumn(np.array([*labels, np.nan], dtype=object), codes)


def _interest_set(value: str | None) -> frozenset[str]:
    """Stated interests as `customer_matrix` parses them: `|`-separated, lower case."""
    if not isinstance(value, str):
        return frozenset()
    return frozenset(s.strip().lower() for s in value.split("|") if s.strip())


def _category_views(columns: ViewColumns, at: np.ndarray, rows: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Product views per category over the union of the categories named, one row per customer."""
    name_lengths, name_codes, found = columns.coded_lists("category_names")
    view_lengths, counts = columns.float_lists("category_views")
    usable = (name_lengths == view_lengths) & (name_lengths >= 0)
    has_views = np.zeros(rows, dtype=bool)
    has_views[at[usable & (name_lengths > 0)]] = True
    codes = name_codes[np.repeat(usable, np.maximum(name_lengths, 0))]
    flat_views = counts[np.repeat(usable, np.maximum(view_lengths, 0))]
    named = np.unique(codes)
    vocabulary = sorted(found[i] for i in named.tolist())
    position = np.zeros(len(found), dtype=np.int64)
    position[named] = [vocabulary.index(found[i]) for i in named.tolist()]
    views = np.zeros((rows, len(vocabulary)), dtype=np.float32)
    owners = np.repeat(at[usable], name_lengths[usable])
    np.add.at(views, (owners, position[codes]), np.nan_to_num(flat_views))
    return vocabulary, views, has_views
