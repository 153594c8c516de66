"""The error that stops an ingest before anything is written."""

from __future__ import annotations


class IngestError(ValueError):
    """A whole-file problem: nothing was ingested. The message says which file, what and what to do."""
