"""The Feast store of a home: applying the definitions of one home leaves nothing behind for the next."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.build import build_feature_tables
from features.store import apply_definitions, open_store
from sendwise.ingest import ingest
from sendwise.settings import Settings
from training.datasets import historical_features


@pytest.mark.integration
@pytest.mark.slow  # two homes ingested, built and applied to Feast: 3 to 5 seconds
def test_homes_with_different_attributes_are_applied_in_one_process(tmp_path: Path) -> None:
    """Applying fills a service's projection of the inferred attribute view: a module-level service filled by
    one home made every historical read of the next home fail."""
    for home, attribute, other in (("a", "attr_first", "attr_second"), ("b", "attr_second", "attr_first")):
        data = tmp_path / f"data-{home}"
        data.mkdir()
        pd.DataFrame(
            {"customer_id": ["c1", "c2"], "consent_email": "true", "consent_profiling": "true", attribute: [1.0, 2.0]}
        ).to_csv(data / "customers.csv", index=False)
        pd.DataFrame({"offer_id": ["o1"], "kind": ["discount"]}).to_csv(data / "offers.csv", index=False)
        settings = Settings(home=tmp_path / home)
        ingest(data, settings, as_of="2026-03-01T00:00:00Z", progress=False)
        tables = build_feature_tables(settings, progress=False)
        store = open_store(settings)
        apply_definitions(store, settings)
        rows = historical_features(
            store,
            "next_best_offer_v1",
            pd.DataFrame({"customer_id": ["c1", "c2"], "offer_id": "o1", "event_timestamp": tables.as_of}),
        )
        assert rows[attribute].tolist() == [1.0, 2.0]
        assert other not in rows.columns
