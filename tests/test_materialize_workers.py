"""Materializing into Redis with several worker processes (`SENDWISE_MATERIALIZE_WORKERS`) writes what one
process writes: every customer's hash, field by field, the same; a worker that dies is explained."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
import redis
from feast import FeatureStore

from features.store import materialize, open_store
from sendwise.asof import resolve_as_of
from sendwise.raw import load_table
from sendwise.settings import Settings
from tests.conftest import PipelineHome, home_with_own_decision_log
from tests.scripts import run_unguarded

pytestmark = pytest.mark.integration
DBS = (14, 15)  # dbs of the session's Redis of this module's own


def _contents(client: redis.Redis) -> dict[bytes, dict[bytes, bytes]]:
    return {key: client.hgetall(key) for key in client.scan_iter(count=10_000)}


def _recorded(store: FeatureStore) -> dict[str, list[datetime]]:
    """Each online view's materialization ends as the registry file holds them (read afresh)."""
    views = FeatureStore(repo_path=str(store.repo_path)).list_feature_views()
    return {view.name: [end for _, end in view.materialization_intervals] for view in views if view.online}


def test_views_materialized_by_two_processes_fill_redis_as_one_does(
    pipeline_home: PipelineHome, tmp_path: Path, redis_url: str
) -> None:
    contents = []
    for workers, db in zip((1, 2), DBS, strict=True):
        url = f"{redis_url}/{db}"
        client = redis.Redis.from_url(url)
        client.flushdb()
        settings = home_with_own_decision_log(pipeline_home.settings, tmp_path / f"home-{workers}").model_copy(
            update={"online_store": "redis", "redis_url": url, "materialize_workers": workers, "offline_memory_gb": 3.0}
        )
        store = open_store(settings)
        as_of = resolve_as_of(settings).time.to_pydatetime()
        before = _recorded(store)
        caps = materialize(store, as_of, settings.materialize_workers, True, settings.offline_memory_gb)
        assert set(caps.values()) == {"2.7 GiB" if workers == 1 else "1.3 GiB"}, caps  # 3e9 bytes, shared by 2
        # Every view's materialization recorded in the registry, none lost to another worker's write.
        assert _recorded(store) == {name: [*before.get(name, []), as_of] for name in caps}
        contents.append(_contents(client))
        client.flushdb()
    one, two = contents
    views = {field for fields in one.values() for field in fields if field.startswith(b"_ts:")}
    assert len(one) > 1000 and len(views) >= 5  # customers and offers, each view's time field
    assert two == one


def test_a_script_without_a_main_guard_is_told_how_to_materialize(
    pipeline_home: PipelineHome, tmp_path: Path, redis_url: str
) -> None:
    home = home_with_own_decision_log(pipeline_home.settings, tmp_path / "home").home
    url = f"{redis_url}/{DBS[0]}"
    redis.Redis.from_url(url).flushdb()
    script = tmp_path / "fill_redis.py"
    script.write_text(
        "from pathlib import Path\n"
        "from features.store import materialize, open_store\n"
        "from sendwise.asof import resolve_as_of\n"
        "from sendwise.settings import Settings\n"
        f"settings = Settings(home=Path({str(home)!r}), online_store='redis', redis_url={url!r})\n"
        "as_of = resolve_as_of(settings).time.to_pydatetime()\n"
        "materialize(open_store(settings), as_of, settings.materialize_workers, True)\n"
    )
    error = "MaterializeError: a materialize worker process stopped abruptly"
    run_unguarded(script, "SENDWISE_MATERIALIZE_WORKERS", error)
    customers, offers = load_table(pipeline_home.settings, "customers"), load_table(pipeline_home.settings, "offers")
    assert customers is not None and offers is not None
    keys = list(redis.Redis.from_url(url).scan_iter(count=10_000))
    assert len(keys) == customers["customer_id"].nunique() + offers["offer_id"].nunique()  # a hash per entity
    redis.Redis.from_url(url).flushdb()


def test_opening_the_store_caps_duckdbs_memory_and_spills_into_the_home(tmp_path: Path) -> None:
    import ibis

    settings = Settings(home=tmp_path / "home", offline_memory_gb=1.5)
    open_store(settings)
    ((limit, spill),) = (
        ibis.get_backend()
        .raw_sql("select current_setting('memory_limit'), current_setting('temp_directory')")
        .fetchall()
    )
    assert limit == "1.3 GiB"  # 1.5e9 bytes, as DuckDB prints it
    assert spill == str(settings.home / ".duckdb-spill") and (settings.home / ".duckdb-spill").is_dir()
