"""Campaign-sized decisions from a file: recipients in, one decision per line out.

A campaign of a million recipients should not need a hundred HTTP calls held open. `sendwise decide` reads the
recipients (CSV, JSON lines or Parquet: a `customer_id` column, and optionally the cold-start context
`timezone`, `country`, `interests` ('|'-separated in CSV) and `attr_*` columns), decides them in batches with
the same engine the service uses, in one worker process per core (forked from the one that loaded the
engine), and writes one decision per line as JSON (the API's decision objects, in input order). Every
recipient is checked before anything is decided, and the output appears only when it is complete: a bad row
stops the job with its line number, and a failure never leaves a half-written file under the output name.
"""

from __future__ import annotations

import csv
import gc
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import BinaryIO

import pandas as pd
from pydantic import TypeAdapter, ValidationError

from serving.decision_log import json_lines
from serving.engine import Engine, collector_paused
from serving.schemas import Campaign, Constraints, DecideRequest, Recipient

CONTEXT_COLUMNS = ("timezone", "country", "interests")
RECIPIENTS = TypeAdapter(list[Recipient])
BULK_THREADS = 2
"""Batches in flight when one process decides them."""
BULK_BATCH = 5_000
"""Recipients a worker decides at once: half the API's most, which leaves each batch less fresh memory to fault in
(the job ran 10-15% faster than with batches of 10,000 on 2 cores)."""
WARM_RECIPIENTS = 1_000
"""The first batch, decided before the worker processes fork: what it reads once, they inherit."""


class BulkInputError(ValueError):
    """The recipients file cannot be decided as it is; the message says where and why."""


class BulkError(RuntimeError):
    """The job stopped before its output was complete (nothing was written under the output name)."""


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
    batch_size: int = BULK_BATCH,
    progress: Callable[[int], None] | None = None,
    processes: int | None = None,
) -> BulkSummary:
    """Decide every recipient of the file with `request`'s campaign, window and constraints (its own
    recipients are ignored); a per-hour cap is a share of each batch, as over HTTP."""
    with collector_paused():  # 100,000s of recipients that live until the end: no cycle among them
        recipients = read_recipients(recipients_path)
        gc.freeze()  # nor need they be walked by every collection while the job runs
    return decide_all(engine, recipients, out_path, request, batch_size, progress, processes)


def default_processes() -> int:
    """Worker processes for a bulk job: one per core this process may run on, where processes can fork."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 1)


@dataclass
class _Job:
    """What a bulk job's batches are decided from; forked workers inherit it instead of receiving it."""

    engine: Engine
    recipients: list[Recipient]
    template: DecideRequest


_job: _Job | None = None
_job_lock = threading.Lock()  # one bulk job at a time in a process: its workers read `_job`


def _current_job() -> _Job:
    """The job this process decides for (a worker inherits it from the parent that forked it)."""
    if _job is None:
        raise RuntimeError("a bulk batch was decided outside its job: `decide_all` sets the job before any batch")
    return _job


def _decide_range(first: int, last: int, part: Path) -> tuple[str, int]:
    """Decide the job's recipients first..last as one batch and write their JSON lines to `part`:
    (the answer's status, how many are sent)."""
    job = _current_job()
    with collector_paused():  # until the batch is encoded: its objects go before a collection runs
        request = job.template.model_copy(update={"recipients": job.recipients[first:last]})
        answer = job.engine.decide_payload(request)
        decisions = answer["decisions"]
        if not isinstance(decisions, list):
            raise TypeError(f"the engine answered decisions of type {type(decisions).__name__}, not a list")
        part.write_bytes(json_lines(decisions, "customer_id"))
        return str(answer["status"]), sum(bool(d["send"]) for d in decisions)


def _worker_started() -> None:
    _current_job().engine.after_fork()


def _ranges(total: int, batch_size: int, workers: int) -> list[tuple[int, int]]:
    """The job's batches: a first one of at most WARM_RECIPIENTS, then the rest in equal batches of at most
    `batch_size`, as many as a multiple of `workers` (no worker left alone with a last, larger batch)."""
    warm = min(WARM_RECIPIENTS, batch_size, total)
    rest = total - warm
    count = -(-rest // batch_size)
    count = -(-count // workers) * workers if count > 1 else count
    bounds = [warm + rest * k // count for k in range(count + 1)] if count else [warm]
    return [(0, warm), *pairwise(bounds)]


def _append(sink: BinaryIO, part: Path) -> None:
    """Append the file `part` to `sink` (in the kernel where it can) and remove it."""
    sink.flush()
    with part.open("rb") as source:
        left = os.fstat(source.fileno()).st_size
        try:
            while left > 0:
                copied = os.copy_file_range(source.fileno(), sink.fileno(), left)
                if copied == 0:
                    break
                left -= copied
        except OSError:  # a file system without it: the rest through user space, from where the kernel stopped
            pass
        sink.seek(0, os.SEEK_END)  # copy_file_range moved the descriptor's offset, not the file object's
        if left > 0:
            shutil.copyfileobj(source, sink)
    part.unlink()


def decide_all(
    engine: Engine,
    recipients: list[Recipient],
    out_path: Path,
    request: DecideRequest | None = None,
    batch_size: int = BULK_BATCH,
    progress: Callable[[int], None] | None = None,
    processes: int | None = None,
) -> BulkSummary:
    """`decide_file` for recipients already read. `processes` (default: one per core) decide batches side by
    side: building decisions as Python data holds the interpreter, so threads of one process share one core."""
    global _job
    template = request or DecideRequest(recipients=[Recipient(customer_id="template")])
    workers = default_processes() if processes is None else max(processes, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    ranges = _ranges(len(recipients), batch_size, workers)
    parts = [partial.with_name(f"{partial.name}.{k}") for k in range(len(ranges))]
    started = time.perf_counter()
    summary = BulkSummary(len(recipients), 0, 0, 0.0, out_path)

    def write(sink: BinaryIO, result: tuple[str, int], k: int) -> None:
        state, sent = result
        summary.status[state] = summary.status.get(state, 0) + 1
        summary.sent += sent
        summary.batches += 1
        _append(sink, parts[k])
        if progress is not None:
            progress(ranges[k][1] - ranges[k][0])

    with _job_lock:
        _job = _Job(engine, recipients, template)
        try:
            with partial.open("wb") as sink:
                # The first, smaller batch is decided here before any worker starts: it reads once what every
                # batch needs (the curve table, the window's offers), and a job of one batch starts none.
                write(sink, _decide_range(*ranges[0], parts[0]), 0)
                if len(ranges) > 1:
                    pool, window = _pool(workers if len(ranges) > 2 else 1)
                    try:  # written in input order; at most `window` batches wait to be appended
                        pending = [
                            pool.submit(_decide_range, *ranges[k], parts[k])
                            for k in range(1, window + 1)
                            if k < len(ranges)
                        ]
                        for k in range(1, len(ranges)):
                            result = pending.pop(0).result()
                            if k + window < len(ranges):
                                pending.append(pool.submit(_decide_range, *ranges[k + window], parts[k + window]))
                            write(sink, result, k)
                    finally:  # on a failure, batches not yet started are not started
                        pool.shutdown(wait=True, cancel_futures=True)
            partial.replace(out_path)
        except BrokenProcessPool as error:
            raise BulkError(
                "a worker process of the bulk job died (killed for memory?); nothing was written: "
                f"run it again with fewer --processes ({error})"
            ) from error
        finally:
            _job = None
            for part in (partial, *parts):
                part.unlink(missing_ok=True)
    summary.seconds = time.perf_counter() - started
    return summary


def _pool(workers: int) -> tuple[Executor, int]:
    """(the executor, how many batches it is given at once). Threads when one process decides: one batch's
    booster call runs while the other holds the interpreter. Else forked worker processes, two batches each
    queued: each inherits the loaded engine and the recipients instead of reading them again, and predicts on
    one thread (LightGBM's OpenMP threads do not survive a fork)."""
    if workers == 1:
        return ThreadPoolExecutor(max_workers=BULK_THREADS), BULK_THREADS
    fork = multiprocessing.get_context("fork")
    return ProcessPoolExecutor(max_workers=workers, mp_context=fork, initializer=_worker_started), 2 * workers


__all__ = [
    "BulkError",
    "BulkInputError",
    "BulkSummary",
    "Campaign",
    "Constraints",
    "decide_all",
    "decide_file",
    "default_processes",
    "read_recipients",
]
