"""The in-memory snapshot of the online features: what Feast's online store serves, read in bulk, kept current."""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.transform import OfferMatrix, customer_matrix, offer_design, open_design
from sendwise.raw import load_table
from sendwise.settings import Settings
from serving.modules import (
    ModuleFacts,
    OfferFact,
    choose_modules,
    has_category_picks,
    offer_slots,
    offer_slots_batch,
    placed_offers,
    planned_modules,
)
from serving.offers import offer_probabilities
from serving.schemas import DecideRequest, Recipient
from serving.snapshot import FeatureSnapshot

pytestmark = [pytest.mark.integration]
START = datetime(2026, 12, 5, 3, tzinfo=UTC)


@pytest.fixture(scope="module")
def customer_ids(pipeline_home) -> list[str]:  # type: ignore[no-untyped-def]
    frame = load_table(pipeline_home.settings, "customers")
    assert frame is not None
    return frame["customer_id"].tolist()


def _feast_matrix(engine, ids: list[str]):  # type: ignore[no-untyped-def]
    """The rows as Feast's online store returns them, through the general converter: the reference."""
    service = engine.store.get_feature_service("open_propensity_v1")
    rows = engine.store.get_online_features(features=service, entity_rows=[{"customer_id": c} for c in ids])
    return pd.DataFrame(rows.to_dict())


def test_snapshot_designs_equal_those_from_feasts_online_store(engine, customer_ids) -> None:  # type: ignore[no-untyped-def]
    ids = [*customer_ids[:400], "nobody-1"]
    snapshot = engine.online.state.snapshot
    assert len(snapshot) >= len(customer_ids)
    rows = snapshot.rows(ids)
    assert rows[-1] == snapshot.empty_row and not snapshot.known[rows[-1]]
    feast_rows = _feast_matrix(engine, ids)
    ours, theirs = snapshot.matrix(ids, rows), customer_matrix(feast_rows)
    # who is known, and the consent the engine acts on
    assert (snapshot.known[rows] == feast_rows["timezone"].notna().to_numpy()).all()
    for column in ("consent_email", "email_eligible", "profiling_allowed"):
        expected = pd.to_numeric(feast_rows[column], errors="coerce").fillna(0).to_numpy() > 0
        assert ((snapshot.consent[column][rows] > 0) == expected).all(), column
    known = np.flatnonzero(snapshot.known[rows])
    n = len(known)
    stamps = pd.Series([pd.Timestamp(START)] * n)
    kinds, topics = np.full(n, "newsletter"), np.full(n, "outdoor", dtype=object)
    design_ours = open_design(ours, known, stamps, kinds, topics)
    design_theirs = open_design(theirs, known, stamps, kinds, topics)
    pd.testing.assert_frame_equal(design_ours, design_theirs, check_dtype=False, check_categorical=False)
    offers = OfferMatrix.from_rows(engine.offer_features)
    m = len(offers)
    pairs = (np.repeat(known, m), np.tile(np.arange(m), n))
    pd.testing.assert_frame_equal(
        offer_design(ours, pairs[0], offers, pairs[1]),
        offer_design(theirs, pairs[0], offers, pairs[1]),
        check_dtype=False,
        check_categorical=False,
    )
    assert any(len(v) and v.sum() > 0 for v in ours.category_views)  # the comparison covered product views
    assert np.ptp(ours.profiles["rhythm_weekday"][known], axis=0).max() > 0  # and rhythms that differ


def test_precomputed_offer_scores_equal_scoring_the_design(engine, customer_ids) -> None:  # type: ignore[no-untyped-def]
    ids = customer_ids[:300]
    served = engine.online.for_recipients([Recipient(customer_id=c) for c in ids])
    chosen, looked_up = engine.catalog.conversion(served, START, None)
    assert chosen is not None and len(chosen.ids) >= 5
    model = engine.models["next_best_offer"]
    scored = offer_probabilities(served.matrix, np.arange(len(ids)), chosen.matrix, model)
    assert np.abs(looked_up - np.clip(scored, 0, 1)).max() < 1e-6  # float32 in the table
    assert served.known.sum() > 250


def _copied_engine(pipeline_home, tmp_path: Path, monkeypatch):  # type: ignore[no-untyped-def]
    import serving.online as online_module
    from serving.engine import Engine

    home = tmp_path / "home"
    shutil.copytree(pipeline_home.settings.home, home)
    for key, value in Settings(home=home).library_environment().items():
        monkeypatch.setenv(key, value)
    settings = Settings(home=home)
    settings.activate()
    monkeypatch.setattr(online_module, "SNAPSHOT_CHECK_SECONDS", 0.0)
    return Engine.load(settings), settings


def test_a_new_feature_table_is_served_without_a_restart(pipeline_home, customer_ids, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    engine, settings = _copied_engine(pipeline_home, tmp_path, monkeypatch)
    request = DecideRequest(recipients=[Recipient(customer_id=c) for c in customer_ids[:200]], window_start=START)
    before = {d.customer_id: d for d in engine.decide(request).decisions}
    target = next(c for c, d in before.items() if d.send)
    path = settings.feature_tables_dir / "customer_features.parquet"
    table = pq.read_table(path).to_pandas()
    table.loc[table["customer_id"] == target, "consent_email"] = 0.0
    table.to_parquet(path, index=False)
    after = {d.customer_id: d for d in engine.decide(request).decisions}
    assert not after[target].send
    assert after[target].reasons == ["no email consent: never scheduled, rendered or offered anything"]
    assert sum(d.send for d in after.values()) == sum(d.send for d in before.values()) - 1


def test_in_the_service_a_new_table_is_read_in_the_background(  # type: ignore[no-untyped-def]
    pipeline_home, customer_ids, tmp_path, monkeypatch
) -> None:
    """The service decides small requests on its event loop: a read of changed tables must not hold them."""
    engine, settings = _copied_engine(pipeline_home, tmp_path, monkeypatch)
    engine.refresh_in_background = True
    request = DecideRequest(recipients=[Recipient(customer_id=c) for c in customer_ids[:200]], window_start=START)
    before = {d.customer_id: d for d in engine.decide(request).decisions}
    engine.wait_for_refresh()  # the check that decide started found nothing new
    target = next(c for c, d in before.items() if d.send)
    path = settings.feature_tables_dir / "customer_features.parquet"
    table = pq.read_table(path).to_pandas()
    table.loc[table["customer_id"] == target, "consent_email"] = 0.0
    table.to_parquet(path, index=False)
    loading = threading.Event()
    release = threading.Event()
    real_load = FeatureSnapshot.load

    def slow_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        loading.set()
        assert release.wait(30)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(FeatureSnapshot, "load", slow_load)
    during = {d.customer_id: d for d in engine.decide(request).decisions}  # answered while the read waits
    assert loading.wait(30)
    assert during[target].send  # still the last snapshot
    release.set()
    engine.wait_for_refresh(30)
    after = {d.customer_id: d for d in engine.decide(request).decisions}
    assert not after[target].send
    assert after[target].reasons == ["no email consent: never scheduled, rendered or offered anything"]


def test_an_unreadable_feature_table_keeps_the_last_snapshot_and_says_so(  # type: ignore[no-untyped-def]
    pipeline_home, customer_ids, tmp_path, monkeypatch
) -> None:
    engine, settings = _copied_engine(pipeline_home, tmp_path, monkeypatch)
    request = DecideRequest(recipients=[Recipient(customer_id=c) for c in customer_ids[:50]], window_start=START)
    assert engine.decide(request).status == "ok"
    (settings.feature_tables_dir / "engagement_features.parquet").write_bytes(b"not parquet")
    answer = engine.decide(request)
    assert answer.status == "degraded"
    assert sum(d.send for d in answer.decisions) > 30  # still decided, from the last good snapshot
    (reason,) = engine.status()["reasons"]
    assert str(reason).startswith("online features unavailable:") and "engagement_features" in str(reason)


def test_planned_modules_are_those_choose_modules_picks() -> None:
    rng = np.random.default_rng(5)
    kinds = ["discount", "content", "control"]
    checked = 0
    for _ in range(3000):
        offers = [
            OfferFact(
                offer_id=f"of-{j}",
                kind=str(rng.choice(kinds, p=[0.6, 0.25, 0.15])),
                conversion_probability=float(rng.uniform(0, 0.3)),
                expected_value=float(rng.gamma(2.0, 1.0)),
                incremental_value=None,
            )
            for j in range(int(rng.integers(0, 6)))
        ]
        cold = bool(rng.random() < 0.2)
        views = {} if cold or rng.random() < 0.4 else {"outdoor": 0.7, "home": float(rng.choice([0.0, 0.05]))}
        facts = ModuleFacts(
            customer_id="c",
            campaign_kind="promotional",
            campaign_topic=str(rng.choice(["", " ", "outdoor"])) or None,
            open_probability=float(rng.uniform(0, 0.4)),
            population_open_probability=0.2,
            offers=offers,
            high_value_threshold=float(rng.uniform(0.5, 3.0)),
            category_affinity={k: v for k, v in views.items() if v > 0},
            interests=[[], ["garden"], [" "]][int(rng.integers(0, 3))],
            cold_start=cold,
            history_emails=int(rng.integers(0, 6)),
        )
        for template in ("promotional", "newsletter"):
            chosen = [(m.name, m.items) for m in choose_modules(facts, template)]
            slots = placed_offers(
                [o.offer_id for o in offers],
                [o.kind for o in offers],
                [o.expected_value for o in offers],
                template,
                facts.high_value_threshold,
            )
            planned = planned_modules(
                template,
                *slots,
                cold_start=cold,
                history_emails=facts.history_emails,
                open_probability=facts.open_probability,
                population_open_probability=facts.population_open_probability,
                has_categories=has_category_picks(cold, facts.campaign_topic, facts.interests, bool(views)),
                control_first=bool(offers) and offers[0].kind == "control",
            )
            offer_modules = {"hero_offer", "secondary_offers", "content_block"}
            assert [n for n, _ in planned] == [n for n, _ in chosen]
            assert [i for n, i in planned if n in offer_modules] == [i for n, i in chosen if n in offer_modules]
            checked += 1
    assert checked == 6000


def test_offer_slots_of_a_whole_ranking_equal_those_of_each_row() -> None:
    """A campaign places every row's offers at once; each row must get what `offer_slots` gives it alone."""
    rng = np.random.default_rng(11)
    kinds = np.array(["discount", "content", "control"], dtype=object)
    rows = 0
    for _ in range(200):
        n, width = int(rng.integers(1, 20)), int(rng.integers(0, 8))
        ranked = rng.choice(kinds, size=(n, width), p=[0.6, 0.25, 0.15])
        values = rng.gamma(2.0, 1.0, size=(n, width))
        for template in ("promotional", "newsletter"):
            threshold = float(rng.uniform(0.5, 3.0))
            hero, secondary, content = offer_slots_batch(ranked, values, template, threshold)
            for i in range(n):
                alone = offer_slots(ranked[i].tolist(), values[i].tolist(), template, threshold)
                placed = (
                    None if hero[i] < 0 else int(hero[i]),
                    np.flatnonzero(secondary[i]).tolist(),
                    np.flatnonzero(content[i]).tolist(),
                )
                assert placed == alone, (ranked[i], values[i], template, threshold)
                rows += 1
    assert rows > 2000
