"""Offers without a next-best-offer model: ranked by what each earned per exposure in the logged data (the
home's `offer_values.parquet`), or by margin where nothing was logged, and the reasons say so. On the small
world's home with its offer champion left out, directly and through the ASGI app in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from features.offer_values import OfferValues, offer_values
from sendwise.raw import load_table
from serving.schemas import DecideRequest, Recipient, RenderRequest
from tests.conftest import with_own_decision_log
from tests.test_service_app import fresh_metrics, served  # noqa: F401 - a fixture, used by name

pytestmark = [pytest.mark.integration]
START = datetime(2026, 12, 21, 7, tzinfo=UTC)
LOGGED_REASON = (
    "no offer model is trained yet, so offers are ranked by what each earned per exposure in the logged data "
    "(inverse-propensity weighted, shrunk toward the mean; {exposures:,} exposures, {conversions:,} conversions)"
)
MARGIN_REASON = (
    "no offer model is trained yet, so offers are ranked by margin (what a conversion is worth): no offer exposure "
    "in the logged data has a closed conversion window, and conversion probabilities are unknown (given as 0)"
)


def _without_offer_model(pipeline_home, values: OfferValues | None = None):  # type: ignore[no-untyped-def]
    """The home's engine as if no offer model had been trained."""
    import sendwise.registry as registry_module
    from serving.engine import Engine

    real = registry_module.champion
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry_module, "champion", lambda c, n: None if n == "next_best_offer" else real(c, n))
        if values is not None:
            patch.setattr(OfferValues, "read", classmethod(lambda cls, path: values))
        engine = Engine.load(pipeline_home.settings)
    assert "next_best_offer" not in engine.models and "open_propensity" in engine.models
    return engine


@pytest.fixture(scope="module")
def loaded_fallback(pipeline_home):  # type: ignore[no-untyped-def]
    return _without_offer_model(pipeline_home)


@pytest.fixture
def fallback(loaded_fallback, pipeline_home, tmp_path: Path, monkeypatch):  # type: ignore[no-untyped-def]
    """The engine without an offer model, with a decision log of this test's own."""
    return with_own_decision_log(loaded_fallback, pipeline_home.settings, tmp_path / "own-home", monkeypatch)


@pytest.fixture(scope="module")
def table(pipeline_home) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """What the pipeline's feature build wrote: each offer's logged value."""
    return pd.read_parquet(pipeline_home.settings.feature_tables_dir / "offer_values.parquet").set_index("offer_id")


@pytest.fixture(scope="module")
def eligible(pipeline_home) -> list[str]:  # type: ignore[no-untyped-def]
    """The catalog's offers in stock and inside their dates at START, in catalog order."""
    offers = load_table(pipeline_home.settings, "offers")
    assert offers is not None
    at = pd.Timestamp(START)
    keep = (
        (offers["inventory"].fillna(1) > 0)
        & (offers["starts_at"].isna() | (offers["starts_at"] <= at))
        & (offers["ends_at"].isna() | (offers["ends_at"] > at))
    )
    assert not keep.all()  # the world has a sold-out and an expired offer
    return offers.loc[keep, "offer_id"].tolist()


def _decide(engine, ids: list[str], start: datetime = START, **kwargs):  # type: ignore[no-untyped-def]
    recipients = [Recipient(customer_id=i) for i in ids] + [Recipient(customer_id="new-1", timezone="Asia/Tokyo")]
    return engine.decide(DecideRequest(recipients=recipients, window_start=start, **kwargs))


def _expected_ranking(table: pd.DataFrame, eligible: list[str]) -> list[str]:
    """The eligible offers by their incremental value over the control arm, from the table alone."""
    return sorted(eligible, key=lambda o: -table.loc[o, "incremental_value"])


def test_the_pipeline_wrote_each_offers_logged_value(table, pipeline_home) -> None:  # type: ignore[no-untyped-def]
    offers = load_table(pipeline_home.settings, "offers")
    assert sorted(table.index) == sorted(offers["offer_id"])
    assert (table["exposures"] > 100).all() and table["weighted"].all()  # the world logs propensities
    assert (table.loc[table["kind"] == "control", "incremental_value"] == 0).all()
    # inverse-propensity weighted, then shrunk: neither the plain rate nor the weighted one is kept as it is
    assert (table["ips_conversion_rate"] != table["conversion_rate"]).all()
    assert (table["shrunk_conversion_rate"] != table["ips_conversion_rate"]).all()
    assert 1 < table["prior_exposures"].iloc[0] < table["effective_exposures"].mean()


def test_offers_are_ranked_by_their_logged_value_and_the_reasons_say_so(fallback, customers, table, eligible) -> None:  # type: ignore[no-untyped-def]
    ids = customers["customer_id"].head(60).tolist()
    answer = _decide(fallback, ids, k_offers=50)
    expected = _expected_ranking(table, eligible)
    assert expected != sorted(eligible, key=lambda o: -table.loc[o, "margin"])  # not merely by margin
    control = next(o for o in eligible if table.loc[o, "kind"] == "control")
    reason = LOGGED_REASON.format(exposures=table["exposures"].sum(), conversions=table["conversions"].sum())
    assert answer.model_versions["next_best_offer"] is None
    sent = [d for d in answer.decisions if d.send]
    assert len(sent) >= 40 and sent[-1].cold_start
    for d in answer.decisions:
        if not d.send:
            assert d.offers == [] and reason not in d.reasons
            continue
        assert [o.offer_id for o in d.offers] == expected
        assert reason in d.reasons
        for o in d.offers:
            row = table.loc[o.offer_id]
            assert o.kind == row["kind"]
            assert o.conversion_probability == pytest.approx(row["shrunk_conversion_rate"], rel=1e-12)
            assert o.expected_value == pytest.approx(row["shrunk_conversion_rate"] * row["margin"], rel=1e-12)
            assert o.incremental_value == pytest.approx(row["incremental_value"], rel=1e-9, abs=1e-12)
        assert next(o for o in d.offers if o.offer_id == control).incremental_value == 0.0
        # The modules carry the offers ranked ahead of the control arm, the best one as the hero.
        assert "hero_offer" in d.modules and "secondary_offers" in d.modules
    shown = next(d for d in sent if not d.cold_start)
    assert [o.offer_id for o in shown.offers] == [o.offer_id for o in sent[-1].offers]  # the same for everyone


def test_k_offers_offer_ids_and_eligibility_still_apply(fallback, customers, table, eligible) -> None:  # type: ignore[no-untyped-def]
    ids = customers.loc[customers["consent_email"], "customer_id"].head(10).tolist()
    expected = _expected_ranking(table, eligible)
    for d in [d for d in _decide(fallback, ids, k_offers=2).decisions if d.send]:
        assert [o.offer_id for o in d.offers] == expected[:2]
    asked = ["of-01", "of-02", "of-03", "of-09"]  # of-09 has expired by START
    for d in [d for d in _decide(fallback, ids, offer_ids=asked, k_offers=5).decisions if d.send]:
        assert [o.offer_id for o in d.offers] == [o for o in expected if o in asked]
        assert all(o.incremental_value is None for o in d.offers)  # no control arm among them
    gone = _decide(fallback, ids[:2], offer_ids=["of-09"]).decisions
    for d in [d for d in gone if d.send]:
        assert d.offers == [] and any(r.startswith("no offer is eligible for this window") for r in d.reasons)


def test_no_repeat_leaves_out_offers_shown_recently_from_the_logged_ranking(  # type: ignore[no-untyped-def]
    fallback, pipeline_home, customers, table
) -> None:
    events = load_table(pipeline_home.settings, "offer_events")
    assert events is not None
    data_end = pd.Timestamp(events["occurred_at"].max()).ceil("h").to_pydatetime()
    recent = events[(events["event"] == "exposed") & (events["occurred_at"] >= data_end - timedelta(days=14))]
    control = set(table.index[table["kind"] == "control"])
    shown = recent[~recent["offer_id"].isin(control)].groupby("customer_id")["offer_id"].agg(set)
    ok = set(customers.loc[customers["consent_email"], "customer_id"])
    ids = [c for c in shown.index if c in ok][:30]
    free = _decide(fallback, ids, data_end, k_offers=50).decisions
    limited = _decide(fallback, ids, data_end, k_offers=50, constraints={"no_repeat_offer_days": 14}).decisions
    checked = 0
    for a, b in zip(free[:-1], limited[:-1], strict=True):
        if not a.send:
            continue
        left_out = shown[a.customer_id] & {o.offer_id for o in a.offers}  # among the offers eligible then
        assert [o.offer_id for o in b.offers] == [o.offer_id for o in a.offers if o.offer_id not in left_out]
        if left_out:
            said = next(r for r in b.reasons if r.startswith("left out, shown to this customer in the 14 days"))
            assert set(said.split(": ")[1].split(", ")) == left_out
            checked += 1
    assert checked >= 15


def test_status_and_rendering_know_the_fallback(fallback, customers, table, eligible) -> None:  # type: ignore[no-untyped-def]
    status = fallback.status()
    assert status["models"]["next_best_offer"] is None
    assert any(
        r.startswith("no champion for next_best_offer: offers are ranked by what each earned per exposure")
        for r in status["reasons"]
    )
    known = customers.loc[customers["consent_email"], "customer_id"].iloc[0]
    email = fallback.render(RenderRequest(customer_id=known, template="promotional"))
    modules = {m.name: m.reason for m in email.modules}
    first, second = _expected_ranking(table, eligible)[:2]
    assert email.send and modules["hero_offer"].startswith(f"offer {first} expected value ")
    assert modules["secondary_offers"].startswith(f"next offers: offer {second} ranked 2nd")


def test_with_an_offer_champion_nothing_changes(engine, customers) -> None:  # type: ignore[no-untyped-def]
    ids = customers.loc[customers["consent_email"] & customers["consent_profiling"], "customer_id"].head(20).tolist()
    sent = [d for d in _decide(engine, ids, k_offers=50).decisions if d.send]
    assert not any("no offer model" in r for d in sent for r in d.reasons)
    assert len({tuple(o.offer_id for o in d.offers) for d in sent}) > 1  # the model ranks per customer
    assert not any("next_best_offer" in r for r in engine.status()["reasons"])


def test_without_logged_exposures_offers_are_ranked_by_margin(  # type: ignore[no-untyped-def]
    pipeline_home, tmp_path, monkeypatch, customers, eligible
) -> None:
    offers = load_table(pipeline_home.settings, "offers")
    nothing_closed = pd.DataFrame(
        {
            "customer_id": ["c-1"],
            "offer_id": ["of-01"],
            "exposed_at": [pd.Timestamp(START) - pd.Timedelta(days=1)],
            "propensity": [0.5],
            "decision_id": [None],
            "converted": [False],
            "value": [np.nan],
        }
    )
    values = OfferValues.from_table(offer_values(nothing_closed, offers, pd.Timestamp(START), 7))
    engine = _without_offer_model(pipeline_home, values)
    with_own_decision_log(engine, pipeline_home.settings, tmp_path / "own-home", monkeypatch)
    ids = customers.loc[customers["consent_email"], "customer_id"].head(10).tolist()
    margins = offers.set_index("offer_id")["margin"]
    kinds = offers.set_index("offer_id")["kind"]
    # by margin, the control arm (sending no offer, whose worth nothing logged can tell) last
    expected = sorted(eligible, key=lambda o: (kinds[o] == "control", -margins[o]))
    assert kinds[expected[-1]] == "control" and margins[expected[-1]] > margins[expected[-2]]
    for d in [d for d in _decide(engine, ids, k_offers=50).decisions if d.send]:
        assert [o.offer_id for o in d.offers] == expected
        assert all(o.conversion_probability == 0.0 and o.expected_value == 0.0 for o in d.offers)
        assert all(o.incremental_value is None for o in d.offers)
        assert MARGIN_REASON in d.reasons
        assert "hero_offer" in d.modules
    assert any("offers are ranked by margin" in r for r in engine.status()["reasons"])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(fallback, tmp_path: Path, monkeypatch, request) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    """BentoML's ASGI app of the service over the engine without an offer model, no token."""
    request.getfixturevalue("fresh_metrics")  # a metrics registry of its own
    async with served(fallback, tmp_path / "home", monkeypatch) as http:
        yield http


@pytest.mark.anyio
async def test_decide_over_the_asgi_app_answers_the_same(client, fallback, customers, table, eligible) -> None:  # type: ignore[no-untyped-def]
    ids = customers.loc[customers["consent_email"], "customer_id"].head(5).tolist()
    body = {
        "recipients": [{"customer_id": i} for i in ids] + [{"customer_id": "new-7", "timezone": "Europe/Berlin"}],
        "window_start": START.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "k_offers": 4,
    }
    response = await client.post("/v1/decide", json=body)
    models = await client.get("/v1/models")

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model_versions"]["next_best_offer"] is None
    direct = fallback.decide(DecideRequest.model_validate(body)).decisions
    expected = _expected_ranking(table, eligible)[:4]
    reason = LOGGED_REASON.format(exposures=table["exposures"].sum(), conversions=table["conversions"].sum())
    sent = [d for d in answer["decisions"] if d["send"]]
    assert len(sent) >= 4
    for d, same in zip(answer["decisions"], direct, strict=True):
        if not d["send"]:
            continue
        assert [o["offer_id"] for o in d["offers"]] == expected == [o.offer_id for o in same.offers]
        assert [o["expected_value"] for o in d["offers"]] == [o.expected_value for o in same.offers]
        assert reason in d["reasons"]
    assert any("no champion for next_best_offer: offers are ranked by what each" in r for r in models.json()["reasons"])
