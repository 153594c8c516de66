"""The Feast store of a home: its `feature_store.yaml`, applying the definitions, materializing."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path

import yaml
from feast import FeatureService, FeatureStore, FeatureView, FileSource

from features.repo import DEFINITIONS
from sendwise.settings import Settings

PROJECT = "sendwise"


def feature_store_yaml(settings: Settings) -> str:
    """The store's configuration: DuckDB over Parquet offline, SQLite (or Redis) online, all in the home."""
    if settings.online_store == "redis":
        host_port = settings.redis_url.removeprefix("redis://").split("/")[0]
        online: dict[str, object] = {"type": "redis", "connection_string": host_port}
    else:
        online = {"type": "sqlite", "path": str(settings.feast_dir / "online.db")}
    config = {
        "project": PROJECT,
        "provider": "local",
        "registry": {"path": str(settings.feast_dir / "registry.db"), "cache_ttl_seconds": 0},
        "online_store": online,
        "offline_store": {"type": "duckdb"},
        "entity_key_serialization_version": 3,
    }
    return yaml.safe_dump(config, sort_keys=False)


def open_store(settings: Settings) -> FeatureStore:
    """The home's Feast store, writing its `feature_store.yaml` first."""
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    path = settings.feast_dir / "feature_store.yaml"
    text = feature_store_yaml(settings)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return FeatureStore(repo_path=str(settings.feast_dir))


def _resolved(definition: object, tables_dir: Path) -> object:
    """A copy whose file source points into the home (DuckDB reads relative paths from the cwd).

    Services are copied too: applying fills a service's projection of a view whose schema is inferred (the
    `attr_*` columns) in place, and a module-level service filled by one home would name that home's attributes
    when another home is applied in the same process, which every `get_historical_features` then refuses.
    """
    if isinstance(definition, FeatureService):
        return copy.deepcopy(definition)
    if isinstance(definition, FileSource):
        resolved = copy.deepcopy(definition)
        resolved.file_options.uri = str(tables_dir / Path(definition.path).name)
        return resolved
    if isinstance(definition, FeatureView):
        resolved_view = copy.deepcopy(definition)
        source = resolved_view.batch_source
        assert isinstance(source, FileSource)
        source.file_options.uri = str(tables_dir / Path(source.path).name)
        return resolved_view
    return definition


def apply_definitions(store: FeatureStore, settings: Settings) -> None:
    """Register entities, views and services; views without a schema infer it from the tables now."""
    store.apply([_resolved(d, settings.feature_tables_dir) for d in DEFINITIONS])  # type: ignore[arg-type]


def materialize(store: FeatureStore, as_of: datetime) -> None:
    """Load the latest feature rows up to `as_of` into the online store."""
    store.materialize(start_date=datetime(1990, 1, 1, tzinfo=UTC), end_date=as_of)
