"""The Feast store of a home: applying the definitions of one home leaves nothing behind for the next."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from feast import PushSource

from features.build import build_feature_tables
from features.repo import DEFINITIONS
from features.repo.services import next_best_offer_v1, offer_feature_refs
from features.repo.views import customer_attributes_fv
from features.store import apply_definitions, home_definitions, materialize, open_store
from sendwise.ingest import ingest
from sendwise.settings import Settings
from training.datasets import historical_features


def _home(tmp_path: Path, name: str, attribute: str, **settings: object) -> Settings:
    """A home of two customers with one attribute column, ingested and its feature tables built."""
    data = tmp_path / f"data-{name}"
    data.mkdir()
    pd.DataFrame(
        {"customer_id": ["c1", "c2"], "consent_email": "true", "consent_profiling": "true", attribute: [1.0, 2.0]}
    ).to_csv(data / "customers.csv", index=False)
    pd.DataFrame({"offer_id": ["o1"], "kind": ["discount"]}).to_csv(data / "offers.csv", index=False)
    home = Settings(home=tmp_path / name, **settings)  # type: ignore[arg-type]
    ingest(data, home, as_of="2026-03-01T00:00:00Z", progress=False)
    build_feature_tables(home, progress=False)
    return home


@pytest.mark.integration
@pytest.mark.slow  # two homes ingested, built and applied to Feast: 3 to 5 seconds
def test_two_homes_applied_in_one_process_each_register_their_own(tmp_path: Path) -> None:
    """Applying infers the attribute view's schema and fills the services' projections of it in place: objects
    shared between homes named the first home's attributes (and tables) in the second's registry."""
    first = _home(tmp_path, "a", "attr_first", conversion_window_days=3)
    second = _home(tmp_path, "b", "attr_second", label_window_hours=24)
    for settings in (first, second):
        apply_definitions(open_store(settings), settings)
    for settings, own, other in ((first, "attr_first", "attr_second"), (second, "attr_second", "attr_first")):
        store = open_store(settings)  # read back from the registry on disk, after both homes were applied
        for source in store.list_data_sources():
            table = source.batch_source if isinstance(source, PushSource) else source  # pushed: its table's rows
            assert Path(table.path).parent == settings.feature_tables_dir, source.name
        view = store.get_feature_view("customer_attributes_fv")
        assert {f.name for f in view.features} == {own, "n_attributes"}
        service = store.get_feature_service("next_best_offer_v1")
        projected = {f.name for p in service.feature_view_projections for f in p.features}
        assert own in projected and other not in projected
        rows = historical_features(
            store,
            "next_best_offer_v1",
            pd.DataFrame({"customer_id": ["c1", "c2"], "offer_id": "o1", "event_timestamp": pd.Timestamp.now("UTC")}),
        )
        assert rows[own].tolist() == [1.0, 2.0]
        assert other not in rows.columns
    # the module-level definitions were never applied: nothing inferred, no home's path in them
    assert customer_attributes_fv.features == []
    projections = next_best_offer_v1.feature_view_projections
    assert all(not p.features for p in projections if p.name == "customer_attributes_fv")
    assert all(not Path(d.path).is_absolute() for d in DEFINITIONS if hasattr(d, "path"))


def test_each_home_gets_copies_that_share_their_sources(tmp_path: Path) -> None:
    definitions = {d.name: d for d in home_definitions(tmp_path / "tables")}
    view, source = definitions["engagement_fv"], definitions["engagement_source"]
    assert view.batch_source is source  # one object, as in features.repo: Feast's CLI finds each source once
    assert source.path == str(tmp_path / "tables" / "engagement_features.parquet")
    again = {d.name: d for d in home_definitions(tmp_path / "other")}
    assert all(again[name] is not definitions[name] for name in definitions)


def test_offer_features_come_from_the_offer_service() -> None:
    assert offer_feature_refs() == [
        "offer_fv:offer_kind",
        "offer_fv:offer_category",
        "offer_fv:discount_pct",
        "offer_fv:price",
        "offer_fv:margin",
    ]


@pytest.mark.integration
@pytest.mark.slow  # a home ingested, built, applied and materialized, and a fresh interpreter: 5 to 10 seconds
def test_an_online_only_store_reads_what_the_full_store_does_without_opening_the_offline_store(tmp_path: Path) -> None:
    """The store the service serves from: the same online reads, no offline store (DuckDB's module, with ibis and
    sqlglot, is never imported), and a clear refusal of an offline read."""
    home = _home(tmp_path, "a", "attr_first")
    apply_definitions(open_store(home), home)
    materialize(open_store(home), datetime(2026, 3, 1, tzinfo=UTC))
    rows = [{"offer_id": "o1"}, {"offer_id": "unknown"}]
    full = open_store(home).get_online_features(features=offer_feature_refs(), entity_rows=rows).to_dict()
    online = open_store(home, online_only=True)
    assert online.get_online_features(features=offer_feature_refs(), entity_rows=rows).to_dict() == full
    assert full["offer_id"] == ["o1", "unknown"]
    entity = pd.DataFrame({"customer_id": ["c1"], "offer_id": "o1", "event_timestamp": pd.Timestamp.now("UTC")})
    with pytest.raises(NotImplementedError):
        historical_features(online, "next_best_offer_v1", entity)
    script = (
        "import sys; from pathlib import Path; from features.store import open_store; "
        "from sendwise.settings import Settings; "
        f"open_store(Settings(home=Path({str(home.home)!r})), online_only=True); "
        "print(sorted(m for m in ('feast.infra.offline_stores.duckdb', 'ibis', 'duckdb') if m in sys.modules))"
    )
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "[]"
