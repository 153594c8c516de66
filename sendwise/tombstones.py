"""Erased customers' tombstones, and their erasure from the raw store and the quarantine.

A tombstone is a salted SHA-256 of a customer id: the home keeps it so that re-ingesting an old export does
not bring an erased customer back (ingest drops their rows and counts them), without keeping the id itself.
The salt is random, made on the first erasure and kept in the home (`privacy/salt`), so the hashes of a home
cannot be matched against a list of guessed ids elsewhere. Tombstones are one hex digest a line in
`privacy/tombstones.txt`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from sendwise import contract, raw
from sendwise.settings import Settings

CUSTOMER_KEY = "customer_id"


def privacy_dir(settings: Settings) -> Path:
    return settings.home / "privacy"


def _salt_path(settings: Settings) -> Path:
    return privacy_dir(settings) / "salt"


def _tombstones_path(settings: Settings) -> Path:
    return privacy_dir(settings) / "tombstones.txt"


def salt(settings: Settings, create: bool = False) -> bytes | None:
    """The home's salt (None where nothing was ever erased and `create` is not set)."""
    path = _salt_path(settings)
    if path.exists():
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_bytes(32)
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        pass
    else:
        with os.fdopen(handle, "w", encoding="ascii") as file:
            file.write(value.hex() + "\n")
    return bytes.fromhex(path.read_text(encoding="ascii").strip())


def tombstone(salt_value: bytes, customer_id: str) -> str:
    """The tombstone of one customer id: hex SHA-256 of the salt and the id."""
    return hashlib.sha256(salt_value + str(customer_id).encode("utf-8")).hexdigest()


class Tombstones:
    """The tombstones of a home: whether an id, or which rows of a frame, belong to an erased customer."""

    def __init__(self, salt_value: bytes | None, hashes: set[str]) -> None:
        self.salt = salt_value
        self.hashes = hashes

    @classmethod
    def read(cls, settings: Settings) -> Tombstones:
        path = _tombstones_path(settings)
        hashes = set(path.read_text(encoding="ascii").split()) if path.exists() else set()
        return cls(salt(settings), hashes)

    def __len__(self) -> int:
        return len(self.hashes)

    def matches(self, ids: pd.Series) -> pd.Series:
        """A boolean per id: True where the id is tombstoned (missing ids never are)."""
        if self.salt is None or not self.hashes or ids.empty:
            return pd.Series(False, index=ids.index)
        salt_value, hashes = self.salt, self.hashes
        hashed = ids.astype(str).map(lambda v: tombstone(salt_value, v) in hashes).astype(bool)
        return ids.notna() & hashed


def add_tombstones(settings: Settings, customer_ids: Iterable[str]) -> int:
    """Record the ids' tombstones (once each); how many were new."""
    salt_value = salt(settings, create=True)
    assert salt_value is not None
    known = Tombstones.read(settings).hashes
    new = sorted({tombstone(salt_value, c) for c in customer_ids} - known)
    if new:
        path = _tombstones_path(settings)
        with path.open("a", encoding="ascii") as file:
            file.write("".join(f"{h}\n" for h in new))
            file.flush()
            os.fsync(file.fileno())
    return len(new)


def last_erasure(settings: Settings) -> datetime | None:
    """When customers were last erased from this home (the tombstones' last change), or None."""
    path = _tombstones_path(settings)
    return datetime.fromtimestamp(path.stat().st_mtime, UTC) if path.exists() else None


def drop_customers(frame: pd.DataFrame, customer_ids: set[str], column: str = CUSTOMER_KEY) -> pd.DataFrame:
    """`frame` without the rows of `customer_ids` (compared as text: a quarantined id may not be a string)."""
    if column not in frame.columns:
        return frame
    ids = frame[column]
    hit = ids.notna() & ids.astype(str).isin(customer_ids)
    return frame.loc[~hit].reset_index(drop=True)


def erase_parquet(path: Path, customer_ids: set[str], column: str = CUSTOMER_KEY) -> int:
    """Rewrite one Parquet file without the customers' rows; how many rows went (0: the file is untouched)."""
    if not path.exists():
        return 0
    frame = pd.read_parquet(path)
    kept = drop_customers(frame, customer_ids, column)
    removed = len(frame) - len(kept)
    if removed:
        raw.write_parquet_atomic(kept, path)
    return removed


def erase_raw(settings: Settings, customer_ids: set[str]) -> dict[str, int]:
    """Remove the customers' rows from every raw table, quarantine file and appended part not merged yet (events
    `sendwise.ingest.appended` wrote); rows removed per file."""
    removed: dict[str, int] = {}
    for name in contract.TABLES:
        for folder, path in (("raw", raw.table_path(settings, name)), ("quarantine", settings.quarantine_dir)):
            target = path if folder == "raw" else path / f"{name}.parquet"
            count = erase_parquet(target, customer_ids)
            if count:
                removed[f"{folder}/{name}"] = count
        for part in sorted((settings.raw_dir / "appended" / name).glob("[!.]*.parquet")):  # not merged yet
            count = erase_parquet(part, customer_ids)
            if count:
                removed[f"appended/{name}"] = removed.get(f"appended/{name}", 0) + count
    return removed
