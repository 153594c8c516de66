"""The ingest's options (`sendwise ingest`'s flags), checked before any file is read."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass

from sendwise.ingest.errors import IngestError

CSV_DELIMITERS = {",": ",", ";": ";", "\t": "\t", "tab": "\t", "\\t": "\t"}


@dataclass(frozen=True)
class Options:
    """The flags as the readers and the validation use them (consent as a boolean, the delimiter as a character)."""

    assume_tz: str | None
    profiling_consent: bool | None
    csv_delimiter: str | None
    decimal_comma: bool


def check_options(
    assume_tz: str | None, profiling_consent: str | None, csv_delimiter: str | None, decimal_comma: bool
) -> Options:
    """The flags checked and normalized; a flag that cannot be used is an ``IngestError``."""
    if assume_tz is not None:
        try:
            zoneinfo.ZoneInfo(assume_tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
            raise IngestError(
                f"--assume-tz {assume_tz!r} is not a time zone that zoneinfo knows; give a zone name such as "
                "Europe/Berlin, America/New_York or UTC."
            ) from error
    if profiling_consent not in (None, "granted", "denied"):
        raise IngestError(f"--profiling-consent {profiling_consent!r}: expected 'granted' or 'denied'.")
    delimiter = None
    if csv_delimiter is not None:
        delimiter = CSV_DELIMITERS.get(csv_delimiter.lower() if len(csv_delimiter) > 1 else csv_delimiter)
        if delimiter is None:
            raise IngestError(
                f"--csv-delimiter {csv_delimiter!r}: expected one of ',', ';' or 'tab' (a tab character)."
            )
    consent = None if profiling_consent is None else profiling_consent == "granted"
    return Options(assume_tz, consent, delimiter, decimal_comma)
