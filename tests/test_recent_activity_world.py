"""The simulator's recent-activity effect: a visit shortly before a send makes an open likelier, a recent view of
an offer's category makes it convert better and a purchase in it worse; the truth carries it, and a world made
with it off is the world made before it existed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sendwise.simulator import simulate, simulation_options
from sendwise.simulator.truth import CATEGORIES, HOUR, World

CUSTOMERS, DAYS, SEED = 1500, 28, 5


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, World]:
    made = {}
    for on in (True, False):
        out = tmp_path_factory.mktemp(f"recent-{on}")
        rates, realism = simulation_options(recent_activity=on)
        simulate(out, customers=CUSTOMERS, days=DAYS, seed=SEED, progress=False, rates=rates, realism=realism)
        made[on] = World.load(out)
    return made


def _last_visit_before(site: pd.DataFrame, messages: pd.DataFrame) -> pd.Series:
    visits = site[["customer_id", "occurred_at"]].dropna().rename(columns={"occurred_at": "visit"})
    visits = visits.astype({"visit": "datetime64[us, UTC]"}).sort_values("visit")
    sends = messages[["customer_id", "sent_at"]].astype({"sent_at": "datetime64[us, UTC]"})
    sends = sends.reset_index().sort_values("sent_at")
    joined = pd.merge_asof(
        sends, visits, left_on="sent_at", right_on="visit", by="customer_id", allow_exact_matches=False
    )
    return joined.set_index("index")["visit"].sort_index()


def test_the_last_visit_before_each_send_is_the_sites(worlds: dict[bool, World]) -> None:
    world = worlds[True]
    assert world.truth_dir is not None
    messages = world.messages()
    site = pd.read_parquet(world.truth_dir.parent / "site_events.parquet").drop_duplicates("event_id")
    expected = _last_visit_before(site, messages)
    gap = (messages["last_visit_at"] - expected).dt.total_seconds().abs()
    assert messages["last_visit_at"].notna().mean() > 0.5
    assert (messages["last_visit_at"].isna() == expected.isna()).mean() > 0.99
    assert (gap.fillna(0.0) < 1.0).mean() > 0.98  # the rest: the visit's row is one of the export's deliberate dirt


def test_a_recent_visit_lifts_opens_in_the_data_and_the_truth(worlds: dict[bool, World]) -> None:
    messages = worlds[True].messages()
    delivered = messages[messages["delivered"] & (messages["kind"] != "triggered")]
    hours_since = (delivered["sent_at"] - delivered["last_visit_at"]).dt.total_seconds() / HOUR
    recent = delivered[hours_since < 2]
    older = delivered[~(hours_since < 2)]
    assert len(recent) >= 150
    without = worlds[True].open_probability(
        recent["customer_id"],
        recent["sent_at"],
        kind=recent["kind"].tolist(),
        topic=recent["topic"].tolist(),
        sends_in_prev_7d=recent["sends_in_prev_7d"],
        last_visit_at=pd.Series(pd.NaT, index=recent.index, dtype="datetime64[us, UTC]"),
    )
    lift = recent["open_probability"].mean() / without.mean()
    assert 1.3 < lift < 2.5
    assert recent["human_open_72h"].mean() == pytest.approx(recent["open_probability"].mean(), abs=0.06)
    assert recent["human_open_72h"].mean() > older["human_open_72h"].mean() + 0.05


def test_recent_views_and_purchases_move_the_conversion_truth(worlds: dict[bool, World]) -> None:
    world = worlds[True]
    params = world.customer_params
    offers = world.offer_params
    category = pd.Index(CATEGORIES).get_indexer(offers["category"].fillna(""))
    now = world.conversion_probability(params["customer_id"])
    base = worlds[False].conversion_probability(params["customer_id"])
    viewed = params["last_view_category"].to_numpy()[:, None] == category[None, :]
    bought = params["last_purchase_category"].to_numpy()[:, None] == category[None, :]
    viewed &= category[None, :] >= 0
    bought &= category[None, :] >= 0
    assert viewed.sum() > 100 and bought.sum() > 30
    assert np.allclose(now[~viewed & ~bought], base[~viewed & ~bought])
    assert (np.log(now / base)[viewed & ~bought] > 0).all()
    assert (np.log(now / base)[bought & ~viewed] < 0).all()


def test_a_world_without_the_effect_keeps_its_old_truth(worlds: dict[bool, World]) -> None:
    world = worlds[False]
    assert world.meta["realism"]["recent_activity"] is False
    messages = world.messages()
    assert messages["last_visit_at"].isna().all()
    assert "last_visit_s" not in world.customer_params
    sample = messages.head(200)
    visited = world.open_probability(
        sample["customer_id"],
        sample["sent_at"],
        kind=sample["kind"].tolist(),
        topic=sample["topic"].tolist(),
        sends_in_prev_7d=sample["sends_in_prev_7d"],
        last_visit_at=sample["sent_at"] - pd.Timedelta(minutes=5),
    )
    np.testing.assert_allclose(visited, sample["open_probability"], rtol=1e-9)
