"""Explanations: SHAP values that add up to the served prediction, and sentences on the probability scale.

The sentences and the request checks need no models; a tiny seeded LightGBM model checks the SHAP values
against SHAP's own explainer. The tests on the small world's champions (marked slow by their fixture) check
that an explanation adds up to exactly what `/v1/decide` served, at every hour of a window and for every
offer, and the answers of `/v1/explain` and `/v1/decide` with `explain` in process over HTTP.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from sendwise.explain import (
    OPEN,
    contributions,
    describe,
    explain_rows,
    likelihood,
    percent,
    sentence,
    shap_values,
    sigmoid,
)
from serving.schemas import MAX_EXPLAINED_RECIPIENTS, DecideRequest, ExplainRequest, Recipient
from tests.test_service_app import fresh_metrics, served  # noqa: F401 - a fixture, used by name

START = datetime(2026, 12, 1, 7, tzinfo=UTC)
"""The decide window of the small world's tests: its offers are eligible then, and no zone changes its clocks."""


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def figures(text: str) -> list[float]:
    """The percentages a sentence gives, as probabilities."""
    return [float(x) / 100 for x in re.findall(r"(\d+(?:\.\d+)?)%", text)]


def says_more_likely(text: str) -> bool:
    """Whether a sentence says its feature makes the outcome more likely (else: less likely)."""
    if re.search(r"more likely|about (twice|.* times) as likely", text):
        return True
    assert re.search(r"less likely|about (half|a third|a quarter|two thirds) as likely", text), text
    return False


# --- sentences -------------------------------------------------------------------------------------------


def test_a_sentence_gives_the_prediction_and_the_prediction_without_the_feature() -> None:
    log_odds, shap_value = logit(0.31), logit(0.31) - logit(0.15)

    said = sentence("open_rate", 0.42, shap_value, log_odds)

    assert said == "the customer's past open rate (42%) makes an open about twice as likely: 31% instead of 15%"


@pytest.mark.parametrize(
    ("prediction", "without", "words"),
    [
        (0.30, 0.10, "makes an open about three times as likely"),
        (0.25, 0.16, "makes an open about one and a half times as likely"),
        (0.20, 0.16, "makes an open more likely"),
        (0.20, 0.19, "makes an open slightly more likely"),
        (0.10, 0.20, "makes an open about half as likely"),
        (0.05, 0.20, "makes an open about a quarter as likely"),
        (0.01, 0.20, "makes an open about 20 times less likely"),
        (0.16, 0.20, "makes an open less likely"),
        (0.195, 0.20, "makes an open slightly less likely"),
    ],
)
def test_the_words_say_how_many_times_as_likely(prediction: float, without: float, words: str) -> None:
    assert likelihood(prediction, without, OPEN) == words
    said = sentence("n_emails", 12.0, logit(prediction) - logit(without), logit(prediction))
    assert said.startswith(f"emails the customer has received (12) {words}: ")
    shown, shown_without = figures(said)
    assert shown == pytest.approx(prediction, rel=0.05) and shown_without == pytest.approx(without, rel=0.05)


def test_figures_are_as_precise_as_the_smaller_one_needs_and_never_equal() -> None:
    assert [percent(p) for p in (0.31, 0.042, 0.0042, 0.000042)] == ["31%", "4.2%", "0.42%", "0.0042%"]
    small = sentence("sends_7d", 2.0, logit(0.0831) - logit(0.0833), logit(0.0831))
    assert small.endswith("makes an open slightly less likely: 8.31% instead of 8.33%")
    mixed = sentence("open_rate", 0.04, logit(0.071) - logit(0.115), logit(0.071))
    assert mixed.endswith("7.1% instead of 11.5%")
    same = sentence("sends_7d", 2.0, 1e-9, logit(0.2))
    assert same == "emails sent to the customer in the last 7 days (2) hardly changes the chance of an open (20%)"


def test_values_read_as_people_read_them() -> None:
    assert describe("open_rate", 0.375) == "the customer's past open rate (38%)"
    assert describe("is_weekend", 1.0) == "a weekend send"
    assert describe("is_weekend", 0.0) == "a weekday send"
    assert describe("opens_observable", 0.0) == "the customer's opens being hidden by a privacy proxy"
    assert (
        describe("days_since_human_open", float("nan")) == "the time since the customer last opened an email (unknown)"
    )
    assert describe("days_since_session", 12.4) == "the time since the customer last visited the site (12 days)"
    assert describe("utc_offset", -5.0) == "the customer's time zone (UTC-5)"
    assert (
        describe("topic_affinity", 0.0)
        == "the customer's interest in the campaign's topic (none of their product views)"
    )
    assert (
        describe("rhythm_at_hour", 2.469)
        == "the customer's usual site visits and opens at this hour (2.47 times their average hour)"
    )
    assert describe("attr_loyalty_tier", "gold") == "the customer attribute loyalty tier (gold)"
    assert describe("discount_pct", 20.0) == "the size of the discount (20%)"


# --- SHAP values -----------------------------------------------------------------------------------------


def _tiny_model(sigmoid_scale: float = 1.0) -> tuple[lgb.Booster, pd.DataFrame]:
    rng = np.random.default_rng(5)
    n = 2000
    design = pd.DataFrame(
        {
            "open_rate": rng.uniform(0, 1, n),
            "sends_7d": rng.integers(0, 6, n).astype(float),
            "days_since_session": np.where(rng.uniform(size=n) < 0.2, np.nan, rng.exponential(10, n)),
            "attr_tier": pd.Categorical(rng.choice(["gold", "silver", "bronze"], n)),
        }
    )
    signal = 3 * design["open_rate"] - 0.3 * design["sends_7d"] + (design["attr_tier"] == "gold") - 1
    label = (rng.uniform(size=n) < 1 / (1 + np.exp(-signal))).astype(int)
    params = {"objective": "binary", "sigmoid": sigmoid_scale, "verbose": -1, "seed": 5, "num_leaves": 8}
    return lgb.train(params, lgb.Dataset(design, label), num_boost_round=30), design


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_shap_values_add_up_to_the_log_odds_of_the_prediction(scale: float) -> None:
    booster, design = _tiny_model(scale)
    rows = design.iloc[:50]

    values, bases = contributions(booster, rows)
    explained = explain_rows(booster, rows, list(rows.columns), {c: rows[c].to_numpy() for c in rows}, top=2)

    expected = np.log(booster.predict(rows) / (1 - booster.predict(rows)))
    assert np.abs(bases + values.sum(axis=1) - expected).max() < 1e-9
    for e, p in zip(explained, booster.predict(rows), strict=True):
        assert e.probability == pytest.approx(p, abs=1e-12)
        total = e.base_value + sum(d["shap_value"] for d in e.drivers) + e.others
        assert total == pytest.approx(logit(p), abs=1e-9)
        assert len(e.drivers) == 2 and abs(e.drivers[0]["shap_value"]) >= abs(e.drivers[1]["shap_value"])


def test_lightgbm_tree_shap_is_shaps_tree_explainer() -> None:
    """The service takes LightGBM's own TreeSHAP (fast per row); the reports SHAP's explainer: the same values."""
    booster, design = _tiny_model()
    rows = design.iloc[:40]

    ours, bases = contributions(booster, rows)
    theirs, base = shap_values(booster, rows)

    assert np.abs(ours - theirs).max() < 1e-6
    assert np.abs(bases - base).max() < 1e-6


def test_drivers_give_values_as_read_and_sentences_on_the_probability_scale() -> None:
    booster, design = _tiny_model()
    rows = design.iloc[:30]

    for e in explain_rows(booster, rows, list(rows.columns), {c: rows[c].to_numpy() for c in rows}, top=4):
        for d in e.drivers:
            value = d["value"]
            assert value is None or isinstance(value, float | str)
            shown, without = figures(str(d["sentence"]).rsplit(": ", 1)[1])
            assert shown == pytest.approx(e.probability, rel=0.06)
            assert without == pytest.approx(sigmoid(e.log_odds - d["shap_value"]), rel=0.06)
            if "hardly changes" not in d["sentence"]:
                assert says_more_likely(str(d["sentence"])) == (d["shap_value"] > 0) == (shown > without)
            if d["feature"] == "attr_tier":
                assert value in {"gold", "silver", "bronze"}


# --- requests --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"model": "send_time"}, "send_at", "give send_at, a whole UTC hour"),
        ({"model": "send_time", "send_at": "2026-12-01T07:30:00Z"}, "send_at", "must be a whole hour"),
        ({"send_at": "2026-12-01T07:00:00"}, "send_at", "needs a time zone"),
        ({"send_at": "1999-12-31T23:00:00Z"}, "send_at", "an hour of the years 2000 to 2099"),
        ({"send_at": "9999-12-31T23:00:00-05:00"}, "send_at", "an hour of the years 2000 to 2099"),
        ({"model": "next_best_offer"}, "offer_id", "give offer_id"),
        ({"offer_id": "of-01"}, "offer_id", "for model next_best_offer only"),
    ],
)
def test_an_explain_request_names_the_field_it_lacks(body: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as raised:
        ExplainRequest.model_validate({"customer_id": "c-1", **body})
    (error,) = raised.value.errors()
    assert error["loc"] == (field,) and words in error["msg"]


def test_a_send_at_in_another_zone_is_the_same_utc_hour() -> None:
    request = ExplainRequest(customer_id="c-1", model="send_time", send_at="2026-12-01T08:00:00+01:00")  # type: ignore[arg-type]
    assert request.send_at == START


def test_decide_explains_at_most_a_thousand_recipients() -> None:
    def body(n: int) -> dict[str, object]:
        return {"recipients": [{"customer_id": f"c-{i}"} for i in range(n)], "explain": True}

    assert len(DecideRequest.model_validate(body(MAX_EXPLAINED_RECIPIENTS)).recipients) == 1000
    assert len(DecideRequest.model_validate({**body(5000), "explain": False}).recipients) == 5000
    with pytest.raises(ValidationError) as raised:
        DecideRequest.model_validate(body(MAX_EXPLAINED_RECIPIENTS + 1))
    (error,) = raised.value.errors()
    assert error["loc"] == ("explain",)
    assert "at most 1,000 recipients and this request has 1,001" in error["msg"]


# --- on the small world's champions ----------------------------------------------------------------------


def _emailable(customers: pd.DataFrame, n: int) -> list[str]:
    mask = customers["consent_email"] & customers["consent_profiling"]
    return customers.loc[mask, "customer_id"].head(n).tolist()


@pytest.mark.integration
def test_explanations_add_up_to_exactly_what_decide_served(engine, customers) -> None:  # type: ignore[no-untyped-def]
    """For each customer, the hourly open probabilities (curve table, compiled trees) and the offers'
    conversion probabilities (the snapshot's offer table) that /v1/decide served are what the explanations of
    `send_time` at each hour, and of `next_best_offer` for each offer, add up to. The models' calibration is a
    shift of their first tree's leaves, so it is in the base value: nothing is applied after the raw score."""
    from serving.schemas import Campaign

    campaign = Campaign(kind="promotional", topic="outdoor")
    ids = _emailable(customers, 12)
    answer = engine.decide(
        DecideRequest(
            recipients=[Recipient(customer_id=c) for c in ids],
            campaign=campaign,
            window_start=START,
            window_hours=24,
            k_offers=50,
        )
    )
    same_booster = engine.models["open_propensity"].version == engine.models["send_time"].version
    hours = offers = 0
    for d in answer.decisions[:6]:
        assert len(d.hourly_open_probability) == 24
        for k, probability in enumerate(d.hourly_open_probability):
            models = ["send_time", "open_propensity"] if same_booster and k % 6 == 0 else ["send_time"]
            for model in models:
                explained = engine.explain(
                    ExplainRequest(
                        customer_id=d.customer_id, model=model, send_at=START + timedelta(hours=k), campaign=campaign
                    )
                )
                total = (
                    explained.base_value + sum(x.shap_value for x in explained.drivers) + explained.others_shap_value
                )
                assert total == pytest.approx(logit(probability), abs=1e-6), (d.customer_id, k, model)
                assert explained.prediction == pytest.approx(probability, abs=1e-9)
                hours += 1
        assert len(d.offers) >= 10
        for offer in d.offers:
            explained = engine.explain(
                ExplainRequest(
                    customer_id=d.customer_id, model="next_best_offer", offer_id=offer.offer_id, send_at=START, top=30
                )
            )
            assert explained.offer_id == offer.offer_id and explained.send_at is None
            assert explained.base_value + sum(
                x.shap_value for x in explained.drivers
            ) + explained.others_shap_value == (pytest.approx(logit(offer.conversion_probability), abs=1e-6))
            offers += 1
    assert hours >= 6 * 24 and offers >= 60


@pytest.mark.integration
def test_explaining_names_the_strongest_drivers_in_plain_words(engine, customers) -> None:  # type: ignore[no-untyped-def]
    known = _emailable(customers, 1)[0]

    answer = engine.explain(ExplainRequest(customer_id=known, model="open_propensity", top=30))

    assert answer.send_at is not None and answer.send_at > datetime.now(UTC)  # the best hour of the next 24
    assert 0 < answer.prediction < 1 and answer.base_probability == pytest.approx(sigmoid(answer.base_value))
    shap = [d.shap_value for d in answer.drivers]
    assert abs(answer.others_shap_value) < 1e-12  # every feature with a part is listed
    assert [abs(s) for s in shap] == sorted((abs(s) for s in shap), reverse=True) and 0 not in shap
    names = {d.feature for d in answer.drivers}
    assert {"rhythm_vs_peak", "open_rate"} & names
    for d in answer.drivers:
        assert "log-odds" not in d.sentence and "_" not in d.sentence.split(" (")[0]
        shown, without = figures(d.sentence.rsplit(": ", 1)[1])
        assert shown == pytest.approx(answer.prediction, rel=0.06)
        assert without == pytest.approx(
            sigmoid(math.log(answer.prediction / (1 - answer.prediction)) - d.shap_value), rel=0.06
        )
        assert says_more_likely(d.sentence) == (d.shap_value > 0), d.sentence


@pytest.mark.integration
def test_an_offer_unknown_or_not_eligible_is_a_404_naming_it(engine, customers) -> None:  # type: ignore[no-untyped-def]
    from serving.errors import UnknownOffer

    known = _emailable(customers, 1)[0]
    offers = engine.offers.set_index("offer_id")
    ended = offers.index[offers["ends_at"].notna() & (offers["ends_at"] <= pd.Timestamp(START))][0]
    sold_out = offers.index[offers["inventory"].fillna(1) <= 0][0]

    cases = {"of-nope": "no offer 'of-nope' in the offers table", ended: "it ended at", sold_out: "out of stock"}
    for offer_id, words in cases.items():
        with pytest.raises(UnknownOffer) as raised:
            engine.explain(ExplainRequest(customer_id=known, model="next_best_offer", offer_id=offer_id, send_at=START))
        assert raised.value.field == "offer_id" and raised.value.status == 404
        assert words in raised.value.message


@pytest.mark.integration
def test_decide_with_explain_gives_the_drivers_of_each_sent_open_probability(engine, customers) -> None:  # type: ignore[no-untyped-def]
    import orjson

    ids = [*_emailable(customers, 40), *customers.loc[~customers["consent_email"], "customer_id"].head(3)]
    recipients = [Recipient(customer_id=c) for c in ids] + [Recipient(customer_id="new-1", timezone="Asia/Tokyo")]
    request = DecideRequest(recipients=recipients, window_start=START, explain=True, explore_share=0.3)

    answer = engine.decide(request)
    plain = orjson.loads(engine.decide_json(request.model_copy(update={"explain": False})))

    assert all("drivers" not in d for d in plain["decisions"])  # without explain, nothing more is made
    sent = [d for d in answer.decisions if d.send]
    assert len(sent) >= 30 and any(d.explore for d in sent) and sent[-1].cold_start
    for d in answer.decisions:
        if not d.send:
            assert d.drivers is None
            continue
        assert d.drivers is not None and len(d.drivers) == 3
        explained = (
            engine.explain(ExplainRequest(customer_id=d.customer_id, model="send_time", send_at=d.send_at, top=3))
            if not d.cold_start
            else None
        )
        if explained is not None:
            assert explained.prediction == pytest.approx(d.open_probability, abs=1e-9)
            assert [x.model_dump() for x in explained.drivers] == [x.model_dump() for x in d.drivers]
        for driver in d.drivers:
            shown, _ = figures(driver.sentence.rsplit(": ", 1)[1])
            assert shown == pytest.approx(d.open_probability, rel=0.06)


# --- over HTTP, in process -------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.anyio
@pytest.mark.usefixtures("fresh_metrics")
async def test_explain_and_decide_over_the_asgi_app(engine, customers, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    known = _emailable(customers, 1)[0]
    at = START.strftime("%Y-%m-%dT%H:%M:%SZ")
    async with served(engine, tmp_path / "home", monkeypatch) as client:
        decided = await client.post(
            "/v1/decide",
            json={"recipients": [{"customer_id": known}], "window_start": at, "explain": True, "k_offers": 20},
        )
        missing = await client.post("/v1/explain", json={"customer_id": known, "model": "send_time"})
        decision = decided.json()["decisions"][0]
        hour = await client.post(
            "/v1/explain", json={"customer_id": known, "model": "send_time", "send_at": decision["send_at"], "top": 3}
        )
        offer = decision["offers"][0]
        by_offer = await client.post(
            "/v1/explain",
            json={"customer_id": known, "model": "next_best_offer", "offer_id": offer["offer_id"], "send_at": at},
        )
        unknown_offer = await client.post(
            "/v1/explain", json={"customer_id": known, "model": "next_best_offer", "offer_id": "of-nope"}
        )
        too_many = await client.post(
            "/v1/decide", json={"recipients": [{"customer_id": f"c-{i}"} for i in range(1001)], "explain": True}
        )

    assert decided.status_code == 200, decided.text
    assert [d["sentence"] for d in decision["drivers"]] == [d["sentence"] for d in hour.json()["drivers"]]
    assert hour.json()["prediction"] == pytest.approx(decision["open_probability"], abs=1e-9)
    assert by_offer.status_code == 200, by_offer.text
    assert by_offer.json()["prediction"] == pytest.approx(offer["conversion_probability"], abs=1e-7)
    assert "a conversion" in by_offer.json()["drivers"][0]["sentence"]
    assert missing.status_code == 422 and missing.json()["details"][0]["field"] == "send_at"
    assert unknown_offer.status_code == 404 and unknown_offer.json()["details"][0]["field"] == "offer_id"
    assert too_many.status_code == 422
    assert too_many.json()["details"][0]["field"] == "explain"
    assert "at most 1,000 recipients" in too_many.json()["message"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
