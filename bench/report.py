"""The rows of the benchmark table: a measured value, its target beside it, and PASS or MISS."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from rich.table import Table

Bound = Literal["at least", "at most"]


@dataclass(frozen=True)
class Target:
    """A bound on a measured value, in the row's unit: `at least` or `at most` `value`."""

    bound: Bound
    value: float
    text: str

    def met(self, measured: float) -> bool:
        return measured >= self.value if self.bound == "at least" else measured <= self.value


@dataclass(frozen=True)
class Row:
    """One line of the table.

    `value` is what the target is compared with (None when the benchmark could not measure it); `shown` is how
    the value is printed. `judged` is False when the run's conditions are not the target's (a quick run's
    smaller online store, say): the row shows the target but neither PASS nor MISS.
    """

    section: str
    benchmark: str
    value: float | None
    shown: str
    target: Target | None = None
    note: str = ""
    judged: bool = True

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "ERROR"
        if self.target is None:
            return ""
        if not self.judged:
            return "n/a"
        return "PASS" if self.target.met(self.value) else "MISS"


def error_rows(section: str, error: BaseException) -> list[Row]:
    """A section that failed still gets a line, saying why."""
    message = f"{type(error).__name__}: {error}"
    return [Row(section, "could not run", None, "—", note=message[:300])]


_STYLE = {"PASS": "bold green", "MISS": "bold red", "ERROR": "bold red", "n/a": "yellow", "": ""}


def table(rows: Sequence[Row], title: str, caption: str) -> Table:
    """The rows as one rich table, sections in order."""
    out = Table(title=title, caption=caption, caption_justify="left", show_lines=False)
    out.add_column("section", style="bold")
    out.add_column("benchmark")
    out.add_column("measured", justify="right")
    out.add_column("target", justify="right")
    out.add_column("result", justify="center")
    out.add_column("how it was measured", overflow="fold", max_width=70)
    previous = None
    for row in rows:
        if previous is not None and row.section != previous:
            out.add_section()
        verdict = row.verdict
        out.add_row(
            row.section if row.section != previous else "",
            row.benchmark,
            row.shown,
            row.target.text if row.target else "",
            f"[{_STYLE[verdict]}]{verdict}[/]" if verdict else "",
            row.note,
        )
        previous = row.section
    return out


def write_json(rows: Sequence[Row], path: Path, context: dict[str, object]) -> None:
    """Every row (and the run's context) as JSON, to compare runs without parsing the table."""
    records = [{**asdict(row), "verdict": row.verdict} for row in rows]
    path.write_text(json.dumps({"context": context, "rows": records}, indent=2, default=str))


def rate(value: float) -> str:
    return f"{value:,.0f}/s" if value >= 100 else f"{value:,.1f}/s"


def seconds(value: float) -> str:
    if value >= 1:
        return f"{value:,.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:,.1f} ms"
    return f"{value * 1e6:,.0f} µs"


def gigabytes(value: float) -> str:
    """Bytes in decimal gigabytes, the unit of the memory target."""
    return f"{value / 1e9:,.2f} GB"
