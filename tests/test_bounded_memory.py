"""The feature build and the materialization in bounded memory give what the whole-table ways gave.

The engagement table is written a batch of rows at a time (`SENDWISE_FEATURE_BATCH_ROWS`), and the online
store is loaded with each view's latest rows in its TTL, picked by DuckDB and written in batches
(`SENDWISE_MATERIALIZE_BATCH_ROWS`). Both are held here to the results of the ways they replace, on the
small world, to exact equality.
"""

from __future__ import annotations

import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from feast import FeatureStore

from features import build
from features.build import EVENT_COLUMNS, build_feature_tables
from features.store import materialize, open_store
from sendwise.asof import resolve_as_of
from sendwise.settings import Settings
from tests.conftest import PipelineHome
from tests.scripts import run_unguarded

ENGAGEMENT = "engagement_features.parquet"


def _raw_copy(source: Settings, home: Path, **overrides: object) -> Settings:
    """A home holding only a copy of `source`'s raw store (with its recorded as-of)."""
    shutil.copytree(source.raw_dir, home / source.raw_dir.relative_to(source.home))
    return source.model_copy(update={"home": home, **overrides})


def test_engagement_written_in_small_batches_is_the_table_built_at_once(
    pipeline_home: PipelineHome, tmp_path: Path
) -> None:
    whole = _raw_copy(pipeline_home.settings, tmp_path / "whole", feature_batch_rows=10_000_000)
    batched = _raw_copy(pipeline_home.settings, tmp_path / "batched", feature_batch_rows=1_000)
    tables = {}
    for name, settings in (("whole", whole), ("batched", batched)):
        built = build_feature_tables(settings, progress=False)
        path = settings.feature_tables_dir / ENGAGEMENT
        tables[name] = pq.read_table(path)
        assert built.engagement_rows == tables[name].num_rows
        assert not list(path.parent.glob("*.tmp"))  # nothing left half written
    groups = pq.ParquetFile(batched.feature_tables_dir / ENGAGEMENT).metadata.num_row_groups
    assert groups > 10  # written as it was built (a day's snapshots at least per group), not at the end
    assert pq.ParquetFile(whole.feature_tables_dir / ENGAGEMENT).metadata.num_row_groups == 1
    assert_same_table(tables["batched"], tables["whole"])
    # and both are what the pipeline built and trained on
    assert_same_table(tables["whole"], pq.read_table(pipeline_home.settings.feature_tables_dir / ENGAGEMENT))


def test_the_build_reading_only_its_columns_builds_what_reading_whole_tables_built(
    pipeline_home: PipelineHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pruned = _raw_copy(pipeline_home.settings, tmp_path / "pruned")
    whole = _raw_copy(pipeline_home.settings, tmp_path / "whole")
    built = {"pruned": build_feature_tables(pruned, progress=False)}
    every_column = {
        name: (*columns, "event_id", "url", "product_id", "message_id") for name, columns in EVENT_COLUMNS.items()
    }
    monkeypatch.setattr(build, "EVENT_COLUMNS", every_column)
    built["whole"] = build_feature_tables(whole, progress=False)
    for part in ("sends", "exposures", "customers", "offers"):
        pd.testing.assert_frame_equal(getattr(built["pruned"], part), getattr(built["whole"], part), obj=part)
    for path in sorted(whole.feature_tables_dir.glob("*.parquet")):
        assert_same_table(pq.read_table(pruned.feature_tables_dir / path.name), pq.read_table(path))


def test_the_build_by_shares_of_the_customers_builds_what_one_pass_built(
    pipeline_home: PipelineHome, tmp_path: Path
) -> None:
    """Split into shares of a quarter of the customers (and read in small batches), the build decides the
    machine agents, the proxies and the rhythm prior on everyone as one pass does: the labelled sends and
    exposures are the same rows in the same order, and every feature table has the same rows (the rhythms to
    float32 rounding: the posterior's matrix products are blocked by other rows)."""
    customers = len(pd.read_parquet(pipeline_home.settings.raw_dir / "customers.parquet"))
    one = _raw_copy(pipeline_home.settings, tmp_path / "one")
    shared = _raw_copy(
        pipeline_home.settings,
        tmp_path / "shares",
        feature_share_customers=customers // 4,
        feature_batch_rows=5_000,
        ingest_chunk_rows=5_000,
    )
    built = {
        name: build_feature_tables(settings, progress=False) for name, settings in (("one", one), ("shares", shared))
    }
    assert not list(shared.home.glob(".feature-shares-*"))  # the split tables are removed after the build
    for part in ("sends", "exposures"):  # the rows training reads, in the same order: the same models
        got, expected = (getattr(built[n], part) for n in ("shares", "one"))
        assert len(expected) > 100, part
        pd.testing.assert_frame_equal(got, expected, obj=part)
    assert built["shares"].engagement_rows == built["one"].engagement_rows
    order = {"offer_values": ["offer_id"], "rhythm_priors": ["timezone"], "offer_features": ["offer_id"]}
    for path in sorted(one.feature_tables_dir.glob("*.parquet")):
        columns = order.get(path.stem, ["customer_id", "event_timestamp"])
        got = pq.read_table(shared.feature_tables_dir / path.name)
        expected = pq.read_table(path)
        assert_same_table(
            got.sort_by([(c, "ascending") for c in columns]),
            expected.sort_by([(c, "ascending") for c in columns]),
            rtol=1e-5,
        )


def test_shares_built_by_two_processes_are_what_one_process_builds(pipeline_home: PipelineHome, tmp_path: Path) -> None:
    """The shares labelled and built by two worker processes at once give the very tables one process gives
    share after share: the same labelled rows in the same order, every feature file with the same row groups
    and values."""
    customers = len(pd.read_parquet(pipeline_home.settings.raw_dir / "customers.parquet"))
    homes = {
        workers: _raw_copy(
            pipeline_home.settings,
            tmp_path / f"workers-{workers}",
            feature_share_customers=customers // 3,
            feature_batch_rows=5_000,
            feature_workers=workers,
        )
        for workers in (1, 2)
    }
    built = {workers: build_feature_tables(settings, progress=False) for workers, settings in homes.items()}
    for part in ("sends", "exposures"):
        pd.testing.assert_frame_equal(getattr(built[2], part), getattr(built[1], part), obj=part)
    assert built[2].engagement_rows == built[1].engagement_rows > 0
    files = sorted(path.name for path in homes[1].feature_tables_dir.glob("*.parquet"))
    assert files == sorted(path.name for path in homes[2].feature_tables_dir.glob("*.parquet"))
    assert "engagement_features.parquet" in files
    for name in files:
        one, two = (pq.ParquetFile(homes[w].feature_tables_dir / name) for w in (1, 2))
        assert two.metadata.num_row_groups == one.metadata.num_row_groups, name
        assert_same_table(two.read(), one.read())
    assert not list(homes[2].feature_tables_dir.glob(".*"))  # no parts or staged files left behind


def test_a_script_without_a_main_guard_is_told_how_to_build(pipeline_home: PipelineHome, tmp_path: Path) -> None:
    """Worker processes import the main script: one that builds at its top level would build again in each. The
    build then fails with an error that says so and what to do, and the setting it names builds in process."""
    customers = len(pd.read_parquet(pipeline_home.settings.raw_dir / "customers.parquet"))
    home = _raw_copy(pipeline_home.settings, tmp_path / "home").home
    script = tmp_path / "build_features.py"
    script.write_text(
        "from pathlib import Path\n"
        "from features.build import build_feature_tables\n"
        "from sendwise.settings import Settings\n"
        f"settings = Settings(home=Path({str(home)!r}), feature_share_customers={customers // 2})\n"
        "print('rows', build_feature_tables(settings, progress=False).engagement_rows)\n"
    )
    error = "FeatureBuildError: a feature build worker process stopped abruptly"
    printed = run_unguarded(script, "SENDWISE_FEATURE_WORKERS", error)
    assert int(printed.split("rows")[-1]) > 0


def assert_same_table(got: pa.Table, expected: pa.Table, rtol: float = 0.0) -> None:
    """The same schema and the same values row by row (NaN where NaN: `Table.equals` takes NaN for unequal);
    floats within `rtol` of each other where given."""
    assert got.schema == expected.schema
    assert got.num_rows == expected.num_rows
    for name in expected.column_names:
        a, b = got[name].combine_chunks(), expected[name].combine_chunks()
        if pa.types.is_list(b.type):
            np.testing.assert_array_equal(a.value_lengths(), b.value_lengths(), err_msg=name)
            a, b = a.flatten(), b.flatten()
        assert a.null_count == b.null_count, name
        a, b = a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False)
        if rtol and np.issubdtype(b.dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-7, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, name)


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
