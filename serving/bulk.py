"""Campaign-sized decisions from a file: recipients in, one decision per line out.

A campaign of a million recipients should not need a hundred HTTP calls held open. `sendwise decide` reads the
recipients (CSV, JSON lines or Parquet: a `customer_id` column, and optionally the cold-start context
`timezone`, `country`, `interests` ('|'-separated in CSV) and `attr_*` columns), decides them in batches of
the API's most with the same engine the service uses, and writes one decision per line as JSON (the API's
decision objects, in input order). Every recipient is checked before anything is decided, and the output
appears only when it is complete: a bad row stops the job with its line number, and a failure never leaves a
half-written file under the output name.
"""

from __future__ import annotations

import csv
import gc
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pydantic import TypeAdapter, ValidationError

from serving.engine import Engine, collector_paused, json_lines
from serving.schemas import MAX_RECIPIENTS, Campaign, Constraints, DecideRequest, Recipient

CONTEXT_COLUMNS = ("timezone", "country", "interests")
RECIPIENTS = TypeAdapter(list[Recipient])
BULK_THREADS = 2
"""Batches decided at once by the bulk path (the machine's cores)."""


class BulkInputError(ValueError):
    """The recipients file cannot be decided as it is; the message says where and why."""


@dataclass
class BulkSummary:
    recipients: int
    sent: int
    batches: int
    seconds: float
    output: Path
    status: dict[str, int] = field(default_factory=dict)


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True, dtype=False)
        if suffix in (".csv", ".txt"):
            return pd.read_csv(path, sep=_delimiter(path), dtype=str, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise BulkInputError(f"{path}: cannot be read as {suffix[1:]}: {error}") from error
    raise BulkInputError(f"{path}: give recipients as .csv, .jsonl or .parquet (not {suffix or 'no extension'})")


SNIFF_LINES = 20
"""Lines the delimiter is guessed from: csv.Sniffer's time grows fast with its sample (64 KB of ids: 0.65 s)."""


def _delimiter(path: Path) -> str:
    """The CSV's delimiter among , ; tab and |, from its first lines (a one-column file has none: a comma)."""
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        sample = "".join(line for _, line in zip(range(SNIFF_LINES), handle, strict=False))
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _present(value: object) -> object:
    """A cell's value, or None for an empty one."""
    return None if value is None or value == "" or (isinstance(value, float) and pd.isna(value)) else value


def _interests(value: object) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if value is None or (isinstance(value, float) and pd.isna(value)) or value == "":
        return []
    return [part.strip() for part in str(value).split("|") if part.strip()]


def read_recipients(path: Path) -> list[Recipient]:
    """Every row of the file as a validated recipient, or a BulkInputError naming the first bad row."""
    table = _read_table(path)
    if "customer_id" not in table.columns:
        raise BulkInputError(f"{path}: no customer_id column (columns: {', '.join(map(str, table.columns))})")
    unknown = [
        c for c in table.columns if c not in ("customer_id", *CONTEXT_COLUMNS) and not str(c).startswith("attr_")
    ]
    if unknown:
        raise BulkInputError(
            f"{path}: unknown columns {unknown}: recipients take customer_id, timezone, country, interests and attr_*"
        )
    attributes = [c for c in table.columns if str(c).startswith("attr_")]
    context = [c for c in ("timezone", "country") if c in table.columns]
    cells = {c: table[c].tolist() for c in (*context, *attributes)}
    interests = table["interests"].tolist() if "interests" in table.columns else None
    rows = []
    for i, customer_id in enumerate(table["customer_id"].tolist()):  # only the keys the file has: the rest
        recipient: dict[str, object] = {"customer_id": str(customer_id)}  # take the model's defaults
        for name in context:
            recipient[name] = _present(cells[name][i])
        if interests is not None:
            recipient["interests"] = _interests(interests[i])
        if attributes:
            recipient["attributes"] = {a: cells[a][i] for a in attributes if _present(cells[a][i]) is not None}
        rows.append(recipient)
    try:
        recipients = RECIPIENTS.validate_python(rows)  # the whole file in one call: a tenth of one per row
    except ValidationError as error:
        errors = error.errors()
        index = int(errors[0]["loc"][0])
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in errors if e["loc"][0] == index)
        first = 2 if path.suffix.lower() == ".csv" else 1
        line = "line" if path.suffix.lower() in (".csv", ".jsonl", ".ndjson") else "row"
        raise BulkInputError(f"{path}, {line} {index + first}: {problems}") from error
    if not recipients:
        raise BulkInputError(f"{path}: no recipients")
    return recipients


def decide_file(
    engine: Engine,
    recipients_path: Path,
    out_path: Path,
    request: DecideRequest | None = None,
    batch_size: int = MAX_RECIPIENTS,
    progress: Callable[[int], None] | None = None,
) -> BulkSummary:
    """Decide every recipient of the file with `request`'s campaign, window and constraints (its own
    recipients are ignored); a per-hour cap is a share of each batch, as over HTTP."""
    with collector_paused():  # 100,000s of recipients that live until the end: no cycle among them
        recipients = read_recipients(recipients_path)
        gc.freeze()  # nor need they be walked by every collection while the job runs
    return decide_all(engine, recipients, out_path, request, batch_size, progress)


def decide_all(
    engine: Engine,
    recipients: list[Recipient],
    out_path: Path,
    request: DecideRequest | None = None,
    batch_size: int = MAX_RECIPIENTS,
    progress: Callable[[int], None] | None = None,
) -> BulkSummary:
    """`decide_file` for recipients already read."""
    template = request or DecideRequest(recipients=[Recipient(customer_id="template")])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    started = time.perf_counter()
    sent = batches = 0
    status: dict[str, int] = {}
    chunks = [recipients[first : first + batch_size] for first in range(0, len(recipients), batch_size)]

    def decided(chunk: list[Recipient]) -> tuple[str, int, bytes]:
        with collector_paused():  # until the batch is encoded: its objects go before a collection runs
            answer = engine.decide_payload(template.model_copy(update={"recipients": chunk}))
            decisions: list[dict[str, object]] = answer["decisions"]  # type: ignore[assignment]
            return str(answer["status"]), sum(bool(d["send"]) for d in decisions), json_lines(decisions, "customer_id")

    try:
        # Two batches in flight: while one holds the interpreter, the other's booster call and array work run
        # on the second core. Written in input order; at most two batches' answers are held at once.
        with partial.open("wb") as sink, ThreadPoolExecutor(max_workers=BULK_THREADS) as pool:
            pending = [pool.submit(decided, chunk) for chunk in chunks[:BULK_THREADS]]
            for k, chunk in enumerate(chunks):
                state, sent_here, lines = pending.pop(0).result()
                if k + BULK_THREADS < len(chunks):
                    pending.append(pool.submit(decided, chunks[k + BULK_THREADS]))
                status[state] = status.get(state, 0) + 1
                sent += sent_here
                sink.write(lines)
                batches += 1
                if progress is not None:
                    progress(len(chunk))
        partial.replace(out_path)
    finally:
        partial.unlink(missing_ok=True)
    return BulkSummary(len(recipients), sent, batches, time.perf_counter() - started, out_path, status)


__all__ = ["BulkInputError", "BulkSummary", "Campaign", "Constraints", "decide_all", "decide_file", "read_recipients"]
