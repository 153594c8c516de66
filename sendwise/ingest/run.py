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

from sendwise import asof, contract, keys, raw
from sendwise.ingest import appended, pieces
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
from sendwise.ingest.derive import activity_hours, assign_timezones, email_activity, impute_margins, site_activity
from sendwise.ingest.errors import IngestError
from sendwise.ingest.merge import (
    Merged,
    count_unchanged,
    frames_equal,
    merge,
    quarantine_path,
    quarantine_update,
)
from sendwise.ingest.options import Options, check_options
from sendwise.ingest.progress import ProgressBars, progress_bars
from sendwise.ingest.read import Source, discover
from sendwise.ingest.report import (
    IngestOptions,
    IngestReport,
    TableReport,
    TimeSpan,
    TimezoneCoverage,
    open_counts,
    previous_currency,
    set_open_facts,
    table_report,
    write_report,
)
from sendwise.ingest.spill import spill_folder
from sendwise.settings import Settings
from sendwise.timezones import ActivityHours
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

    The tables are read and validated one at a time, then merged and staged one at a time (``TableRun``): an
    event table's files are read in chunks of ``settings.ingest_chunk_rows`` rows whose valid rows wait in a
    spill folder, and it is merged with the stored table in pieces of about ``settings.ingest_bucket_rows``
    rows (``pieces``); what spans tables (the customers' activity, the offers' conversions, the data's end, the
    currency) is gathered as it goes. The memory an ingest needs is that of its entity tables, a chunk, a piece
    and the quarantined rows, not that of its event tables.
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
    export's order; an event table's valid rows are set aside a chunk at a time in Parquet files (``spill``).
    Then (``merge_all``, under the lock) the entity tables (customers, campaigns, offers: small) are merged
    and kept, and each event table is merged with the stored one in pieces (``pieces.merge_in_pieces``),
    staged and reported, keeping only what the others need of it, gathered from its pieces (``StoreFacts``):
    the customers' human activity (their time zones), the offers' conversions (their margins), and the facts
    of the report and the as-of. Last the entity tables get their zones and margins and are staged. Nothing is
    committed here: the caller commits ``staged`` (and removes the merged appended ``parts``), or ``discard``s
    it.
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
        self.hours: ActivityHours | None = None
        self.conversions: pd.DataFrame | None = None
        self.export_latest: list[pd.Timestamp | None] = []
        self.store_latest: list[pd.Timestamp | None] = []
        self.open_counts: tuple[int, int] | None = None
        self.zone_sources: Counter[str] = Counter()
        self.spilled: dict[str, SpilledRows] = {}

    def read_export(self, sources: dict[str, Source], given_as_of: pd.Timestamp | None, warnings: list[str]) -> None:
        """Every table of the export read and validated; the event tables' valid rows set aside."""
        for name, source in sources.items():
            if not contract.TABLES[name].is_event:
                batch = self.batches[name] = read_table(source, self.options, warnings, self.bars)
                if given_as_of is not None and (found := late_events(given_as_of, batch)):
                    self.late.append(found)
                continue
            spill = SpilledRows(self.spill / name, given_as_of)
            batch = self.batches[name] = read_table(
                source,
                self.options,
                warnings,
                self.bars,
                chunk_rows=self.settings.ingest_chunk_rows,
                valid_rows=spill.add,
            )
            self.spilled[name] = spill
            if spill.after:
                self.late.append((spill.latest, name, spill.after, ", ".join(batch.files)))
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
        self.hours = activity_hours(self.merges["customers"].frame)
        for name in contract.TABLES:
            if contract.TABLES[name].is_event:
                self.events(name)
        self.derive(warnings)
        for name in self.merges:
            self.stage_entities(name)

    def merge_entities(self, name: str) -> None:
        batch = self.batches[name] = entity_batch(
            self.batches.get(name) or _empty_batch(name), self.parts.get(name, [])
        )
        drop_tombstoned(batch, self.tombstones)
        self.stored[name] = raw.load_table(self.settings, name)
        self.merges[name] = merge(batch, self.stored[name])
        self.bars.advance(name)

    def events(self, name: str) -> None:
        """One event table merged in pieces (``pieces.merge_in_pieces``), staged and reported; what the others
        need from it gathered from its pieces."""
        path = raw.table_path(self.settings, name)
        stored = path if path.exists() else None
        if name not in self.order:
            facts = StoreFacts(name, None, self.hours)
            for frame in pieces.stored_pieces(stored, FACT_COLUMNS[name]):
                facts.add(frame)
            self.keep_facts(facts if stored is not None else None)
            return
        facts = StoreFacts(name, self.customers(), self.hours)
        batch = self.batches.get(name) or _empty_batch(name)
        self.batches[name] = batch
        parts = self.parts.get(name, [])
        part_rows = pieces.parquet_rows(parts)
        if parts:
            batch.files.append(_appended_label(name, parts))
            batch.rows_read += part_rows
        spilled = self.spilled.get(name)
        drop_tombstoned(batch, self.tombstones)  # its quarantined rows; the valid ones as they are merged
        merged = pieces.merge_in_pieces(
            batch.table,
            (spilled.files if spilled else []) + parts,
            (spilled.rows if spilled else 0) + part_rows,
            stored,
            self.tombstones,
            self.spill / f"{name}.merge",
            self.settings.ingest_bucket_rows,
            facts.add,
            path,
        )
        batch.forgotten += merged.forgotten
        self.bars.advance(name)
        if merged.staged is not None:
            self.staged[path] = merged.staged
        self.stage_quarantine(batch)
        self.bars.advance(name)
        counts = Merged(pd.DataFrame(), merged.duplicates, merged.added, 0, pd.Index([]))
        self.reports[name] = table_report(batch, counts, {"customers": None})
        span = TimeSpan(
            first=None if merged.first is None else merged.first.to_pydatetime(),
            last=None if merged.last is None else merged.last.to_pydatetime(),
        )
        facts.report(self.reports[name], span)
        self.export_latest.append(merged.last)
        self.keep_facts(facts)
        release_memory()

    def customers(self) -> pd.DataFrame | None:
        """The customers the raw store will hold (their time zones not yet assigned)."""
        return self.merges["customers"].frame if "customers" in self.merges else self.stored.get("customers")

    def keep_facts(self, facts: StoreFacts | None) -> None:
        """What the entity tables, the report and the as-of need from an event table the store will hold (None:
        the store will hold none)."""
        if facts is None:
            return
        name = facts.name
        self.store_latest.append(facts.latest)
        if name == "email_events":
            self.open_counts = facts.opens
        elif name == "offer_events":
            self.conversions = concat(facts.conversions) if facts.conversions else facts.no_conversions()

    def derive(self, warnings: list[str]) -> None:
        """The customers' time zones and the offers' missing margins, from all the data the store will hold."""
        customers = self.merges["customers"]
        assert self.hours is not None
        customers.frame, self.zone_sources = assign_timezones(customers.frame, self.hours, warnings)
        self.hours = None
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


class SpilledRows:
    """Where the reading sets an event table's valid rows aside, a chunk at a time (one Parquet file each), and
    what the as-of check needs of them: how many are after the as-of, and the latest."""

    def __init__(self, folder: Path, as_of: pd.Timestamp | None) -> None:
        self.folder = folder
        self.as_of = as_of
        self.files: list[Path] = []
        self.rows = 0
        self.after = 0
        self.latest: pd.Timestamp | None = None

    def add(self, valid: pd.DataFrame) -> None:
        if valid.empty:
            return
        if self.as_of is not None and "occurred_at" in valid:
            times = valid["occurred_at"]
            self.after += int((times > self.as_of).sum())
            self.latest = _latest_of([self.latest, times.max()])
        self.folder.mkdir(exist_ok=True)
        path = self.folder / f"{len(self.files):06d}.arrow"
        pieces.write_rows(valid, path)
        self.files.append(path)
        self.rows += len(valid)


class StoreFacts:
    """What is derived from an event table the store will hold, gathered from its pieces in the table's order:
    its size, time span and latest event, its events of unknown customers, and what the other tables need (the
    customers' activity, the opens, the offers' conversions)."""

    def __init__(self, name: str, customers: pd.DataFrame | None, hours: ActivityHours | None) -> None:
        self.name = name
        self.hours = hours
        self.known = None if customers is None else keys.value_set(customers["customer_id"])
        self.rows = 0
        self.first: pd.Timestamp | None = None
        self.latest: pd.Timestamp | None = None
        self.unknown_events = 0
        self.unknown_customers: set[str] = set()
        self.opens: tuple[int, int] = (0, 0)
        self.conversions: list[pd.DataFrame] = []

    def add(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return
        self.rows += len(frame)
        times = frame["occurred_at"]
        self.first = _earliest(self.first, times.min())
        self.latest = _latest_of([self.latest, times.max()])
        if self.known is not None and "customer_id" in frame:
            unknown = ~keys.is_in(frame["customer_id"], self.known)
            self.unknown_events += int(unknown.sum())
            self.unknown_customers.update(frame.loc[unknown, "customer_id"].astype(object).unique())
        if self.name == "email_events":
            if self.hours is not None:
                self.hours.add(email_activity(frame))
            opens, machine = open_counts(frame) or (0, 0)
            self.opens = (self.opens[0] + opens, self.opens[1] + machine)
        elif self.name == "site_events":
            if self.hours is not None:
                self.hours.add(site_activity(frame))
        elif self.name == "offer_events":
            self.conversions.append(frame.loc[frame["event"] == "converted", ["event", "offer_id", "value"]])

    def no_conversions(self) -> pd.DataFrame:
        return pd.DataFrame({"event": pd.Series(dtype=object), "offer_id": pd.Series(dtype=object), "value": []})

    def report(self, report: TableReport, span: TimeSpan) -> None:
        """The table's report with what the pieces say of the table the store will hold."""
        report.rows_in_store = self.rows
        report.span = span
        report.store_span = (
            TimeSpan()
            if self.first is None or self.latest is None
            else TimeSpan(first=self.first.to_pydatetime(), last=self.latest.to_pydatetime())
        )
        if self.known is not None:
            report.unknown_customer_events = self.unknown_events
            report.unknown_customers = len(self.unknown_customers)


def entity_batch(batch: Batch, parts: list[Path]) -> Batch:
    """An entity table's batch with its appended parts' rows (customers rows pushed as events, already checked)
    after the export's: merged like them, a later row of a customer winning as the contract says."""
    if parts:
        rows = appended.read_parts(parts)
        batch.valid = concat([batch.valid, rows])
        batch.files.append(_appended_label(batch.table.name, parts))
        batch.rows_read += len(rows)
    return batch


def _empty_batch(name: str) -> Batch:
    """A table the export does not have, whose appended parts are merged (their rows are read as they are)."""
    table = contract.TABLES[name]
    return Batch(table, [], pd.DataFrame(), pd.DataFrame(), Counter(), 0, {}, 0)


def _earliest(a: pd.Timestamp | None, b: pd.Timestamp | None) -> pd.Timestamp | None:
    found = [t for t in (a, b) if t is not None and not pd.isna(t)]
    return min(found) if found else None


def release_memory() -> None:
    """Give the memory of a released table back to the system before the next is loaded: Arrow's pool and the
    C allocator otherwise keep it for reuse, and the next table's peak then comes on top of it."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)


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
    erased customers dropped as an ingest does (event tables in pieces, ``pieces.merge_in_pieces``), the parts
    removed in the same commit; rows added (customers: added or changed) per table."""
    with raw.writer_lock(settings), spill_folder(settings) as work:
        appended.remove_stray_temporaries(settings)
        parts = appended.pending_parts(settings)
        tombstones = Tombstones.read(settings)
        staged: dict[Path, Path] = {}
        added: dict[str, int] = {}
        try:
            for name, paths in parts.items():
                path = raw.table_path(settings, name)
                if not contract.TABLES[name].is_event:  # customers rows pushed as events: a small table, whole
                    batch = entity_batch(_empty_batch(name), paths)
                    drop_tombstoned(batch, tombstones)
                    stored = raw.load_table(settings, name)
                    entity = merge(batch, stored)
                    count_unchanged(entity, batch.table.key, stored)  # a row changes a stored one as often as it adds
                    added[name] = entity.added + entity.updated
                    if added[name]:
                        staged[path] = raw.stage_parquet(entity.frame, path)
                    continue
                merged = pieces.merge_in_pieces(
                    contract.TABLES[name],
                    paths,
                    pieces.parquet_rows(paths),
                    path if path.exists() else None,
                    tombstones,
                    work / name,
                    settings.ingest_bucket_rows,
                    None,
                    path,
                )
                added[name] = merged.added
                if merged.staged is not None:
                    staged[path] = merged.staged
        except BaseException:
            for temporary in staged.values():
                temporary.unlink(missing_ok=True)
            raise
        raw.commit(settings, staged, [p for paths in parts.values() for p in paths])
    return added


def _appended_label(name: str, paths: list[Path]) -> str:
    return f"appended/{name} ({len(paths)} parts)"


def _record_as_of(settings: Settings, data_dir: Path, given: pd.Timestamp | None, run: TableRun) -> pd.Timestamp:
    """Record when the export was taken (``given``, else the data's end) with the raw store; return it."""
    export_latest = _latest_of(run.export_latest)
    as_of_used = given if given is not None else asof.data_end(_latest_of(run.store_latest))
    asof.record_as_of(settings, as_of_used, given is not None, data_dir, export_latest)
    return as_of_used


def _latest_of(times: list[pd.Timestamp | None]) -> pd.Timestamp | None:
    found = [t for t in times if t is not None]
    return max(found) if found else None
