"""Erasure: everything a home holds of some customers removed, and a tombstone kept so they stay removed.

`forget_customers` is what `sendwise forget` and `POST /v1/forget` do. In order: the tombstones first (an
ingest that runs meanwhile already drops the customers' rows), then the raw store and the quarantine, the
feature tables (Feast's offline sources, and what the engine's snapshot reads), Feast's SQLite online store,
the decision log (its lines, with what rendering needed, and its index), and the reports that name them.
With Redis (`SENDWISE_ONLINE_STORE=redis`) the customers' keys go from it too: Feast's online rows (Feast's
key of each customer's entity) and the send history and decisions replicas share (`serving.history_store`).
SQLite files are vacuumed so that no deleted page keeps a copy. A running engine reads its snapshot again
(`Engine.forget`); models already trained keep what they learned until the next pipeline run retrains them
without these customers (README, Privacy).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _redis_key
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from sendwise.raw import writer_lock
from sendwise.settings import Settings
from sendwise.tombstones import CUSTOMER_KEY, add_tombstones, erase_parquet, erase_raw
from serving.decision_log import DecisionLog
from serving.history_store import SharedHistory

MAX_IDS = 10_000
"""Customer ids one `POST /v1/forget` may name (the CLI sends a longer file in parts)."""


class ForgetError(ValueError):
    """The ids given cannot be forgotten as they are (none, or an empty one)."""


@dataclass
class ForgetReport:
    """What one erasure removed: counts only, never the ids."""

    customers: int
    new_tombstones: int
    rows: dict[str, int] = field(default_factory=dict)  # "raw/<table>", "quarantine/<table>", "feature_tables/..."
    online_rows: int = 0
    decisions: int = 0
    reports: list[str] = field(default_factory=list)  # report files removed (paths relative to the home)

    def as_dict(self) -> dict[str, object]:
        return {
            "customers": self.customers,
            "new_tombstones": self.new_tombstones,
            "rows": dict(sorted(self.rows.items())),
            "online_rows": self.online_rows,
            "decisions": self.decisions,
            "reports": self.reports,
        }


def clean_ids(customer_ids: Iterable[str]) -> set[str]:
    """The ids as a set of stripped strings; an empty id is an error (it would match nothing and hide a typo)."""
    found = set()
    for position, value in enumerate(customer_ids):
        text = str(value).strip()
        if not text:
            raise ForgetError(f"customer_ids[{position}]: an empty id")
        found.add(text)
    if not found:
        raise ForgetError("customer_ids: no customer id given")
    return found


def forget_customers(settings: Settings, customer_ids: Iterable[str], log: DecisionLog | None = None) -> ForgetReport:
    """Erase `customer_ids` from the home of `settings` (see the module's docstring); counts of what went.
    `log` is the running engine's decision log, so that its appends and the rewrite take turns."""
    ids = clean_ids(customer_ids)
    with writer_lock(settings):  # an ingest running now finishes first, or reads these tombstones
        report = ForgetReport(customers=len(ids), new_tombstones=add_tombstones(settings, ids))
        report.rows.update(erase_raw(settings, ids))
    for folder in (settings.feature_tables_dir, settings.training_sets_dir):
        for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
            removed = erase_parquet(path, ids)
            if removed:
                report.rows[f"{folder.name}/{path.name}"] = removed
    report.online_rows = erase_online(settings, ids)
    if settings.online_store == "redis":
        report.online_rows += erase_feast_redis(settings, ids)
        report.rows["redis/history"] = SharedHistory(settings).erase(ids)
    report.decisions = (log or DecisionLog()).erase(settings.decisions_dir, ids)
    report.reports = erase_reports(settings, ids)
    return report


def _feast_config(settings: Settings) -> dict[str, Any] | None:
    """The home's `feature_store.yaml`, or None before Feast was set up."""
    config_path = settings.feast_dir / "feature_store.yaml"
    if not config_path.exists():
        return None
    return yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}


def _customer_entity(customer_id: str) -> EntityKey:
    return EntityKey(join_keys=[CUSTOMER_KEY], entity_values=[Value(string_val=customer_id)])


def online_store_path(settings: Settings) -> tuple[Path | None, int]:
    """Feast's SQLite online store of the home (None with another store, or before any materialization) and
    the entity key serialization version its repository uses."""
    config = _feast_config(settings)
    if config is None:
        return None, 3
    version = int(config.get("entity_key_serialization_version", 3))
    online = config.get("online_store") or {}
    if online.get("type", "sqlite") != "sqlite":
        return None, version
    path = Path(online.get("path") or settings.feast_dir / "online.db")
    if not path.is_absolute():
        path = settings.feast_dir / path
    if path.parent != settings.feast_dir:  # a copied home: its repository names the original's store
        path = settings.feast_dir / path.name
    return (path if path.exists() else None), version


def erase_online(settings: Settings, ids: set[str]) -> int:
    """Delete the customers' rows from every table of Feast's SQLite online store, then vacuum it; rows
    deleted (with Redis, `erase_feast_redis` deletes them)."""
    path, version = online_store_path(settings)
    if path is None:
        return 0
    keys = [(serialize_entity_key(_customer_entity(c), version),) for c in sorted(ids)]
    connection = sqlite3.connect(path, timeout=30.0)
    try:
        deleted = 0
        tables = [
            name
            for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            if "entity_key" in {row[1] for row in connection.execute(f'PRAGMA table_info("{name}")')}
        ]
        with connection:
            for name in tables:
                deleted += connection.executemany(f'DELETE FROM "{name}" WHERE entity_key = ?', keys).rowcount
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.execute("VACUUM")
    finally:
        connection.close()
    return deleted


def erase_feast_redis(settings: Settings, ids: set[str]) -> int:
    """Delete the customers' keys from Feast's Redis online store (one hash per customer, every view's features
    in it), through the client and the key Feast itself makes from its configuration; keys deleted."""
    config = _feast_config(settings)
    online = config.get("online_store") if config is not None else None
    if config is None or not isinstance(online, dict) or online.get("type") != "redis":
        return 0
    version = int(str(config.get("entity_key_serialization_version", 3)))
    client = RedisOnlineStore()._get_client(RedisOnlineStoreConfig(**online))
    keys = [_redis_key(str(config["project"]), _customer_entity(c), version) for c in sorted(ids)]
    return int(client.delete(*keys)) if keys else 0


def erase_reports(settings: Settings, ids: set[str]) -> list[str]:
    """Remove every report file that names one of the customers (`sendwise report` writes the pages again
    from what is left); the files removed, relative to the home."""
    if not settings.reports_dir.is_dir():
        return []
    needles = [c.encode("utf-8") for c in ids]
    removed = []
    for path in sorted(p for p in settings.reports_dir.rglob("*") if p.is_file()):
        content = path.read_bytes()
        if any(needle in content for needle in needles):
            path.unlink()
            removed.append(str(path.relative_to(settings.home)))
    return removed
