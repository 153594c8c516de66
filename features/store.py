"""The Feast repository of a home: its configuration and definitions, applying them, materializing.

A home's repository is `SENDWISE_HOME/feast/`: `feature_store.yaml` (DuckDB over the home's Parquet feature
tables offline, SQLite or Redis online), `sendwise_definitions.py` (the definitions of `features.repo` resolved
against the home, so that the Feast CLI can compare them with the registry: `sendwise feast plan`), and the
registry and online store Feast keeps there.
"""

from __future__ import annotations

import copy
import io
import multiprocessing
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

import redis
import yaml
from feast import FeatureStore, FeatureView, FileSource, PushSource, RepoConfig
from feast.data_source import DataSource
from feast.feast_object import FeastObject
from feast.infra.offline_stores.offline_store import OfflineStore
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.infra.online_stores.sqlite import SqliteOnlineStore
from feast.repo_config import FeastConfigBaseModel

from features.repo import DEFINITIONS, Definition
from sendwise.settings import Settings

PROJECT = "sendwise"
REDIS_CONNECT_SECONDS = 2
"""How long a connection to Redis may take to open: a Redis that is down degrades answers, it must not hang them."""
REDIS_REPLY_SECONDS = 10
"""How long a Redis reply may take (a materialization writes in large pipelines)."""
EPOCH = datetime(1990, 1, 1, tzinfo=UTC)
"""Where a view without a TTL starts materializing: before any row a home holds."""
DEFINITIONS_FILE = "sendwise_definitions.py"
"""The module the Feast CLI imports from the home's repository (a name no installed package has: Feast puts
the repository last on `sys.path`)."""


def feature_store_yaml(settings: Settings) -> str:
    """The store's configuration: DuckDB over Parquet offline, SQLite (or Redis) online, all in the home."""
    if settings.online_store == "redis":
        online: dict[str, object] = {"type": "redis", "connection_string": redis_connection_string(settings.redis_url)}
    else:
        online = {"type": "sqlite", "path": str(settings.feast_dir / "online.db")}
    config = {
        "project": PROJECT,
        "provider": "local",
        "registry": {"path": str(settings.feast_dir / "registry.db"), "cache_ttl_seconds": 0},
        "online_store": online,
        "offline_store": {"type": "duckdb"},
        # Materializing pulls only each entity's latest row in the window (DuckDB picks it), not every row of
        # the table for pandas to sort, and converts and writes them in batches.
        "materialization": {
            "pull_latest_features": True,
            "online_write_batch_size": settings.materialize_batch_rows,
        },
        "entity_key_serialization_version": 3,
    }
    return yaml.safe_dump(config, sort_keys=False)


def redis_connection_string(url: str) -> str:
    """`SENDWISE_REDIS_URL` (`redis://[user:password@]host:port/db`, or `rediss://` for TLS) as the connection
    string Feast's Redis online store parses: `host:port,db=N,password=...,ssl=true`, with the timeouts above."""
    where = f"SENDWISE_REDIS_URL={url!r}"
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"{where}: expected redis://host:port/db (or rediss:// for TLS)")
    try:
        port = parts.port or 6379
    except ValueError as error:
        raise ValueError(f"{where}: the port is not a number") from error
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"{where}: the db number after the port must be a whole number, not {db!r}")
    fields = [f"{parts.hostname}:{port}", f"db={int(db)}"]
    if parts.username:
        fields.append(f"username={unquote(parts.username)}")
    if parts.password:
        fields.append(f"password={unquote(parts.password)}")
    if any("," in f for f in fields):
        raise ValueError(f"{where}: Feast's connection string cannot carry a ',' in the user name or password")
    if parts.scheme == "rediss":
        fields.append("ssl=true")
    fields += [f"socket_connect_timeout={REDIS_CONNECT_SECONDS}", f"socket_timeout={REDIS_REPLY_SECONDS}"]
    return ",".join(fields)


def redis_client(url: str) -> redis.Redis:
    """A client of the Redis at `url` (db, password and TLS as the URL says), with the timeouts Feast's gets."""
    redis_connection_string(url)  # the same checks, the same errors
    return redis.Redis.from_url(url, socket_connect_timeout=REDIS_CONNECT_SECONDS, socket_timeout=REDIS_REPLY_SECONDS)


def home_definitions(tables_dir: Path) -> list[Definition]:
    """Fresh copies of every definition of `features.repo`, their file sources pointing into `tables_dir`.

    Applying changes the objects it is given: it infers the schema of a view that has none (the `attr_*`
    columns) and fills the services' projections of that view in place. Each home is applied its own copies,
    made by one deep copy of the whole repository so that the copied views keep sharing their copied sources
    and the copied services name the copied views; the module-level objects are never applied, and two homes
    applied in one process never see each other's tables or attributes.
    """
    definitions: list[Definition] = copy.deepcopy(DEFINITIONS)
    sources: list[DataSource | None] = [d for d in definitions if isinstance(d, FileSource)]
    sources += [d.batch_source for d in definitions if isinstance(d, FeatureView | PushSource)]
    for source in {id(s): s for s in sources if isinstance(s, FileSource)}.values():
        source.file_options.uri = str(tables_dir / Path(source.path).name)  # DuckDB reads relative paths from the cwd
    return definitions


def definitions_module(tables_dir: Path) -> str:
    """The text of the repository's definitions module: `home_definitions`, each object under its own name."""
    names = [d.name for d in DEFINITIONS]
    if not all(name.isidentifier() for name in names):
        raise ValueError(f"every Feast object of features.repo needs a name that is a Python identifier: {names}")
    lines = [
        '"""The Feast definitions sendwise applies to this home, for the Feast CLI (`sendwise feast ARGS...`).',
        "",
        "Written by sendwise at every run; the definitions themselves live in sendwise's `features/repo/`.",
        '"""',
        "",
        "from pathlib import Path",
        "",
        "from features.store import home_definitions",
        "",
        f"_definitions = {{d.name: d for d in home_definitions(Path({str(tables_dir)!r}))}}",
        *(f"{name} = _definitions[{name!r}]" for name in names),
        "",
    ]
    return "\n".join(lines)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def write_repository(settings: Settings) -> Path:
    """Write the home's `feature_store.yaml` and definitions module; returns the repository's folder."""
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    _write_if_changed(settings.feast_dir / "feature_store.yaml", feature_store_yaml(settings))
    _write_if_changed(settings.feast_dir / DEFINITIONS_FILE, definitions_module(settings.feature_tables_dir))
    return settings.feast_dir


class OnlineOnlyOfflineStore(OfflineStore):
    """The offline store of a store opened `online_only`: none. Feast imports the module of the configured offline
    store whenever a store is opened (DuckDB's brings ibis, sqlglot and DuckDB: about 45 MB resident), though
    answering from the online store never reaches it; every offline call raises Feast's `NotImplementedError`."""


class OnlineOnlyOfflineStoreConfig(FeastConfigBaseModel):
    """Feast's configuration of `OnlineOnlyOfflineStore` (found by its type's name + `Config`)."""

    type: Literal["features.store.OnlineOnlyOfflineStore"] = "features.store.OnlineOnlyOfflineStore"


def bound_offline_memory(memory_gb: float, spill: Path) -> None:
    """Cap the memory of this process's DuckDB connection, the one Feast's offline store queries through (ibis's
    default backend), at `memory_gb`, spilling to `spill` past it. Without a cap DuckDB takes up to 80% of the
    machine's memory: choosing each customer's latest of a hundred million rows to materialize took about 10 GB."""
    import ibis  # not at the top: a service replica opens its store online only and never imports it

    connection = ibis.get_backend()
    for statement in memory_bounds(memory_gb, spill):
        connection.raw_sql(statement)


def memory_bounds(memory_gb: float, spill: Path) -> list[str]:
    """The statements that cap a DuckDB connection at `memory_gb`, spilling to `spill` (made here) past it."""
    spill.mkdir(parents=True, exist_ok=True)
    return [f"SET memory_limit = '{memory_gb:g}GB'", f"SET temp_directory = '{sql_quoted(spill)}'"]


def sql_quoted(path: Path) -> str:
    """A path as the inside of a SQL string literal (its quotes doubled)."""
    return str(path).replace("'", "''")


def offline_memory_cap() -> str:
    """This process's DuckDB memory cap (`bound_offline_memory`), as DuckDB prints it ("7.4 GiB")."""
    import ibis

    return str(ibis.get_backend().raw_sql("select current_setting('memory_limit')").fetchone()[0])


def spill_dir(feast_dir: Path) -> Path:
    """Where DuckDB spills past its memory cap: beside the home's Feast repository, in the home."""
    return feast_dir.parent / ".duckdb-spill"


def open_store(settings: Settings, online_only: bool = False) -> FeatureStore:
    """The home's Feast store, writing its repository's files first. `online_only` (what the service serves from:
    online reads and pushes) opens it without the offline store, which reads the feature tables through DuckDB."""
    repository = write_repository(settings)
    if not online_only:
        bound_offline_memory(settings.offline_memory_gb, spill_dir(repository))
        return FeatureStore(repo_path=str(repository))
    config = yaml.safe_load(feature_store_yaml(settings))
    config["offline_store"] = {"type": OnlineOnlyOfflineStoreConfig().type}
    store = store_with(repository, config)
    known_to_read_versions(store)
    return store


def known_to_read_versions(store: FeatureStore) -> None:
    """Tell the store's online store what Feast would find out for itself on its first `get_online_features`:
    that it reads versioned views. Feast finds out by importing every online store it knows (PostgreSQL's
    psycopg, MySQL's, Milvus's: about 16 MB resident in a service that never uses them) to ask whether the
    store is one of them; for the two sendwise configures (SQLite and Redis) the answer is yes."""
    online = store._get_provider().online_store
    if isinstance(online, (SqliteOnlineStore, RedisOnlineStore)):
        online._versioned_read_supported = True


def store_with(repository: Path, config: dict[str, object]) -> FeatureStore:
    """The Feast store of `repository` with `config` (a `feature_store.yaml` as a dict) in place of its file's."""
    repo_config = RepoConfig(**config)
    repo_config.repo_path = repository  # as Feast's own loading of the yaml sets it
    return FeatureStore(repo_path=str(repository), config=repo_config)


def apply_definitions(store: FeatureStore, settings: Settings) -> None:
    """Register entities, views and services; views without a schema infer it from the home's tables now."""
    objects: list[FeastObject] = [*home_definitions(settings.feature_tables_dir)]
    store.apply(objects)


class MaterializeError(RuntimeError):
    """The online store could not be filled, with what to do about it."""


def materialize(
    store: FeatureStore, as_of: datetime, workers: int = 1, quiet: bool = False, offline_memory_gb: float | None = None
) -> dict[str, str]:
    """Load each online view's latest rows up to `as_of` into the online store, through Feast; the DuckDB memory
    cap each view was read under, as DuckDB prints it (worker processes have their share of this process's).

    A view with a TTL reads only its rows of the TTL before `as_of` (the window Feast's
    `materialize_incremental` starts with): older rows are expired by the view's own definition, and the
    engagement table holds a row for every customer at its as-of beside the rows training needs, which grow
    with customers × days. Views without a TTL read all their rows.

    Feast converts every value to a protocol buffer in Python, one view after another, which is most of the
    time a million customers take. With Redis and `workers` > 1, views are materialized by that many processes
    at once, each handed the next view as it finishes one (the views with the most features first); a SQLite
    online store is one file that one process writes at a time, so it is materialized here, a view at a time.
    `quiet`: the worker processes do not print Feast's progress (in this process, redirect stdout);
    `offline_memory_gb`: the DuckDB memory the workers share (`bound_offline_memory`; `open_store` sets this
    process's): each worker's cap is its share, so that more workers do not add up to more memory (at a million
    customers two workers capped at the whole of it took the pipeline past 16 GB); they spill into one folder,
    DuckDB naming its files by process.
    """
    windows: dict[str, datetime] = {}
    sizes: dict[str, int] = {}
    for view in store.list_feature_views():
        if view.online and view.enabled:
            windows[view.name] = max(as_of - view.ttl, EPOCH) if view.ttl else EPOCH
            sizes[view.name] = len(view.features)
    parallel = workers > 1 and len(windows) > 1 and getattr(store.config.online_store, "type", None) == "redis"
    if not parallel:
        by_start: dict[datetime, list[str]] = {}
        for name, start in windows.items():
            by_start.setdefault(start, []).append(name)
        for start, names in sorted(by_start.items()):
            store.materialize(start_date=start, end_date=as_of, feature_views=names)
        return dict.fromkeys(windows, offline_memory_cap())
    order = sorted(windows, key=lambda name: -sizes[name])
    processes = min(workers, len(order))
    share = offline_memory_gb / processes if offline_memory_gb is not None else None
    spawn = multiprocessing.get_context("spawn")  # a clean process: not a copy of a pipeline's memory
    repo = str(store.repo_path)
    try:
        with ProcessPoolExecutor(max_workers=processes, mp_context=spawn) as pool:
            done = [pool.submit(_materialize_view, repo, name, windows[name], as_of, quiet, share) for name in order]
            caps = {name: future.result() for name, future in zip(order, done, strict=True)}  # errors raised here
    except BrokenProcessPool as error:
        raise MaterializeError(
            f"a materialize worker process stopped abruptly ({error}): it was killed (out of memory?), or "
            "materialize was called from a script without `if __name__ == '__main__':` (each worker imports the "
            "main script, which then runs again). Guard the script, or set SENDWISE_MATERIALIZE_WORKERS=1 to "
            "materialize every view in this process"
        ) from error
    for name in order:  # what each worker recorded in its own copy of the registry, recorded once, here
        store.registry.apply_materialization(store.get_feature_view(name), store.project, windows[name], as_of)
    return caps


def _materialize_view(
    repo_path: str, name: str, start: datetime, end: datetime, quiet: bool, offline_memory_gb: float | None
) -> str:
    """One view materialized by a worker process (`materialize`); the DuckDB memory cap it ran under.

    The worker reads and writes a copy of the registry of its own: Feast's file registry is rewritten in place
    as each materialization is recorded, so workers sharing it read each other's half-written file and overwrote
    each other's records. The parent records every view's interval once the workers are done."""
    if offline_memory_gb is not None:
        bound_offline_memory(offline_memory_gb, spill_dir(Path(repo_path)))
    with tempfile.TemporaryDirectory(prefix="sendwise-registry-") as folder:
        config = yaml.safe_load((Path(repo_path) / "feature_store.yaml").read_text())
        private = Path(folder) / "registry.db"
        shutil.copyfile(config["registry"]["path"], private)
        config["registry"] = {**config["registry"], "path": str(private)}
        with redirect_stdout(io.StringIO()) if quiet else nullcontext():
            store_with(Path(repo_path), config).materialize(start_date=start, end_date=end, feature_views=[name])
    return offline_memory_cap()
