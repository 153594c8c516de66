"""Ingest: read data-contract files, validate them, quarantine bad rows, merge into the raw store, report.

What a valid row is comes from ``sendwise.contract``; this package applies it, vectorized (pandas and Arrow,
no Python loop over the rows of the big tables), and decides nothing of its own beyond what the contract and
``docs/architecture.md`` say. Whole-file problems raise ``IngestError`` before anything is written; bad rows
go to ``settings.quarantine_dir / f"{table}.parquet"`` with their reason, and the rest is ingested.

Merging with what the raw store already holds (so that re-ingesting the same files changes nothing and a later
export adds to what is there):

- events: deduplicated by ``event_id``, the row already stored wins; a missing ``event_id`` is replaced by
  ``h-`` + the SHA-1 of the row's contract columns (normalized, in contract order), so identical rows of an
  export without ids count as one event, re-delivered;
- customers: the row with the latest ``updated_at`` wins (a row without one loses to a row with one); on a
  tie, or where no row has one, the later row wins: later in file order (parts in name order), and a row of
  this export is later than the stored one;
- campaigns and offers: the later row wins, in the same order.

Time zones that were inferred are inferred again at every ingest, from all the data then in the store.

One ingest writes at a time (``sendwise.raw.writer_lock``, from reading the store to the report), and its raw
tables and quarantine change in one commit (``sendwise.raw.commit``): an ingest killed at any moment leaves the
store as it was or as the ingest makes it, and running it again ends with every row exactly once.

The parts, each changing for a reason of its own: ``options`` (the flags), ``read`` (the layout of an export,
CSV and Parquet), ``parse`` (values: numbers, time stamps), ``validate`` (a file's rows against the contract,
the quarantine's rows), ``batch`` (one table's files together, the checks across tables), ``merge`` (with the
raw store and the quarantine), ``derive`` (time zones, margins), ``report`` and ``run`` (the ingest itself).
"""

from sendwise.ingest.errors import IngestError
from sendwise.ingest.report import IngestReport
from sendwise.ingest.run import ingest

__all__ = ["IngestError", "IngestReport", "ingest"]
