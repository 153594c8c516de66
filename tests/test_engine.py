"""The decision functions directly, on the small world's champions: values, not shapes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import pandas as pd
import pytest

from sendwise.raw import load_table
from sendwise.simulator import World
from serving.schemas import DecideRequest, ExplainRequest, Recipient, RenderRequest

pytestmark = [pytest.mark.integration]
START = datetime(2026, 12, 1, 7, tzinfo=UTC)


def _decide(engine, ids: list[str], **kwargs):  # type: ignore[no-untyped-def]
    request = DecideRequest(recipients=[Recipient(customer_id=i) for i in ids], window_start=START, **kwargs)
    return engine.decide(request)


def _logged(engine) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    """The engine's decision log, by decision id."""
    lines = [
        line for p in sorted(engine.settings.decisions_dir.glob("*.jsonl")) for line in p.read_bytes().splitlines()
    ]
    return {entry["decision_id"]: entry for entry in map(orjson.loads, lines)}


def test_decisions_in_order_with_send_at_at_the_best_hour(engine, customers) -> None:  # type: ignore[no-untyped-def]
    ids = customers.loc[customers["consent_email"] & customers["consent_profiling"], "customer_id"].head(60).tolist()
    answer = _decide(engine, ids, window_hours=36)
    assert [d.customer_id for d in answer.decisions] == ids
    assert len({d.decision_id for d in answer.decisions}) == len(ids)
    assert set(answer.model_versions) == {"open_propensity", "send_time", "next_best_offer"}
    best_hours = set()
    sent = [d for d in answer.decisions if d.send]
    assert len(sent) >= 50  # the rest unsubscribed, complained or hard-bounced
    for d in answer.decisions:
        if not d.send:  # consented, but unsubscribed since: still scored, never scheduled
            assert "unsubscribed" in d.reasons[0] and d.send_at is None and d.offers == []
            assert len(d.hourly_open_probability) == 36
            continue
        curve = np.array(d.hourly_open_probability)
        assert len(curve) == 36 and ((curve >= 0) & (curve <= 1)).all()
        k = (d.send_at - START) / timedelta(hours=1)
        assert k == int(k) and 0 <= k < 36
        assert d.open_probability == curve[int(k)] == curve.max()
        assert not d.explore and d.propensity == 1.0
        best_hours.add(d.send_at.hour)
    assert len(best_hours) >= 4  # people in many zones with their own hours do not share one best hour


def test_no_consent_no_send_no_offer(engine, customers) -> None:  # type: ignore[no-untyped-def]
    refused = customers.loc[~customers["consent_email"], "customer_id"].head(10).tolist()
    assert refused
    for d in _decide(engine, refused).decisions:
        assert d.send is False and d.send_at is None and d.offers == [] and d.open_probability is None
        assert d.hourly_open_probability == [] and d.modules == []
        assert "no email consent" in d.reasons[0]


def test_offers_ranked_by_value_over_the_control_arm(engine, customers) -> None:  # type: ignore[no-untyped-def]
    ids = customers.loc[customers["consent_email"], "customer_id"].head(30).tolist()
    answer = _decide(engine, ids, k_offers=20)
    offers = load_table(engine.settings, "offers")
    ineligible = set(offers.loc[(offers["inventory"] == 0) | (offers["ends_at"] < pd.Timestamp(START)), "offer_id"])
    assert ineligible  # the world has a sold-out and an expired offer
    for d in [d for d in answer.decisions if d.send]:
        assert d.offers and not ineligible & {o.offer_id for o in d.offers}
        control = [o for o in d.offers if o.kind == "control"]
        assert len(control) == 1 and control[0].incremental_value == pytest.approx(0.0)
        values = [o.incremental_value for o in d.offers]
        assert values == sorted(values, reverse=True)
        for o in d.offers:
            assert 0 < o.conversion_probability < 1
            assert o.incremental_value == pytest.approx(o.expected_value - control[0].expected_value)
    limited = _decide(engine, ids[:3], k_offers=2, offer_ids=["of-01", "of-02", "of-03"])
    for d in limited.decisions:
        assert len(d.offers) == 2 and {o.offer_id for o in d.offers} <= {"of-01", "of-02", "of-03"}


def test_cold_start_uses_the_context_given(engine) -> None:  # type: ignore[no-untyped-def]
    tokyo = Recipient(customer_id="new-1", timezone="Asia/Tokyo", interests=["books"])
    new_york = Recipient(customer_id="new-2", timezone="America/New_York", interests=["books"])
    answer = engine.decide(DecideRequest(recipients=[tokyo, new_york], window_start=START))
    a, b = answer.decisions
    assert a.cold_start and b.cold_start and a.send and b.send
    assert "unknown customer" in a.reasons[0] and "Asia/Tokyo" in a.reasons[0]
    # The same pooled daily rhythm, shifted by the 14 hours between the zones.
    assert a.send_at != b.send_at
    assert np.corrcoef(np.roll(a.hourly_open_probability, 14), b.hourly_open_probability)[0, 1] > 0.5


def test_cold_start_send_time_follows_the_rhythm_of_the_zone(engine, pipeline_home) -> None:  # type: ignore[no-untyped-def]
    priors = pd.read_parquet(pipeline_home.settings.feature_tables_dir / "rhythm_priors.parquet")
    zones = priors[priors["timezone"] != ""].sort_values("customers", ascending=False)["timezone"].head(4).tolist()
    recipients = [Recipient(customer_id=f"new-{k}", timezone=z) for k, z in enumerate(zones)]
    answer = engine.decide(DecideRequest(recipients=recipients, window_start=START))
    stamps = pd.date_range(START, periods=24, freq="h")
    world = World.load(pipeline_home.world)
    true_zones = world.customers.set_index("customer_id")["timezone"]
    own_peaks, local_hours = [], []
    for zone, decision in zip(zones, answer.decisions, strict=True):
        assert decision.cold_start and decision.send and zone in decision.reasons[0]
        prior = priors.set_index("timezone").loc[zone]
        local = stamps.tz_convert(zone)
        rhythm = np.where(
            local.dayofweek >= 5, np.stack(prior["weekend"])[local.hour], np.stack(prior["weekday"])[local.hour]
        )
        curve = np.array(decision.hourly_open_probability)
        # More of the zone's activity at an hour never lowers the prediction: the rhythm's peak is the curve's.
        assert curve[int(rhythm.argmax())] == pytest.approx(curve.max(), abs=1e-9)
        own_peaks.append(int(np.stack(prior["weekday"]).argmax()))
        local_hours.append(decision.send_at.astimezone(ZoneInfo(zone)).hour)
        # Against the truth: the hour is as good as the best one, on average over the zone's own customers.
        own_customers = true_zones.index[true_zones == zone].to_numpy()
        true = world.hourly_open_probability(own_customers, START, hours=24).mean(axis=0)
        hour = int((decision.send_at - START) / timedelta(hours=1))
        assert true[hour] / true.max() > 0.95, zone
    # A window of weekdays: each zone's email goes out at its own prior's weekday peak, in its own local time.
    assert local_hours == own_peaks
    # Each zone has its own prior (fitted on its customers), not one global default.
    global_prior = priors.set_index("timezone").loc[""]
    assert any(not np.allclose(np.stack(p), np.stack(global_prior["weekday"])) for p in priors["weekday"][1:])


def test_a_thin_history_says_so(engine, customers) -> None:  # type: ignore[no-untyped-def]
    ids = customers.loc[customers["consent_email"] & customers["consent_profiling"], "customer_id"].tolist()
    decisions = [d for d in _decide(engine, ids[:400]).decisions if d.send]
    said = [r for d in decisions for r in d.reasons if "prediction rests on" in r]
    assert len(said) == len(decisions)
    assert any("little history" in r for r in said) and any("little history" not in r for r in said)


def test_exploration_share_and_propensities(engine, customers) -> None:  # type: ignore[no-untyped-def]
    ids = customers.loc[customers["consent_email"], "customer_id"].head(400).tolist()
    answer = _decide(engine, ids, explore_share=0.25)
    sent = [d for d in answer.decisions if d.send]
    explored = [d for d in sent if d.explore]
    assert 0.15 < len(explored) / len(sent) < 0.35
    for d in explored:
        k = int((d.send_at - START) / timedelta(hours=1))
        curve = np.array(d.hourly_open_probability)
        if curve[k] < curve.max():  # not the best hour (where two hours tie, the rhythm picked the best)
            assert d.propensity == pytest.approx(0.25 / 24)
        elif (curve == curve.max()).sum() == 1:
            assert d.propensity == pytest.approx(0.25 / 24 + 0.75)
        else:
            assert d.propensity in (pytest.approx(0.25 / 24), pytest.approx(0.25 / 24 + 0.75))
    for d in sent:
        if not d.explore:
            assert d.propensity == pytest.approx(0.75 + 0.25 / 24)
    logged = _logged(engine)  # the test's own log: these decisions and no others
    assert sorted(logged) == sorted(d.decision_id for d in answer.decisions)
    for d in answer.decisions:
        assert (logged[d.decision_id]["explore"], logged[d.decision_id]["propensity"]) == (d.explore, d.propensity)


def test_render_personalizes_and_always_offers_unsubscribe(engine, customers) -> None:  # type: ignore[no-untyped-def]
    known = customers.loc[customers["consent_email"], "customer_id"].iloc[0]
    for template in ("promotional", "newsletter"):
        email = engine.render(RenderRequest(customer_id=known, template=template))
        assert email.send and "unsubscribe" in email.html.lower() and "unsubscribe" in email.text.lower()
        assert email.modules and all(m.reason for m in email.modules)
    refused = customers.loc[~customers["consent_email"], "customer_id"].iloc[0]
    blocked = engine.render(RenderRequest(customer_id=refused))
    assert not blocked.send and blocked.html is None


def test_explain_names_drivers_in_plain_words(engine, customers) -> None:  # type: ignore[no-untyped-def]
    known = customers.loc[customers["consent_email"] & customers["consent_profiling"], "customer_id"].iloc[0]
    answer = engine.explain(ExplainRequest(customer_id=known, model="open_propensity", top=4))
    assert len(answer.drivers) == 4 and 0 < answer.prediction < 1
    assert all(re.search(r"makes an open .*likely: [\d.]+% instead of [\d.]+%$", d.sentence) for d in answer.drivers)
    total = answer.base_value + sum(d.shap_value for d in answer.drivers) + answer.others_shap_value
    assert total == pytest.approx(np.log(answer.prediction / (1 - answer.prediction)), abs=1e-9)


def test_decision_log_records_the_offers_each_email_carries(engine, customers) -> None:  # type: ignore[no-untyped-def]
    ids = customers.loc[customers["consent_email"], "customer_id"].head(40).tolist()
    answer = _decide(engine, ids, window_hours=6)
    logged = _logged(engine)
    assert len(logged) == len(ids)  # the test's own log
    for d in answer.decisions:
        entry = logged[d.decision_id]
        assert entry["send"] == d.send and entry["holdout"] is False
        if not d.send:
            assert entry["exposed_offer_ids"] == [] and entry["send_at"] is None
            continue
        assert entry["send_at"] == d.send_at.isoformat()
        ahead = []  # the modules carry offers ranked ahead of the control arm: a hero and up to two more
        for o in d.offers:
            if o.kind == "control":
                break
            ahead.append(o.offer_id)
        shown = entry["exposed_offer_ids"]
        assert set(ahead[:2]) <= set(shown) <= set(ahead) and len(shown) <= 3


def test_open_log_odds_are_a_customer_part_plus_an_hour_part(engine, customers) -> None:  # type: ignore[no-untyped-def]
    """No tree mixes the hour features with the others, so swapping hours shifts every customer alike."""
    from features.transform import HOUR_FEATURES, open_design

    ids = customers.loc[customers["consent_email"] & customers["consent_profiling"], "customer_id"].head(40).tolist()
    matrix = engine.online.for_recipients([Recipient(customer_id=i) for i in ids]).matrix
    n, hours = len(ids), 24
    window = pd.date_range(START, periods=hours, freq="h").tz_convert(None).to_numpy()
    stamps = pd.Series(np.tile(window, n)).dt.tz_localize("UTC")
    design = open_design(
        matrix, np.repeat(np.arange(n), hours), stamps, np.full(n * hours, "promotional"), np.full(n * hours, None)
    )
    booster = engine.models["open_propensity"].booster
    columns = booster.feature_name()
    assert set(HOUR_FEATURES) <= set(columns)
    hour_columns = list(HOUR_FEATURES)
    # Every customer row with the hour features of customer 0's 24 hours.
    swapped = design.copy()
    swapped[hour_columns] = np.tile(design[hour_columns].to_numpy()[:hours], (n, 1))
    raw = booster.predict(swapped[columns], raw_score=True).reshape(n, hours)
    shifts = raw - raw[:, :1]
    assert np.ptp(shifts, axis=0).max() < 1e-9  # the same hour effect for every customer
    assert np.ptp(raw[:, 0]) > 0.1  # while the customers themselves differ


def test_curves_from_the_hour_table_equal_scoring_every_hour(engine, customers, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The campaign-scale curve (a row per customer plus a table of hours) is the booster's own, hour by hour."""
    import serving.curves as curves_module

    ids = customers.loc[customers["consent_email"], "customer_id"].head(300).tolist()
    saturday = datetime(2026, 12, 5, 3, tzinfo=UTC)  # the window crosses a weekend in every zone
    answer = engine.decide(
        DecideRequest(recipients=[Recipient(customer_id=i) for i in ids], window_start=saturday, window_hours=60)
    )
    fast = np.array([d.hourly_open_probability for d in answer.decisions])
    assert engine.curves._scorers[id(engine.models["send_time"].booster)] is not None  # the table was used
    matrix = engine.online.for_recipients([Recipient(customer_id=i) for i in ids]).matrix
    booster = engine.models["send_time"].booster
    design = curves_module.window_design(matrix, np.arange(len(ids)), saturday, 60, "promotional", None)
    direct = np.asarray(booster.predict(design[booster.feature_name()])).reshape(len(ids), 60)
    assert np.abs(fast - direct).max() < 1e-9
    # A champion whose hour part cannot be tabulated (here: a tolerance nothing meets) is scored hour by hour.
    monkeypatch.setattr(curves_module, "CURVE_TOLERANCE", -1.0)
    monkeypatch.setattr(engine.curves, "_scorers", {})
    again = engine.decide(
        DecideRequest(recipients=[Recipient(customer_id=i) for i in ids[:40]], window_start=saturday, window_hours=60)
    )
    assert engine.curves._scorers[id(engine.models["send_time"].booster)] is None
    slow = np.array([d.hourly_open_probability for d in again.decisions])
    assert np.abs(slow - direct[:40]).max() < 1e-12


def test_a_label_given_where_an_attribute_holds_numbers_makes_the_column_labels() -> None:
    """An unknown recipient's context is written into the batch's attribute arrays; a frame would upcast a
    numeric column to objects for a label, and the models then read the column as categorical."""
    from features.transform import is_label, set_attribute

    attributes = {
        "attr_age": np.array([31.0, np.nan, 40.0]),
        "attr_tier": np.array(["gold", np.nan, "basic"], dtype=object),
    }
    set_attribute(attributes, "attr_age", 1, 25)
    set_attribute(attributes, "attr_tier", 1, "silver")
    assert attributes["attr_age"].dtype == np.float64 and attributes["attr_age"][1] == 25.0
    assert attributes["attr_tier"].tolist() == ["gold", "silver", "basic"]
    set_attribute(attributes, "attr_age", 2, "forty")
    assert is_label(attributes["attr_age"]) and attributes["attr_age"].tolist() == [31.0, 25.0, "forty"]
    assert not is_label(np.array([True, False])) and is_label(np.array(["a"]))


def test_few_categories_are_coded_as_pandas_codes_them() -> None:
    """A few rows are coded with a dictionary instead of `pd.factorize`: the same codes and names."""
    from features.localtime import FEW_ROWS
    from features.transform import _factorize

    values = np.array(["outdoor", None, "books", "outdoor", np.nan, pd.NA, ""], dtype=object)
    for rows in (values, np.resize(values, FEW_ROWS + 1)):
        codes, names = _factorize(rows)
        expected, distinct = pd.factorize(rows)
        assert codes.tolist() == expected.tolist() and names == [str(v) for v in distinct]
    assert _factorize(values)[0].tolist() == [0, -1, 1, 0, -1, -1, 2]


def test_the_matrix_serving_scores_equals_the_frame_training_reads(engine, customers) -> None:  # type: ignore[no-untyped-def]
    """Serving codes labels itself instead of building the frame; the booster must see the same numbers."""
    from features.transform import lightgbm_matrix, open_columns

    ids = customers["customer_id"].head(300).tolist()
    recipients = [Recipient(customer_id=i) for i in ids] + [
        Recipient(
            customer_id="new-1", timezone="Asia/Tokyo", interests=["Outdoor"], attributes={"attr_loyalty_tier": "gold"}
        ),
        Recipient(customer_id="new-2"),
    ]
    matrix = engine.online.for_recipients(recipients).matrix
    n = len(recipients)
    for rows in (np.arange(n), np.array([n - 2]), np.array([5])):  # a campaign, and single recipients
        columns = open_columns(
            matrix,
            rows,
            pd.Series([pd.Timestamp(START)] * len(rows)),
            np.where(rows % 2 == 0, "newsletter", "promotional"),
            np.array(["outdoor"] * len(rows), dtype=object),
        )
        for name in ("open_propensity", "send_time"):
            booster = engine.models[name].booster
            coded = lightgbm_matrix(columns, booster)
            assert coded is not None
            framed = booster.predict(columns.frame()[booster.feature_name()], raw_score=True)
            assert np.array_equal(booster.predict(coded, raw_score=True), framed)
        # one instant for every row (what the engine passes: the window start) is the same design
        at_once = open_columns(
            matrix,
            rows,
            pd.Timestamp(START),
            np.where(rows % 2 == 0, "newsletter", "promotional"),
            np.array(["outdoor"] * len(rows), dtype=object),
        )
        pd.testing.assert_frame_equal(at_once.frame(), columns.frame())
    assert any(c in columns.categories for c in matrix.attributes) or not matrix.attributes
    assert "campaign_kind" in columns.categories
    # a booster whose categorical features are not the design's is scored from the frame
    booster = engine.models["open_propensity"].booster
    trained = booster.pandas_categorical
    try:
        booster.pandas_categorical = [*trained, ["extra"]]
        assert lightgbm_matrix(columns, booster) is None
    finally:
        booster.pandas_categorical = trained


def test_the_hour_table_made_a_chunk_at_a_time_is_the_table_made_whole(engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The grid's design is scored `GRID_CHUNK_ROWS` at a time (its whole design held about 1 GB): the same table."""
    import serving.curves as curves_module

    booster = engine.models["send_time"].booster
    matrix = engine.online.for_recipients([Recipient(customer_id="c-000001")]).matrix
    reference = curves_module.window_design(
        matrix, np.arange(1), datetime(2026, 12, 5, 3, tzinfo=UTC), 1, "promotional", None
    )
    whole = curves_module.CurveScorer.build(booster, reference)
    monkeypatch.setattr(curves_module, "GRID_CHUNK_ROWS", 997)  # a prime: chunks end mid-way through every axis
    chunked = curves_module.CurveScorer.build(booster, reference)
    assert whole is not None and chunked is not None and whole.table.size > 3 * 997
    assert np.array_equal(chunked.table, whole.table)


def test_a_decide_made_in_parts_answers_and_logs_as_one_made_whole(engine, customers, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A decide's answer is made, logged and encoded `DECIDE_PART` recipients at a time: the answer (drivers,
    exploration and the per-hour cap included) equals the one made in one part, ids aside; every decision is
    logged once, as answered, and renders by its id."""
    import serving.engine as engine_module

    ids = customers["customer_id"].head(300).tolist()  # with and without consent
    request = DecideRequest(
        recipients=[Recipient(customer_id=i) for i in ids],
        window_start=START,
        explore_share=0.2,
        explain=True,
        constraints={"max_share_per_hour": 0.1},
    )
    engine.reseed(7)
    whole = orjson.loads(engine.decide_json(request))
    monkeypatch.setattr(engine_module, "DECIDE_PART", 37)  # parts end mid-way, the last one short
    engine.reseed(7)
    parted = orjson.loads(engine.decide_json(request))
    engine.reseed(7)
    as_data = engine.decide_payload(request)

    def without_ids(answer: dict) -> dict:  # type: ignore[type-arg]
        return {**answer, "decisions": [{**d, "decision_id": None} for d in answer["decisions"]]}

    assert list(parted) == ["model_versions", "status", "reasons", "decisions"]
    assert without_ids(parted) == without_ids(whole) == without_ids(orjson.loads(orjson.dumps(as_data)))
    sent = [d for d in parted["decisions"] if d["send"]]
    assert len(sent) > 30 and any(d["explore"] for d in sent) and all(d["drivers"] for d in sent)
    assert len({d["decision_id"][2:18] for d in parted["decisions"]}) == -(-len(ids) // 37)  # a batch part each
    logged = _logged(engine)
    assert len(logged) == 3 * len(ids)
    for d in parted["decisions"]:
        entry = logged[d["decision_id"]]
        assert (entry["customer_id"], entry["send"], entry["explore"]) == (d["customer_id"], d["send"], d["explore"])
        assert entry["offer_ids"] == ([o["offer_id"] for o in d["offers"]] if d["send"] else [])
    last = sent[-1]
    email = engine.render(RenderRequest(decision_id=last["decision_id"]))
    assert email.send and email.customer_id == last["customer_id"]
    assert [m.name for m in email.modules] == last["modules"]


def test_a_decide_compares_with_the_population_of_its_own_window(engine, customers, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The population a decision is compared with (the re-engagement block, the high-value offer threshold) is
    the one of the day from its window's start hour, measured once per hour asked for, not the load's."""
    from collections import OrderedDict

    import serving.engine as engine_module
    from serving.decisions import logged_threshold

    monkeypatch.setattr(engine, "_populations", OrderedDict())
    monkeypatch.setattr(engine_module, "POPULATIONS_KEPT", 2)
    measured: list[datetime | None] = []
    measure = engine._measure_population
    monkeypatch.setattr(engine, "_measure_population", lambda at=None: measured.append(at) or measure(at))
    ids = customers.loc[customers["consent_email"], "customer_id"].head(30).tolist()
    saturday = START + timedelta(days=4, hours=5)
    sunday = START + timedelta(days=40)  # weeks on
    used = {}
    for start in (START, saturday, START, sunday, saturday):
        answer = engine.decide(DecideRequest(recipients=[Recipient(customer_id=i) for i in ids], window_start=start))
        logged = _logged(engine)
        facts = [logged[d.decision_id]["render"] for d in answer.decisions if d.send]
        assert facts
        used[start] = {(f["population_open_probability"], f["high_value_threshold"]) for f in facts}
    assert measured == [START, saturday, sunday, saturday]  # START kept (asked again); Saturday the least recent
    populations = {start: measure(start) for start in (START, saturday, sunday)}
    assert len({(p.open_probability, p.high_value_threshold) for p in populations.values()}) == 3  # days differ
    for start, expected in populations.items():
        assert used[start] == {(expected.open_probability, logged_threshold(max(expected.high_value_threshold, 0)))}
