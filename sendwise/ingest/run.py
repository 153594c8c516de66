"""The ingest: options checked, the export discovered, each table read and validated, merged with the raw
store, time zones and margins derived, everything written, and the report returned."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sendwise import asof, contract, raw
from sendwise.ingest import appended
from sendwise.ingest.batch import (
    Batch,
    LateEvents,
    check_currency,
    concat,
    drop_tombstoned,
    late_events,
    raise_late_events,
    read_table,
    warn_likely_fraction,
)
from sendwise.ingest.derive import assign_timezones, email_activity, impute_margins, joined_activity, site_activity
from sendwise.ingest.errors import IngestError
from sendwise.ingest.merge import (
    Merged,
    count_unchanged,
    frames_equal,
    merge,
    quarantine_path,
    quarantine_update,
    raw_arrow,
)
from sendwise.ingest.options import Options, check_options
from sendwise.ingest.progress import ProgressBars, progress_bars
from sendwise.ingest.read import Source, discover
from sendwise.ingest.report import (
    IngestOptions,
    IngestReport,
    TableReport,
    TimezoneCoverage,
    open_counts,
    previous_currency,
    set_open_facts,
    table_report,
    write_report,
)
from sendwise.ingest.spill import spill_folder
from sendwise.settings import Settings
from sendwise.tombstones import Tombstones


def ingest(
    data_dir: Path,
    settings: Settings,
    *,
    assume_tz: str | None = None,
    profiling_consent: Literal["granted", "denied"] | None = None,
    csv_delimiter: str | None = None,
    decimal_comma: bool = False,
    as_of: datetime | pd.Timestamp | str | None = None,
    progress: bool = True,
) -> IngestReport:
    """Validate the contract tables in ``data_dir`` and merge them into the raw store of ``settings``.

    Raises ``IngestError`` for whole-file problems (before anything is written). Bad rows are quarantined.
    The report is returned, and written to ``settings.reports_dir / "ingest"`` (``<time>.json`` and
    ``latest.json``). ``as_of`` is when the export was taken (with a time zone; not before any of its events);
    it, or without it the data's end, is recorded with the raw store (``sendwise.asof``).

    The tables are read and validated one at a time, then merged and staged one at a time (``TableRun``; an
    event table's valid rows wait in a spill folder in between), and what spans tables (the customers'
    activity, the offers' conversions, the data's end, the currency) is kept as it goes: the memory an ingest
    needs is that of its largest table, not of the whole export.
    """
    clock = time.perf_counter()
    started_at = datetime.now(UTC)
    data_dir = Path(data_dir).expanduser().resolve()
    options = check_options(assume_tz, profiling_consent, csv_delimiter, decimal_comma)
    try:
        given_as_of = None if as_of is None else asof.as_timestamp(as_of)
    except asof.AsOfError as error:
        raise IngestError(str(error)) from error
    warnings: list[str] = []
    sources = discover(data_dir, warnings)

    with contextlib.ExitStack() as held:
        with progress_bars(progress) as bars:
            for name, source in sources.items():
                bars.add(name, 2 * len(source.files) + 2)
            spill = held.enter_context(spill_folder(settings))
            run = TableRun(settings, options, started_at, bars, spill)
            run.read_export(sources, given_as_of, warnings)
            currency = check_currency(run.batches, previous_currency(settings))
            if given_as_of is not None:
                raise_late_events(given_as_of, run.late)

            # one writer, from reading the tombstones and the store to the report: an erasure waits for this
            # ingest, or this ingest for it (and then reads its tombstones)
            held.enter_context(raw.writer_lock(settings))
            appended.remove_stray_temporaries(settings)
            try:
                run.merge_all(warnings)
            except BaseException:
                run.discard()
                raise
            raw.commit(settings, run.staged, [p for ps in run.parts.values() for p in ps])
            as_of_used = _record_as_of(settings, data_dir, given_as_of, run)

        report = IngestReport(
            data_dir=str(data_dir),
            home=str(settings.home),
            started_at=started_at,
            seconds=0.0,
            options=IngestOptions(
                assume_tz=assume_tz,
                profiling_consent=profiling_consent,
                csv_delimiter=csv_delimiter,
                decimal_comma=decimal_comma,
                as_of=None if given_as_of is None else given_as_of.to_pydatetime(),
            ),
            currency=currency,
            tables={name: run.reports[name] for name in run.order},
            skipped_tables=[name for name in contract.TABLES if name not in run.order],
            timezones=TimezoneCoverage(
                given=run.zone_sources.get("given", 0),
                country=run.zone_sources.get("country", 0),
                activity=run.zone_sources.get("activity", 0),
                unknown=run.zone_sources.get("unknown", 0),
                unknown_names=run.batches["customers"].unknown_zone_names,
            ),
            as_of=as_of_used.to_pydatetime(),
            as_of_given=given_as_of is not None,
            warnings=warnings,
        )
        set_open_facts(report, run.open_counts)
        report.seconds = round(time.perf_counter() - clock, 3)
        write_report(settings, report)
    return report


class TableRun:
    """An ingest's tables, one at a time, so that it holds one large table at once, not the whole export.

    First (``read_export``, before the writer lock) every table of the export is read and validated, in the
    export's order; an event table's valid rows are then set aside in a Parquet file (``spill``) and released.
    Then (``merge_all``, under the lock) the entity tables (customers, campaigns, offers: small) are merged
    and kept, and each event table is loaded again, merged with the stored one, staged, reported and
    released, keeping only what the others need of it: the customers' human activity (their time zones), the
    offers' conversions (their margins), and the facts of the report and the as-of. Last the entity tables
    get their zones and margins and are staged. Nothing is committed here: the caller commits ``staged`` (and
    removes the merged appended ``parts``), or ``discard``s it.
    """

    def __init__(
        self, settings: Settings, options: Options, started_at: datetime, bars: ProgressBars, spill: Path
    ) -> None:
        self.settings = settings
        self.options = options
        self.started_at = started_at
        self.bars = bars
        self.spill = spill
        self.tombstones = Tombstones(None, set())
        self.parts: dict[str, list[Path]] = {}
        self.order: list[str] = []
        """The tables of the export, then those only the appended parts have: as the report lists them."""
        self.batches: dict[str, Batch] = {}
        self.merges: dict[str, Merged] = {}
        self.stored: dict[str, pd.DataFrame | None] = {}
        self.reports: dict[str, TableReport] = {}
        self.staged: dict[Path, Path] = {}
        self.late: list[LateEvents] = []
        self.activity: dict[str, pd.DataFrame | None] = {}
        self.conversions: pd.DataFrame | None = None
        self.export_latest: list[pd.Timestamp | None] = []
        self.store_latest: list[pd.Timestamp | None] = []
        self.open_counts: tuple[int, int] | None = None
        self.zone_sources: Counter[str] = Counter()

    def read_export(self, sources: dict[str, Source], given_as_of: pd.Timestamp | None, warnings: list[str]) -> None:
        """Every table of the export read and validated; the event tables' valid rows set aside."""
        for name, source in sources.items():
            batch = self.batches[name] = read_table(source, self.options, warnings, self.bars)
            if given_as_of is not None and (found := late_events(given_as_of, batch)):
                self.late.append(found)
            if batch.table.is_event:
                batch.valid.to_parquet(self.spill / f"{name}.parquet")
                batch.valid = batch.valid.iloc[:0].copy()  # a copy: a slice would keep the rows
                release_memory()
        if "offers" in self.batches:
            warn_likely_fraction(self.batches["offers"], warnings)

    def merge_all(self, warnings: list[str]) -> None:
        """Every table merged with the stored one and staged, in the order ``TableRun`` says."""
        self.tombstones = Tombstones.read(self.settings)
        self.parts = appended.pending_parts(self.settings)
        self.order = list(self.batches) + [name for name in self.parts if name not in self.batches]
        for name in contract.TABLES:
            if not contract.TABLES[name].is_event and name in self.order:
                self.merge_entities(name)
        for name in contract.TABLES:
            if contract.TABLES[name].is_event:
                self.events(name)
        self.derive(warnings)
        for name in self.merges:
            self.stage_entities(name)

    def with_parts(self, name: str) -> Batch:
        """The export's table with the appended parts after it (or the parts alone), erased customers dropped."""
        batch = self.batches.get(name)
        if batch is None:
            batch = self.batches[name] = appended_batch(name, self.parts[name])
        elif name in self.parts:
            append_parts(batch, self.parts[name])
        drop_tombstoned(batch, self.tombstones)
        return batch

    def merge_entities(self, name: str) -> None:
        batch = self.with_parts(name)
        self.stored[name] = raw.load_table(self.settings, name)
        self.merges[name] = merge(batch, self.stored[name])
        self.bars.advance(name)

    def events(self, name: str) -> None:
        """One event table merged, staged and reported; what the others need from it kept."""
        if name in self.order:
            if name in self.batches:
                self.batches[name].valid = read_spilled(self.spill / f"{name}.parquet")
            final = self.merge_events(self.with_parts(name))
        else:
            final = raw.load_table(self.settings, name, FACT_COLUMNS[name])
        self.keep_facts(name, final)
        del final
        release_memory()

    def merge_events(self, batch: Batch) -> pd.DataFrame:
        name = batch.table.name
        merged = merge(batch, raw.load_table(self.settings, name))
        self.bars.advance(name)
        if merged.added > 0:
            path = raw.table_path(self.settings, name)
            self.staged[path] = raw.stage_parquet(raw_arrow(merged.frame), path)
        self.stage_quarantine(batch)
        self.bars.advance(name)
        self.reports[name] = table_report(batch, merged, {"customers": self.customers()})
        self.export_latest.append(_latest(batch.valid.get("occurred_at")))
        batch.valid = batch.valid.iloc[:0].copy()  # a copy: a slice would keep the rows
        return merged.frame

    def customers(self) -> pd.DataFrame | None:
        """The customers the raw store will hold (their time zones not yet assigned)."""
        return self.merges["customers"].frame if "customers" in self.merges else self.stored.get("customers")

    def keep_facts(self, name: str, final: pd.DataFrame | None) -> None:
        """What the entity tables, the report and the as-of need from the event table the store will hold."""
        if final is not None:
            self.store_latest.append(_latest(final["occurred_at"]))
        if name == "email_events":
            self.activity[name] = email_activity(final)
            self.open_counts = open_counts(final)
        elif name == "site_events":
            self.activity[name] = site_activity(final)
        elif name == "offer_events" and final is not None:
            self.conversions = final.loc[final["event"] == "converted", ["event", "offer_id", "value"]]

    def derive(self, warnings: list[str]) -> None:
        """The customers' time zones and the offers' missing margins, from all the data the store will hold."""
        activity = joined_activity([self.activity.get("email_events"), self.activity.get("site_events")])
        self.activity.clear()
        customers = self.merges["customers"]
        customers.frame, self.zone_sources = assign_timezones(customers.frame, activity, warnings)
        if "offers" in self.merges:
            offers = self.merges["offers"]
            offers.frame = impute_margins(offers.frame, self.conversions, warnings)

    def stage_entities(self, name: str) -> None:
        merged, stored, batch = self.merges[name], self.stored[name], self.batches[name]
        count_unchanged(merged, batch.table.key, stored)
        if stored is None or not frames_equal(merged.frame, stored):
            path = raw.table_path(self.settings, name)
            self.staged[path] = raw.stage_parquet(merged.frame, path)
        self.stage_quarantine(batch)
        self.bars.advance(name)
        self.reports[name] = table_report(batch, merged, {"customers": None})

    def stage_quarantine(self, batch: Batch) -> None:
        name = batch.table.name
        quarantine = quarantine_update(self.settings, name, batch.bad, self.started_at)
        if quarantine is not None:
            path = quarantine_path(self.settings, name)
            self.staged[path] = raw.stage_parquet(quarantine, path)

    def discard(self) -> None:
        """Remove the staged files (the ingest stops before its commit)."""
        for temporary in self.staged.values():
            temporary.unlink(missing_ok=True)


def release_memory() -> None:
    """Give the memory of a released table back to the system before the next is loaded: Arrow's pool and the
    C allocator otherwise keep it for reuse, and the next table's peak then comes on top of it."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def read_spilled(path: Path) -> pd.DataFrame:
    """Valid rows set aside by ``TableRun.read_export``, with the dtypes they had (Arrow strings, which Parquet
    holds as large strings, stay Arrow strings)."""
    return pq.read_table(path).to_pandas(types_mapper={pa.large_string(): contract.STRING}.get)


def _latest(times: pd.Series | None) -> pd.Timestamp | None:
    """The latest of ``times`` (None where there are none), as ``asof.latest_of`` takes it."""
    return asof.latest_of([times])


FACT_COLUMNS = {
    "email_events": ["customer_id", "occurred_at", "event", "machine_open"],
    "site_events": ["customer_id", "occurred_at", "event"],
    "offer_events": ["occurred_at", "event", "offer_id", "value"],
}
"""The columns ``TableRun.keep_facts`` reads of an event table the ingest does not change."""


def merge_appended(settings: Settings) -> dict[str, int]:
    """Merge the appended parts into the raw store without an export (`sendwise materialize`), deduped and
    erased customers dropped as an ingest does, the parts removed in the same commit; rows added (customers:
    added or changed) per table."""
    with raw.writer_lock(settings):
        appended.remove_stray_temporaries(settings)
        parts = appended.pending_parts(settings)
        batches: dict[str, Batch] = {}
        add_appended(batches, parts)
        tombstones = Tombstones.read(settings)
        staged: dict[Path, Path] = {}
        added: dict[str, int] = {}
        try:
            for name, batch in batches.items():
                drop_tombstoned(batch, tombstones)
                stored = raw.load_table(settings, name)
                merged = merge(batch, stored)
                if not batch.table.is_event:  # a customers row changes a stored row as often as it adds one
                    count_unchanged(merged, batch.table.key, stored)
                    merged.added += merged.updated
                added[name] = merged.added
                if merged.added:
                    path = raw.table_path(settings, name)
                    staged[path] = raw.stage_parquet(merged.frame, path)
        except BaseException:
            for temporary in staged.values():
                temporary.unlink(missing_ok=True)
            raise
        raw.commit(settings, staged, [p for paths in parts.values() for p in paths])
    return added


def add_appended(batches: dict[str, Batch], parts: dict[str, list[Path]]) -> None:
    """The appended parts' rows (`sendwise.ingest.appended`, already checked) after the export's rows of
    their table, or as a batch of their own where the export has none: merged like the export's."""
    for name, paths in parts.items():
        if name in batches:
            append_parts(batches[name], paths)
        else:
            batches[name] = appended_batch(name, paths)


def _appended_label(name: str, paths: list[Path]) -> str:
    return f"appended/{name} ({len(paths)} parts)"


def append_parts(batch: Batch, paths: list[Path]) -> None:
    """The appended parts' rows after the export's rows of their table."""
    rows = appended.read_parts(paths)
    batch.valid = concat([batch.valid, rows])
    batch.files.append(_appended_label(batch.table.name, paths))
    batch.rows_read += len(rows)


def appended_batch(name: str, paths: list[Path]) -> Batch:
    """The appended parts of a table the export does not have, as a batch of their own."""
    rows = appended.read_parts(paths)
    return Batch(
        table=contract.TABLES[name],
        files=[_appended_label(name, paths)],
        valid=rows,
        bad=pd.DataFrame(),
        reasons=Counter(),
        rows_read=len(rows),
        currencies={},
        unknown_zone_names=0,
    )


def _record_as_of(settings: Settings, data_dir: Path, given: pd.Timestamp | None, run: TableRun) -> pd.Timestamp:
    """Record when the export was taken (``given``, else the data's end) with the raw store; return it."""
    export_latest = _latest_of(run.export_latest)
    as_of_used = given if given is not None else asof.data_end(_latest_of(run.store_latest))
    asof.record_as_of(settings, as_of_used, given is not None, data_dir, export_latest)
    return as_of_used


def _latest_of(times: list[pd.Timestamp | None]) -> pd.Timestamp | None:
    found = [t for t in times if t is not None]
    return max(found) if found else None
