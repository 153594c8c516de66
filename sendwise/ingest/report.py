"""The ingest report: what each table's export brought, the top quarantine reasons and the data's facts.

Every ingest prints it (`IngestReport.to_text`) and stores it as JSON under `reports_dir / "ingest"`.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Literal

import pandas as pd
from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table as RichTable

from sendwise import asof, raw
from sendwise.ingest.batch import Batch
from sendwise.ingest.merge import Merged
from sendwise.settings import Settings

TOP_REASONS = 5


class ReasonCount(BaseModel):
    """A quarantine reason and how many rows it stopped."""

    reason: str
    rows: int


class TimeSpan(BaseModel):
    """The first and last time stamp of a table (UTC)."""

    first: datetime | None = None
    last: datetime | None = None

    def text(self) -> str:
        if self.first is None or self.last is None:
            return "-"
        return f"{self.first:%Y-%m-%d %H:%M} – {self.last:%Y-%m-%d %H:%M} UTC"


class TableReport(BaseModel):
    """What one table's export brought. ``accepted`` = ``rows_read`` − ``duplicates`` − ``quarantined``."""

    table: str
    files: list[str]
    rows_read: int
    accepted: int
    duplicates: int = Field(description="valid rows that changed nothing: already stored, or superseded")
    quarantined: int
    forgotten: int = Field(default=0, description="rows of erased customers (tombstoned), dropped and not stored")
    top_reasons: list[ReasonCount] = Field(default_factory=list)
    added: int = Field(description="rows new to the raw store")
    updated: int = Field(default=0, description="stored customers, campaigns or offers replaced by a newer row")
    rows_in_store: int
    span: TimeSpan = Field(default_factory=TimeSpan, description="time span of the rows read and accepted")
    store_span: TimeSpan = Field(default_factory=TimeSpan, description="time span of the raw table")
    unknown_customer_events: int | None = Field(
        default=None, description="events in the raw table whose customer is not (yet) a known customer"
    )
    unknown_customers: int | None = None


class TimezoneCoverage(BaseModel):
    """Where the zones of the customers in the raw store come from (``sendwise.timezones``)."""

    given: int = 0
    country: int = 0
    activity: int = 0
    unknown: int = 0
    unknown_names: int = Field(default=0, description="given names zoneinfo does not know (treated as missing)")


class IngestOptions(BaseModel):
    """The options an ingest ran with, as given."""

    assume_tz: str | None = None
    profiling_consent: Literal["granted", "denied"] | None = None
    csv_delimiter: str | None = None
    decimal_comma: bool = False
    as_of: datetime | None = None


class IngestReport(BaseModel):
    """The report every ingest prints and stores under ``reports_dir / "ingest"``."""

    data_dir: str
    home: str
    started_at: datetime
    seconds: float
    options: IngestOptions
    currency: str | None = None
    tables: dict[str, TableReport]
    skipped_tables: list[str] = Field(description="optional tables absent from this export")
    opens: int = 0
    machine_opens: int = 0
    machine_open_share: float | None = Field(
        default=None, description="share of the opens in the raw store flagged machine_open by the ESP"
    )
    timezones: TimezoneCoverage = Field(default_factory=TimezoneCoverage)
    as_of: datetime | None = Field(
        default=None,
        description="when the export was taken: --as-of where given, else the data's end (the hour after the "
        "raw store's latest event); recorded with the raw store for the feature build",
    )
    as_of_given: bool = False
    warnings: list[str] = Field(default_factory=list)
    report_file: str | None = None

    def to_text(self) -> str:
        """The report as plain text (rich tables), for the console."""
        buffer = io.StringIO()
        console = Console(file=buffer, width=120, color_system=None, force_terminal=False)
        console.print(f"Ingest of {self.data_dir} into {self.home} ({self.seconds:.1f} s)")
        counts = RichTable(title="Tables", title_justify="left")
        for name in (
            "table",
            "read",
            "accepted",
            "duplicates",
            "quarantined",
            "added",
            "updated",
            "in store",
        ):
            counts.add_column(name, justify="left" if name == "table" else "right")
        counts.add_column("time span (accepted rows)")
        for table in self.tables.values():
            counts.add_row(
                table.table,
                *(
                    f"{value:,}"
                    for value in (
                        table.rows_read,
                        table.accepted,
                        table.duplicates,
                        table.quarantined,
                        table.added,
                        table.updated,
                        table.rows_in_store,
                    )
                ),
                table.span.text(),
            )
        console.print(counts)
        reasons = [(t.table, r) for t in self.tables.values() for r in t.top_reasons]
        if reasons:
            quarantine = RichTable(title="Top quarantine reasons", title_justify="left")
            quarantine.add_column("table")
            quarantine.add_column("reason")
            quarantine.add_column("rows", justify="right")
            for table_name, reason in reasons:
                quarantine.add_row(table_name, reason.reason, f"{reason.rows:,}")
            console.print(quarantine)
        facts = RichTable(title="Data facts", title_justify="left", show_header=False)
        facts.add_column("fact")
        facts.add_column("value")
        for table in self.tables.values():
            if table.unknown_customer_events is not None:
                facts.add_row(
                    f"{table.table}: events of unknown customers (kept)",
                    f"{table.unknown_customer_events:,} ({table.unknown_customers or 0:,} customers)",
                )
        forgotten = {t.table: t.forgotten for t in self.tables.values() if t.forgotten}
        if forgotten:
            facts.add_row(
                "rows of erased customers (dropped)",
                ", ".join(f"{name} {count:,}" for name, count in forgotten.items()),
            )
        if self.machine_open_share is not None:
            facts.add_row(
                "opens flagged as machine opens",
                f"{self.machine_open_share:.1%} ({self.machine_opens:,} of {self.opens:,})",
            )
        zones = self.timezones
        facts.add_row(
            "customer time zones",
            f"given {zones.given:,}, from country {zones.country:,}, from activity hours {zones.activity:,}, "
            f"unknown (UTC) {zones.unknown:,}",
        )
        facts.add_row("currency", self.currency or "not given")
        if self.as_of is not None:
            how = "given with --as-of" if self.as_of_given else "the data's end: no --as-of given"
            facts.add_row("export taken (as-of)", f"{asof.text(pd.Timestamp(self.as_of))} ({how})")
        facts.add_row("skipped tables (not in this export)", ", ".join(self.skipped_tables) or "none")
        console.print(facts)
        for warning in self.warnings:
            console.print(f"warning: {warning}", markup=False)
        if self.report_file:
            console.print(f"report: {self.report_file}", markup=False)
        return buffer.getvalue()


def previous_currency(settings: Settings) -> str | None:
    """The currency the home's last ingest recorded, if any."""
    latest = settings.reports_dir / "ingest" / "latest.json"
    if not latest.exists():
        return None
    try:
        return IngestReport.model_validate_json(latest.read_text(encoding="utf-8")).currency
    except ValueError:
        return None


def write_report(settings: Settings, report: IngestReport) -> None:
    """Store the report as ``<started_at>.json`` and ``latest.json`` under ``reports_dir / "ingest"``."""
    folder = settings.reports_dir / "ingest"
    stamp = report.started_at.strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"{stamp}.json"
    report.report_file = str(path)
    text = report.model_dump_json(indent=2)
    raw.write_text_atomic(text, path)
    raw.write_text_atomic(text, folder / "latest.json")


def table_report(batch: Batch, merged: Merged, final: dict[str, pd.DataFrame | None]) -> TableReport:
    """What one table's export brought, and the raw table it left."""
    table = batch.table
    quarantined = len(batch.bad)
    report = TableReport(
        table=table.name,
        files=batch.files,
        rows_read=batch.rows_read,
        accepted=batch.rows_read - quarantined - merged.duplicates - batch.forgotten,
        duplicates=merged.duplicates,
        quarantined=quarantined,
        forgotten=batch.forgotten,
        top_reasons=[ReasonCount(reason=r, rows=n) for r, n in batch.reasons.most_common(TOP_REASONS)],
        added=merged.added,
        updated=merged.updated,
        rows_in_store=len(merged.frame),
        span=_span(batch.valid, table.time_columns),
        store_span=_span(merged.frame, table.time_columns),
    )
    customers = final["customers"]
    if table.is_event and customers is not None:
        unknown = ~merged.frame["customer_id"].isin(customers["customer_id"])
        report.unknown_customer_events = int(unknown.sum())
        report.unknown_customers = int(merged.frame.loc[unknown, "customer_id"].nunique())
    return report


def _span(frame: pd.DataFrame | None, columns: tuple[str, ...]) -> TimeSpan:
    if frame is None or frame.empty or not columns:
        return TimeSpan()
    lows = [frame[c].min() for c in columns]
    highs = [frame[c].max() for c in columns]
    lows = [v for v in lows if pd.notna(v)]
    highs = [v for v in highs if pd.notna(v)]
    if not lows:
        return TimeSpan()
    return TimeSpan(first=min(lows).to_pydatetime(), last=max(highs).to_pydatetime())


def add_open_facts(report: IngestReport, email_events: pd.DataFrame | None) -> None:
    """Opens in the raw store, and the share the ESP flagged as machine opens."""
    set_open_facts(report, open_counts(email_events))


def open_counts(email_events: pd.DataFrame | None) -> tuple[int, int] | None:
    """The opens in ``email_events`` and how many of them the ESP flagged as machine opens (None: no table)."""
    if email_events is None:
        return None
    opens = email_events["event"] == "open"
    return int(opens.sum()), int((opens & email_events["machine_open"].fillna(False)).sum())


def set_open_facts(report: IngestReport, counts: tuple[int, int] | None) -> None:
    """The report's open facts from ``open_counts``."""
    if counts is None:
        return
    report.opens, report.machine_opens = counts
    report.machine_open_share = report.machine_opens / report.opens if report.opens else None
