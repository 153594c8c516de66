"""The materialization in bounded memory gives what the whole-table way gave.

The online store is loaded with each view's latest rows in its TTL, picked by DuckDB and written in batches
(`SENDWISE_MATERIALIZE_BATCH_ROWS`), held here to Feast's default materialization on the small world, to
exact equality.
"""

from __future__ import annotations

import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import yaml
from feast import FeatureStore

from features.store import materialize, open_store
from sendwise.asof import resolve_as_of
from tests.conftest import PipelineHome


def _online_rows(database: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(database) as connection:
        names = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            name: connection.execute(
                f"SELECT entity_key, feature_name, value, event_ts FROM {name} ORDER BY entity_key, feature_name"
            ).fetchall()
            for name in names
        }


def _emptied(database: Path) -> None:
    with sqlite3.connect(database) as connection:
        for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            connection.execute(f"DELETE FROM {name}")


def test_materialized_online_store_is_what_feasts_default_materialization_gives(
    pipeline_home: PipelineHome, tmp_path: Path
) -> None:
    """Feast's default pulls every row of every view and keeps the latest in pandas, writing them in one batch;
    ours reads each view's rows within its TTL, keeps the latest in DuckDB and writes 100 at a time."""
    source = pipeline_home.settings
    as_of = resolve_as_of(source).time.to_pydatetime()
    homes = {}
    for name in ("default", "bounded"):
        home = tmp_path / name
        shutil.copytree(source.feast_dir, home / source.feast_dir.relative_to(source.home))
        shutil.copytree(source.raw_dir, home / source.raw_dir.relative_to(source.home))
        homes[name] = source.model_copy(update={"home": home, "materialize_batch_rows": 100})
        open_store(homes[name])  # the repository's files, pointing at this home's online store
        _emptied(homes[name].feast_dir / "online.db")

    default = homes["default"].feast_dir
    config = yaml.safe_load((default / "feature_store.yaml").read_text())
    assert config.pop("materialization") == {"pull_latest_features": True, "online_write_batch_size": 100}
    (default / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    FeatureStore(repo_path=str(default)).materialize(start_date=datetime(1990, 1, 1, tzinfo=UTC), end_date=as_of)

    materialize(open_store(homes["bounded"]), as_of)

    expected = _online_rows(default / "online.db")
    got = _online_rows(homes["bounded"].feast_dir / "online.db")
    assert got.keys() == expected.keys()
    assert "sendwise_engagement_fv" in got
    for name, rows in expected.items():
        assert len(got[name]) == len(rows) > 0, name
        assert got[name] == rows, name
    assert got == _online_rows(source.feast_dir / "online.db")  # and what the pipeline materialized
