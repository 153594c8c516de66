"""The ingest: options checked, the export discovered, each table read and validated, merged with the raw
store, time zones and margins derived, everything written, and the report returned."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pandas as pd

from sendwise import asof, contract, raw
from sendwise.ingest import appended
from sendwise.ingest.batch import (
    Batch,
    check_currency,
    check_export_as_of,
    concat,
    drop_tombstoned,
    read_table,
    warn_likely_fraction,
)
from sendwise.ingest.derive import assign_timezones, human_activity, impute_margins
from sendwise.ingest.errors import IngestError
from sendwise.ingest.merge import Merged, count_unchanged, frames_equal, merge, quarantine_path, quarantine_update
from sendwise.ingest.options import check_options
from sendwise.ingest.progress import ProgressBars, progress_bars
from sendwise.ingest.read import discover
from sendwise.ingest.report import (
    IngestOptions,
    IngestReport,
    TimezoneCoverage,
    add_open_facts,
    previous_currency,
    table_report,
    write_report,
)
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
            batches = {name: read_table(source, options, warnings, bars) for name, source in sources.items()}
            currency = check_currency(batches, previous_currency(settings))
            if given_as_of is not None:
                check_export_as_of(given_as_of, batches)
            if "offers" in batches:
                warn_likely_fraction(batches["offers"], warnings)

            # one writer, from reading the tombstones and the store to the report: an erasure waits for this
            # ingest, or this ingest for it (and then reads its tombstones)
            held.enter_context(raw.writer_lock(settings))
            appended.remove_stray_temporaries(settings)
            tombstones = Tombstones.read(settings)
            parts = appended.pending_parts(settings)
            add_appended(batches, parts)
            for batch in batches.values():  # erased customers stay erased, whatever old export comes in
                drop_tombstoned(batch, tombstones)
            stored = {name: raw.load_table(settings, name) for name in contract.TABLES}
            merges, zone_sources = _merge(batches, stored, warnings, bars)
            final = {name: merges[name].frame if name in merges else stored[name] for name in contract.TABLES}
            _write(settings, batches, merges, stored, started_at, bars, [p for ps in parts.values() for p in ps])
            as_of_used = _record_as_of(settings, data_dir, given_as_of, batches, final)

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
            tables={name: table_report(batches[name], merges[name], final) for name in batches},
            skipped_tables=[name for name in contract.TABLES if name not in batches],
            timezones=TimezoneCoverage(
                given=zone_sources.get("given", 0),
                country=zone_sources.get("country", 0),
                activity=zone_sources.get("activity", 0),
                unknown=zone_sources.get("unknown", 0),
                unknown_names=batches["customers"].unknown_zone_names,
            ),
            as_of=as_of_used.to_pydatetime(),
            as_of_given=given_as_of is not None,
            warnings=warnings,
        )
        add_open_facts(report, final["email_events"])
        report.seconds = round(time.perf_counter() - clock, 3)
        write_report(settings, report)
    return report


def _merge(
    batches: dict[str, Batch], stored: dict[str, pd.DataFrame | None], warnings: list[str], bars: ProgressBars
) -> tuple[dict[str, Merged], Counter[str]]:
    """Every table of the export merged with the stored one, then the customers' time zones inferred and the
    offers' missing margins filled from all the data the store will hold; and where the zones came from."""
    merges: dict[str, Merged] = {}
    for name, batch in batches.items():
        merges[name] = merge(batch, stored[name])
        bars.advance(name)
    final = {name: merges[name].frame if name in merges else stored[name] for name in contract.TABLES}
    activity = human_activity(final["email_events"], final["site_events"])
    merges["customers"].frame, zone_sources = assign_timezones(merges["customers"].frame, activity, warnings)
    if "offers" in merges:
        merges["offers"].frame = impute_margins(merges["offers"].frame, final["offer_events"], warnings)
    return merges, zone_sources


def _write(
    settings: Settings,
    batches: dict[str, Batch],
    merges: dict[str, Merged],
    stored: dict[str, pd.DataFrame | None],
    started_at: datetime,
    bars: ProgressBars,
    merged_parts: list[Path],
) -> None:
    """Write the raw tables the export changed, and its bad rows to the quarantine, and remove the appended
    parts merged into them, in one commit (all or none: an ingest killed before it changed nothing, and one
    killed during it is finished by the next)."""
    staged: dict[Path, Path] = {}
    try:
        for name, merged in merges.items():
            table = contract.TABLES[name]
            if table.is_event:
                changed = merged.added > 0
            else:
                count_unchanged(merged, table.key, stored[name])
                changed = stored[name] is None or not frames_equal(merged.frame, stored[name])
            if changed:
                path = raw.table_path(settings, name)
                staged[path] = raw.stage_parquet(merged.frame, path)
            quarantine = quarantine_update(settings, name, batches[name].bad, started_at)
            if quarantine is not None:
                path = quarantine_path(settings, name)
                staged[path] = raw.stage_parquet(quarantine, path)
            bars.advance(name)
    except BaseException:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)
        raise
    raw.commit(settings, staged, merged_parts)


def merge_appended(settings: Settings) -> dict[str, int]:
    """Merge the appended parts into the raw store without an export (`sendwise materialize`), deduped and
    erased customers dropped as an ingest does, the parts removed in the same commit; rows added per table."""
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
                merged = merge(batch, raw.load_table(settings, name))
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
        rows = appended.read_parts(paths)
        label = f"appended/{name} ({len(paths)} parts)"
        batch = batches.get(name)
        if batch is None:
            batches[name] = Batch(
                table=contract.TABLES[name],
                files=[label],
                valid=rows,
                bad=pd.DataFrame(),
                reasons=Counter(),
                rows_read=len(rows),
                currencies={},
                unknown_zone_names=0,
            )
            continue
        batch.valid = concat([batch.valid, rows])
        batch.files.append(label)
        batch.rows_read += len(rows)


def _record_as_of(
    settings: Settings,
    data_dir: Path,
    given: pd.Timestamp | None,
    batches: dict[str, Batch],
    final: dict[str, pd.DataFrame | None],
) -> pd.Timestamp:
    """Record when the export was taken (``given``, else the data's end) with the raw store; return it."""
    export_latest = asof.latest_of(
        batches[name].valid.get("occurred_at") for name in asof.EVENT_TABLES if name in batches
    )
    store_latest = asof.latest_of(
        frame["occurred_at"] for name in asof.EVENT_TABLES if (frame := final[name]) is not None
    )
    as_of_used = given if given is not None else asof.data_end(store_latest)
    asof.record_as_of(settings, as_of_used, given is not None, data_dir, export_latest)
    return as_of_used
