"""The simulated world: its files follow the data contract, and its data follow its own ground truth."""

from __future__ import annotations

import json
import re
import shutil
import zoneinfo
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sendwise.ingest import ingest
from sendwise.raw import load_table
from sendwise.settings import Settings
from sendwise.simulator import (
    BLAST_HOUR_UTC,
    DEVICE_USER_AGENTS,
    EMAIL_ALIASES,
    MPP_USER_AGENT,
    LoggedPolicy,
    OfferMenu,
    SimulationSummary,
    families,
    interest_matrix,
    simulate,
    simulation_options,
)
from sendwise.simulator.truth import CATEGORIES, World

CUSTOMERS, DAYS, SEED = 300, 21, 11
END = pd.Timestamp("2026-11-01T00:00Z")
ALIASES = {alias.lower(): event for event, aliases in EMAIL_ALIASES.items() for alias in aliases}
ALIASES |= {"spam": "complaint", "spamreport": "complaint", "dropped": "bounce"}
EMAIL_EVENTS = {"sent", "delivered", "open", "click", "bounce", "unsubscribe", "complaint"}
SITE_EVENTS = {"session_start", "page_view", "product_view", "add_to_cart", "purchase"}


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SimulationSummary]:
    out = tmp_path_factory.mktemp("world")
    summary = simulate(out, customers=CUSTOMERS, days=DAYS, seed=SEED, progress=False)
    return out, summary


@pytest.fixture(scope="session")
def world(world_dir: tuple[Path, SimulationSummary]) -> World:
    return World.load(world_dir[0])


@pytest.fixture(scope="session")
def data(world_dir: tuple[Path, SimulationSummary]) -> dict[str, pd.DataFrame]:
    """The data tables, deduplicated by event_id, with canonical event names (as an ingest would see them)."""
    out = world_dir[0]
    email = pq.read_table(out / "email_events").to_pandas()
    site = pd.read_parquet(out / "site_events.parquet")
    offer = pd.read_parquet(out / "offer_events.parquet")
    for frame in (email, site, offer):
        frame["canonical"] = frame["event"].str.lower().replace(ALIASES)

    def valid(frame: pd.DataFrame, events: set[str]) -> pd.DataFrame:
        ok = frame["canonical"].isin(events) & frame["customer_id"].str.strip().ne("") & frame["occurred_at"].notna()
        return frame[ok].drop_duplicates()

    return {
        "email_raw": email,
        "email": valid(email, EMAIL_EVENTS),
        "site": valid(site, SITE_EVENTS),
        "offer": valid(offer, {"exposed", "clicked", "converted"}),
        "customers": pd.read_csv(out / "customers.csv", dtype=str, keep_default_na=False, encoding="utf-8-sig"),
    }


def truth_dir(world: World) -> Path:
    assert world.truth_dir is not None
    return world.truth_dir


def local_clock(times: pd.Series, zones: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Local hour and weekend flag of each time stamp in its zone (plain pandas, not the simulator's)."""
    hour = np.empty(len(times), dtype=np.int64)
    weekend = np.empty(len(times), dtype=bool)
    for zone, rows in pd.Series(np.arange(len(times))).groupby(zones.to_numpy()).groups.items():
        local = pd.DatetimeIndex(times.to_numpy()[rows]).tz_convert(zone)
        hour[rows], weekend[rows] = local.hour, local.dayofweek >= 5
    return hour, weekend


def profile_mass(world: World, customer_ids: pd.Series, times: pd.Series) -> np.ndarray:
    """Share of the customer's true daily activity in the local hour of each time stamp."""
    params = world.customer_params.set_index("customer_id").loc[customer_ids.to_numpy()]
    hour, weekend = local_clock(times.reset_index(drop=True), params["timezone"].reset_index(drop=True))
    weekday_profiles = np.stack(params["weekday_activity"].to_numpy())
    weekend_profiles = np.stack(params["weekend_activity"].to_numpy())
    rows = np.arange(len(hour))
    return np.where(weekend, weekend_profiles[rows, hour], weekday_profiles[rows, hour])


# --- the files follow the data contract -------------------------------------------------------------------
def test_layout_and_formats(world_dir: tuple[Path, SimulationSummary]) -> None:
    out, summary = world_dir
    assert (out / "customers.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
    assert (out / "customers.csv").read_text(encoding="utf-8-sig").splitlines()[0].startswith("customer_id,timezone,")
    parts = sorted((out / "email_events").glob("*.parquet"))
    assert parts and all(p.name.startswith("part-") for p in parts)
    for path in [*parts, out / "site_events.parquet", out / "offer_events.parquet"]:
        schema = pq.read_schema(path)
        assert schema.field("occurred_at").type == pa.timestamp("us", tz="UTC"), path
        for name in ("event_id", "customer_id", "event"):
            assert schema.field(name).type == pa.string(), (path, name)
    customers = pd.read_csv(out / "customers.csv", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    well_formed = customers["customer_id"].str.fullmatch(r"c-\d{6}")
    assert (~well_formed).sum() == 2  # the two broken rows
    assert customers.loc[well_formed, "customer_id"].nunique() == CUSTOMERS
    stamps = pd.concat([customers["signup_at"], customers["updated_at"]])
    iso = stamps.str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)")
    assert iso.mean() > 0.99 and (stamps.str.endswith("Z")).any() and (stamps.str.contains(r"[+-]\d\d:\d\d$")).any()
    assert set(customers["consent_email"]) == {"true", "false"}
    assert {"attr_loyalty_tier", "attr_age_band"} <= set(customers.columns)
    campaigns = pd.read_csv(out / "campaigns.csv", dtype=str, keep_default_na=False)
    regular = campaigns[campaigns["campaign_id"].str.fullmatch(r"cmp-0\d{3}")]
    assert set(regular["kind"]) == {"promotional", "newsletter"} and set(regular["topic"]) <= set(CATEGORIES)
    assert len(regular) == round(3 * DAYS / 7)
    assert (campaigns["kind"] == "triggered").sum() == len(CATEGORIES)
    assert summary.rows["customers"] == len(customers) and summary.rows["campaigns"] == len(campaigns)
    assert summary.rows["email_events"] == sum(pq.read_metadata(p).num_rows for p in parts)


def test_event_names_use_aliases_and_a_few_break_the_contract(data: dict[str, pd.DataFrame]) -> None:
    email = data["email_raw"]
    names = set(email["event"])
    assert {"Opened", "processed"} <= names or {"opened", "accepted"} <= names
    canonical = email["event"].str.lower().replace(ALIASES)
    unknown = ~canonical.isin(EMAIL_EVENTS)
    assert 4 <= unknown.sum() <= 20
    assert (email["event"] != canonical).mean() == pytest.approx(0.02, abs=0.01)
    broken = unknown | email["customer_id"].str.strip().eq("") | email["occurred_at"].isna()
    assert 15 <= broken.sum() <= 40


def test_dirt_duplicates_and_unknown_customers(data: dict[str, pd.DataFrame], world: World) -> None:
    email = data["email_raw"].drop(columns="canonical")
    repeated = email[email["event_id"].duplicated(keep=False)]
    assert len(repeated) > 0
    assert len(repeated.drop_duplicates()) == repeated["event_id"].nunique()  # re-deliveries are exact copies
    assert email["event_id"].duplicated().mean() == pytest.approx(0.005, abs=0.002)
    known = set(world.customers["customer_id"])
    ids = data["email"]["customer_id"]
    unknown = ids[~ids.isin(known) & ids.str.strip().ne("")]
    assert 5 <= len(unknown) <= 30
    assert unknown.str.fullmatch(r"c-\d{5}").any()  # an id that only lacks a leading zero is another customer


def test_determinism_per_seed(world_dir: tuple[Path, SimulationSummary], tmp_path: Path) -> None:
    out, summary = world_dir
    again = simulate(tmp_path / "same", customers=CUSTOMERS, days=DAYS, seed=SEED, progress=False)
    other = simulate(tmp_path / "other", customers=CUSTOMERS, days=DAYS, seed=SEED + 1, progress=False)
    assert again.rows == summary.rows
    for name in ("email_events", "site_events.parquet", "offer_events.parquet", "truth/customers.parquet"):
        assert pq.read_table(out / name).equals(pq.read_table(tmp_path / "same" / name)), name
    for name in ("customers.csv", "campaigns.csv", "offers.csv", "truth/world.json"):
        assert (out / name).read_bytes() == (tmp_path / "same" / name).read_bytes(), name
    assert not pq.read_table(out / "email_events").equals(pq.read_table(tmp_path / "other" / "email_events"))
    assert other.emails_sent != summary.emails_sent


# --- customers ----------------------------------------------------------------------------------------
def test_customers_zones_consent_and_interests(data: dict[str, pd.DataFrame], world: World) -> None:
    customers = data["customers"].drop_duplicates("customer_id")
    customers = customers[customers["customer_id"].str.fullmatch(r"c-\d{6}")]
    truth = world.customers.set_index("customer_id").loc[customers["customer_id"]]
    assert truth["timezone"].nunique() >= 18
    assert all(zone in zoneinfo.available_timezones() for zone in truth["timezone"].unique())
    blank = customers["timezone"].eq("").to_numpy()
    assert 0.01 <= blank.mean() <= 0.06
    assert not truth["country"].to_numpy()[blank].tolist() or set(truth["country"].to_numpy()[blank]).isdisjoint(
        {"US", "CA", "AU"}
    )
    assert (customers["timezone"].to_numpy()[~blank] == truth["timezone"].to_numpy()[~blank]).all()
    assert 0.02 <= (~truth["consent_email"]).mean() <= 0.1
    assert 0.02 <= (~truth["consent_profiling"]).mean() <= 0.1
    declared = customers["interests"].ne("")
    assert 0.2 <= declared.mean() <= 0.5
    params = world.customer_params.set_index("customer_id").loc[customers["customer_id"][declared]]
    top = [CATEGORIES[int(np.argmax(a))] for a in params["affinity"]]
    first = customers["interests"][declared].str.split("|").str[0]
    assert (first.to_numpy() == np.array(top)).mean() > 0.8
    assert customers["country"].str.fullmatch(r"[A-Z]{2}").all() and "UK" in set(customers["country"])


def test_stale_customer_rows_are_older_than_the_current_ones(data: dict[str, pd.DataFrame], world: World) -> None:
    customers = data["customers"]
    customers = customers[customers["customer_id"].str.fullmatch(r"c-\d{6}")]
    repeated = customers[customers["customer_id"].duplicated(keep=False)].copy()
    assert len(repeated) >= 2
    repeated["updated"] = pd.to_datetime(repeated["updated_at"], utc=True, format="ISO8601")
    latest = repeated.sort_values("updated").groupby("customer_id").tail(1).set_index("customer_id")
    last_in_file = repeated.groupby("customer_id").tail(1).set_index("customer_id")
    truth = world.customer_params.set_index("customer_id").loc[latest.index, "attr_loyalty_tier"]
    assert (latest["attr_loyalty_tier"] == truth).all()
    assert (last_in_file["updated"] < latest["updated"]).all()


def test_no_email_without_consent(data: dict[str, pd.DataFrame], world: World) -> None:
    refused = set(world.customers.loc[~world.customers["consent_email"], "customer_id"])
    assert refused
    assert not set(data["email"]["customer_id"]) & refused
    assert not set(data["offer"]["customer_id"]) & refused


# --- email --------------------------------------------------------------------------------------------
def test_mpp_customers_get_a_machine_open_for_every_delivered_email(
    data: dict[str, pd.DataFrame], world: World
) -> None:
    email, opens = data["email"], world.email_opens()
    mpp = set(world.customer_params.loc[world.customer_params["is_mpp"], "customer_id"])
    assert 0.2 <= len(mpp) / CUSTOMERS <= 0.4
    delivered = email[(email["canonical"] == "delivered") & (email["occurred_at"] < END - pd.Timedelta(minutes=10))]
    delivered_mpp = delivered[delivered["customer_id"].isin(mpp)].set_index("message_id")["occurred_at"]
    machine = opens[opens["source"] == "mpp"].set_index("message_id")["occurred_at"]
    assert machine.index.is_unique and set(delivered_mpp.index) <= set(machine.index)
    assert set(machine.index) <= set(delivered[delivered["customer_id"].isin(mpp)]["message_id"]) | set(
        email.loc[email["occurred_at"] >= END - pd.Timedelta(minutes=10), "message_id"]
    )
    lag = (machine.loc[delivered_mpp.index] - delivered_mpp).dt.total_seconds()
    assert lag.min() > 0 and lag.max() < 600 and lag.median() < 120

    flags = email.set_index("event_id").loc[opens["event_id"], "machine_open"].to_numpy()
    is_mpp_open = (opens["source"] == "mpp").to_numpy()
    assert np.mean(flags[is_mpp_open] == True) == pytest.approx(0.85, abs=0.06)  # noqa: E712
    assert (pd.isna(flags[is_mpp_open])).sum() > 0 and (flags[is_mpp_open] == False).sum() > 0  # noqa: E712
    assert not (flags[~opens["is_machine"].to_numpy()] == True).any()  # noqa: E712
    agents = email.set_index("event_id").loc[opens["event_id"], "user_agent"]
    assert (agents[is_mpp_open] == MPP_USER_AGENT).all()
    assert agents[(opens["source"] == "human").to_numpy()].isin(DEVICE_USER_AGENTS).all()
    scanners = opens[opens["source"] == "scanner"]
    scanner_customers = set(world.customer_params.loc[world.customer_params["is_scanner"], "customer_id"])
    assert set(scanners["customer_id"]) <= scanner_customers
    machine_customers = set(opens.loc[opens["is_machine"], "customer_id"])
    assert machine_customers <= mpp | scanner_customers


def test_machine_opens_do_not_depend_on_interest(world: World) -> None:
    """Every delivered email of an MPP customer is fetched, however likely the person is to open it."""
    messages = world.messages()
    opens = world.email_opens()
    params = world.customer_params.set_index("customer_id")
    delivered = messages[messages["delivered"] & (messages["sent_at"] < END - pd.Timedelta(minutes=15))]
    delivered = delivered[params.loc[delivered["customer_id"], "is_mpp"].to_numpy()]
    fetched = delivered["message_id"].isin(opens.loc[opens["source"] == "mpp", "message_id"])
    assert fetched.all()
    low, high = delivered["open_probability"] < 0.1, delivered["open_probability"] > 0.3
    assert low.sum() > 20 and high.sum() > 20
    human = delivered["message_id"].isin(opens.loc[opens["source"] == "human", "message_id"])
    assert human[high].mean() > human[low].mean() + 0.2


def test_blast_hour_dominates_but_some_sends_are_at_other_hours(data: dict[str, pd.DataFrame], world: World) -> None:
    messages = world.messages()
    campaign = messages[messages["kind"] != "triggered"]
    hours = campaign["sent_at"].dt.hour
    assert (hours == BLAST_HOUR_UTC).mean() == pytest.approx(0.9 + 0.1 / 24, abs=0.03)
    assert hours.nunique() >= 18
    json_meta = json.loads((truth_dir(world) / "world.json").read_text())
    assert json_meta["blast_hour_utc"] == BLAST_HOUR_UTC and json_meta["seed"] == SEED
    sent = data["email"][data["email"]["canonical"] == "sent"]
    sent = sent[sent["customer_id"].isin(world.customers["customer_id"])]
    assert sent["message_id"].is_unique and set(sent["message_id"]) == set(messages["message_id"])


def test_triggered_emails_follow_an_abandoned_cart(data: dict[str, pd.DataFrame], world: World) -> None:
    messages = world.messages()
    triggered = messages[messages["kind"] == "triggered"]
    assert len(triggered) >= 30
    site = data["site"]
    carts = site[site["canonical"] == "add_to_cart"].groupby("customer_id")["occurred_at"].apply(np.array)
    for row in triggered.itertuples():
        gap = (row.sent_at - pd.DatetimeIndex(carts[row.customer_id])).total_seconds() / 60
        assert ((gap >= 60) & (gap <= 90)).any(), row.message_id
        cart_category = site[(site["customer_id"] == row.customer_id) & (site["canonical"] == "add_to_cart")]
        assert row.topic in set(cart_category["category"])


def test_fatigue_state_at_end_counts_the_last_week_of_sends(data: dict[str, pd.DataFrame], world: World) -> None:
    sent = data["email"][data["email"]["canonical"] == "sent"]
    last_week = sent[sent["occurred_at"] >= END - pd.Timedelta(days=7)]
    counts = last_week.groupby("customer_id").size()
    params = world.customer_params.set_index("customer_id")
    expected = counts.reindex(params.index, fill_value=0)
    assert (params["sends_in_prev_7d"] == expected).all()
    assert expected.max() >= 3


def test_human_opens_peak_at_each_customers_active_hours(world: World) -> None:
    opens = world.email_opens()
    human = opens[~opens["is_machine"]]
    assert len(human) >= 300
    mass = profile_mass(world, human["customer_id"], human["occurred_at"])
    assert 24 * mass.mean() > 1.7  # a uniform hour would give 1.0

    params = world.customer_params.set_index("customer_id").loc[human["customer_id"]]
    hour, weekend = local_clock(human["occurred_at"].reset_index(drop=True), params["timezone"].reset_index(drop=True))
    profiles = np.where(
        weekend[:, None],
        np.stack(params["weekend_activity"].to_numpy()),
        np.stack(params["weekday_activity"].to_numpy()),
    )
    peak = profiles.argmax(axis=1)
    offsets = (hour - peak) % 24
    empirical = np.bincount(offsets, minlength=24) / len(offsets)
    rows = np.arange(len(peak))
    expected = np.mean([profiles[rows, (peak + k) % 24] for k in range(24)], axis=1)
    assert np.corrcoef(empirical, expected)[0, 1] > 0.85
    assert empirical[[23, 0, 1]].sum() > 2 * 3 / 24


def test_open_probability_is_what_the_data_were_drawn_from(world: World) -> None:
    messages = world.messages()
    recomputed = world.open_probability(
        messages["customer_id"],
        messages["sent_at"],
        kind=messages["kind"].tolist(),
        topic=messages["topic"].tolist(),
        sends_in_prev_7d=messages["sends_in_prev_7d"],
        last_visit_at=messages["last_visit_at"],
    )
    np.testing.assert_allclose(recomputed, messages["open_probability"], rtol=1e-9)  # times kept to the microsecond
    delivered = messages[messages["delivered"]]
    assert delivered["human_open_72h"].mean() == pytest.approx(delivered["open_probability"].mean(), abs=0.02)
    for _, group in delivered.groupby(pd.qcut(delivered["open_probability"], 4), observed=True):
        assert group["human_open_72h"].mean() == pytest.approx(group["open_probability"].mean(), abs=0.05)
    opens = world.email_opens()
    first_human = opens[~opens["is_machine"]].groupby("message_id")["occurred_at"].min()
    complete = delivered[delivered["sent_at"] < END - pd.Timedelta(hours=72)].set_index("message_id")
    seen = first_human.reindex(complete.index)
    assert ((seen - complete["sent_at"]).dt.total_seconds().dropna() <= 72 * 3600).all()
    assert (seen.notna() == complete["human_open_72h"]).all()


def test_hourly_curve_varies_and_peaks_at_the_customers_active_hour(world: World) -> None:
    ids = world.customers["customer_id"]
    tuesday = pd.Timestamp("2026-11-03T00:00Z")  # a 24 h window that is a weekday in every zone
    curves = world.hourly_open_probability(ids, tuesday, hours=24)
    assert curves.shape == (CUSTOMERS, 24) and ((curves > 0) & (curves < 1)).all()
    assert (curves.max(axis=1) / curves.min(axis=1) > 1.3).mean() > 0.95
    ratio = curves.mean(axis=1) / curves.max(axis=1)
    assert 0.55 <= ratio.mean() <= 0.75
    best_at = pd.Series(tuesday + pd.to_timedelta(curves.argmax(axis=1), unit="h"))
    best_hour, weekend = local_clock(best_at, world.customers["timezone"])
    assert not weekend.any()
    peak = np.stack(world.customer_params["weekday_activity"].to_numpy()).argmax(axis=1)
    assert (best_hour == peak).all()
    single = world.open_probability(ids, best_at)
    np.testing.assert_allclose(single, curves.max(axis=1))
    triggered = world.hourly_open_probability(ids[:5], tuesday, kind="triggered", topic="books")
    assert (triggered > curves[:5]).all()


def test_weekends_have_their_own_active_hours(world: World) -> None:
    params = world.customer_params
    weekday_peak = np.stack(params["weekday_activity"].to_numpy()).argmax(axis=1)
    weekend_peak = np.stack(params["weekend_activity"].to_numpy()).argmax(axis=1)
    differs = weekend_peak != weekday_peak
    assert differs.mean() > 0.5

    def saturday_at(hours: np.ndarray) -> list[pd.Timestamp]:
        return [
            pd.Timestamp(2026, 11, 7, int(h), tz=zone).tz_convert("UTC")
            for h, zone in zip(hours, params["timezone"], strict=True)
        ]

    ids = params["customer_id"]
    at_weekend_peak = world.open_probability(ids, saturday_at(weekend_peak))
    at_weekday_peak = world.open_probability(ids, saturday_at(weekday_peak))
    assert (at_weekend_peak[differs] > at_weekday_peak[differs]).all()


# --- offers -------------------------------------------------------------------------------------------
def test_offers_eligibility_and_expected_values(world: World, world_dir: tuple[Path, SimulationSummary]) -> None:
    offers = world.offers
    assert len(offers) == 13 and (offers["kind"] == "control").sum() == 1
    assert offers.loc[offers["kind"] == "control", "margin"].item() == 20
    csv = pd.read_csv(world_dir[0] / "offers.csv", sep=";", dtype={"offer_id": str})
    ended = pd.to_datetime(csv["ends_at"], utc=True) <= END
    ineligible = set(offers.loc[~offers["eligible"], "offer_id"])
    assert ineligible == set(csv.loc[(csv["inventory"] == 0) | ended, "offer_id"]) and len(ineligible) == 2
    ids = world.customers["customer_id"]
    p = world.conversion_probability(ids)
    assert ((p > 0) & (p < 1)).all()
    control = offers["kind"].eq("control").to_numpy()
    discount = offers["kind"].eq("discount").to_numpy()
    assert 0.005 < p[:, control].mean() < p[:, discount].mean(axis=0).min()
    ev = world.offer_expected_value(ids)
    np.testing.assert_allclose(ev, p * offers["margin"].to_numpy()[None, :])
    eligible = offers["eligible"].to_numpy()
    best = offers["offer_id"].to_numpy()[eligible][ev[:, eligible].argmax(axis=1)]
    shares = pd.Series(best).value_counts(normalize=True)
    assert len(shares) >= 5 and shares.iloc[0] < 0.4
    sorted_ev = np.sort(ev[:, eligible], axis=1)
    assert np.median(sorted_ev[:, -1] / np.median(sorted_ev, axis=1)) > 2.0
    subset = world.conversion_probability(ids[:3], ["of-03", "of-00"])
    np.testing.assert_allclose(subset, p[:3][:, [3, 0]])


def test_offers_carry_their_content_made_from_their_own_fields(
    world_dir: tuple[Path, SimulationSummary], tmp_path: Path
) -> None:
    """Title, description, link and picture for every offer but the control arm, and the ingest keeps them."""
    csv = pd.read_csv(world_dir[0] / "offers.csv", sep=";", dtype=str, keep_default_na=False).set_index("offer_id")
    content = ["title", "description", "url", "image_url"]
    assert (csv.loc["of-00", content] == "").all() and csv.loc["of-00", "kind"] == "control"
    assert csv.loc["of-07", content].tolist() == [
        "20% off sports",
        "Take 20% off everything in sports while the offer lasts.",
        "https://shop.example/offers/of-07",
        "https://shop.example/images/of-07.png",
    ]
    assert csv.loc["of-10", "title"] == "The outdoor guide"
    offers = csv.drop(index="of-00")
    assert (offers["url"] == "https://shop.example/offers/" + offers.index).all()
    assert (offers["image_url"] == "https://shop.example/images/" + offers.index + ".png").all()
    assert offers["description"].str.endswith(".").all() and offers["title"].is_unique
    for name in ("customers.csv", "offers.csv"):
        shutil.copy(world_dir[0] / name, tmp_path / name)
    settings = Settings(home=tmp_path / "home")
    report = ingest(tmp_path, settings, progress=False)
    assert report.tables["offers"].quarantined == 0
    assert not [w for w in report.warnings if "offers.csv" in w]
    stored = load_table(settings, "offers")
    assert stored is not None
    assert stored.set_index("offer_id").loc[csv.index, content].fillna("").equals(csv[content])


def test_exposures_carry_the_logged_policy_propensity(data: dict[str, pd.DataFrame], world: World) -> None:
    exposed = data["offer"][data["offer"]["canonical"] == "exposed"].reset_index(drop=True)
    assert len(exposed) > 300
    messages = world.messages().set_index("message_id").loc[exposed["message_id"]]
    assert (messages["kind"] == "promotional").all()
    params = world.customer_params.set_index("customer_id").loc[exposed["customer_id"]]
    policy = LoggedPolicy(**json.loads((truth_dir(world) / "world.json").read_text())["policy"])
    topic = pd.Index(CATEGORIES).get_indexer(messages["topic"])
    seconds = (exposed["occurred_at"] - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds().to_numpy()
    probabilities = policy.probabilities(
        OfferMenu.from_offers(world.offer_params), interest_matrix(params["interests"]), topic, seconds
    )
    chosen = world.offer_index(exposed["offer_id"])
    np.testing.assert_allclose(probabilities[np.arange(len(chosen)), chosen], exposed["propensity"], rtol=1e-9)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert (exposed["propensity"] > 0).all() and (exposed["propensity"] <= 1).all()
    assert exposed["propensity"].min() >= policy.epsilon / len(world.offers) - 1e-12
    share = pd.Series(chosen).value_counts(normalize=True).reindex(range(len(world.offers)), fill_value=0)
    np.testing.assert_allclose(share, probabilities.mean(axis=0), atol=0.04)
    control = world.offers["kind"].eq("control").to_numpy()
    assert probabilities[:, control].mean() > 0.03 and (chosen == np.flatnonzero(control)[0]).sum() >= 10
    ended = world.offer_params.set_index("offer_id")["ends_at"].dropna()
    for offer_id, ends_at in ended.items():
        assert (exposed.loc[exposed["offer_id"] == offer_id, "occurred_at"] < ends_at).all()


def test_conversions_follow_exposures_and_appear_as_purchases(data: dict[str, pd.DataFrame], world: World) -> None:
    offer = data["offer"]
    exposed = offer[offer["canonical"] == "exposed"].set_index("message_id")
    converted = offer[offer["canonical"] == "converted"]
    assert len(converted) >= 10 and (converted["value"] > 0).all()
    delay = converted["occurred_at"].to_numpy() - exposed.loc[converted["message_id"], "occurred_at"].to_numpy()
    assert (delay > pd.Timedelta(0)).all() and (delay < pd.Timedelta(days=7)).all()
    assert (converted["offer_id"].to_numpy() == exposed.loc[converted["message_id"], "offer_id"].to_numpy()).all()
    purchases = data["site"][data["site"]["canonical"] == "purchase"]
    keys = set(zip(purchases["customer_id"], purchases["occurred_at"], strict=True))
    assert all(key in keys for key in zip(converted["customer_id"], converted["occurred_at"], strict=True))
    messages = world.messages().dropna(subset=["conversion_probability"])
    assert messages["converted_7d"].mean() == pytest.approx(messages["conversion_probability"].mean(), abs=0.015)
    control = messages[messages["offer_id"] == "of-00"]
    assert len(control) > 0 and control["conversion_probability"].mean() < messages["conversion_probability"].mean()


def test_clicks_lead_to_a_session(data: dict[str, pd.DataFrame]) -> None:
    email, site = data["email"], data["site"]
    clicks = email[(email["canonical"] == "click") & (email["occurred_at"] < END - pd.Timedelta(minutes=1))]
    assert len(clicks) >= 10 and clicks["url"].str.startswith("https://").all()
    starts = site[site["canonical"] == "session_start"].groupby("customer_id")["occurred_at"].apply(np.array)
    for click in clicks.itertuples():
        gap = (pd.DatetimeIndex(starts[click.customer_id]) - click.occurred_at).total_seconds()
        assert ((gap > 0) & (gap <= 40)).any(), click.event_id


# --- the truth API ------------------------------------------------------------------------------------
def test_world_api_refuses_what_it_cannot_answer(world: World) -> None:
    assert world.end == END and world.end == world.end.floor("h")
    with pytest.raises(KeyError, match="c-00001"):
        world.open_probability(["c-00001"], END)
    with pytest.raises(ValueError, match="time zone"):
        world.open_probability(["c-000001"], pd.Timestamp("2026-11-02 10:00"))
    with pytest.raises(ValueError, match="unknown kind"):
        world.open_probability(["c-000001"], END, kind="blast")
    with pytest.raises(KeyError):
        world.conversion_probability(["c-000001"], ["of-99"])
    assert world.open_probability("c-000001", "2026-11-02T10:00Z").shape == (1,)
    assert world.hourly_open_probability([], END, hours=6).shape == (0, 6)
    assert world.offer_expected_value([], ["of-01"]).shape == (0, 1)


def test_simulate_validates_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="whole hour"):
        simulate(tmp_path, customers=5, days=1, end=pd.Timestamp("2026-11-01T00:30Z"), progress=False)
    with pytest.raises(ValueError, match="time zone"):
        simulate(tmp_path, customers=5, days=1, end=pd.Timestamp("2026-11-01T00:00"), progress=False)
    with pytest.raises(ValueError, match="at least 1"):
        simulate(tmp_path, customers=0, days=1, progress=False)


def test_summary_counts_match_the_truth(world_dir: tuple[Path, SimulationSummary], world: World) -> None:
    _, summary = world_dir
    assert summary.customers == CUSTOMERS and summary.end == END and summary.start == END - pd.Timedelta(days=DAYS)
    assert summary.emails_sent == len(world.messages())
    opens = world.email_opens()
    assert summary.human_opens == (~opens["is_machine"]).sum() and summary.machine_opens == opens["is_machine"].sum()
    assert re.fullmatch(r"m-\d{8}", world.messages()["message_id"].iloc[0])


# --- realistic worlds ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def realistic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, World]:
    """A realistic world's corner: many proxied recipients, an ESP that flags half of the proxy's opens."""
    out = tmp_path_factory.mktemp("realistic")
    rates, realism = simulation_options(realistic=True, mpp_share=0.6, esp_flag_share=0.5, scanner_share=0.06)
    simulate(out, customers=CUSTOMERS, days=DAYS, seed=SEED, progress=False, rates=rates, realism=realism)
    return out, World.load(out)


def _seconds_after_send(events: pd.DataFrame, messages: pd.DataFrame) -> pd.Series:
    sent = pd.Series(messages.loc[events["message_id"], "sent_at"].to_numpy(), index=events.index)
    return (events["occurred_at"] - pd.to_datetime(sent, utc=True)).dt.total_seconds()


def test_a_proxied_recipients_own_opens_arrive_through_the_proxy(realistic: tuple[Path, World]) -> None:
    out, world = realistic
    email = pq.read_table(out / "email_events").to_pandas().drop_duplicates("event_id").set_index("event_id")
    opens = world.email_opens()
    proxied = set(world.customer_params.loc[world.customer_params["is_mpp"], "customer_id"])
    assert 0.5 <= len(proxied) / CUSTOMERS <= 0.7
    own = opens[(opens["source"] == "human") & opens["customer_id"].isin(proxied)]
    assert len(own) > 100 and own["via_proxy"].all()
    assert (email.loc[own["event_id"], "user_agent"] == MPP_USER_AGENT).all()
    # The ESP flags the proxy's addresses, not who opened: a person's open through it is flagged as often.
    for rows in (own, opens[opens["source"] == "mpp"]):
        flagged = email.loc[rows["event_id"], "machine_open"].to_numpy()
        assert np.mean(flagged == True) == pytest.approx(0.5, abs=0.08)  # noqa: E712
    others = opens[(opens["source"] == "human") & ~opens["customer_id"].isin(proxied)]
    assert not others["via_proxy"].any()
    assert email.loc[others["event_id"], "user_agent"].isin(DEVICE_USER_AGENTS).all()


def test_proxy_fetches_come_at_delivery_or_hours_later(realistic: tuple[Path, World]) -> None:
    _, world = realistic
    messages = world.messages().set_index("message_id")
    fetches = world.email_opens()
    fetches = fetches[fetches["source"] == "mpp"].drop_duplicates("message_id")  # the first fetch of each
    lag = _seconds_after_send(fetches, messages)
    assert (lag < 15 * 60).mean() == pytest.approx(0.5, abs=0.07)
    assert 2 * 3600 <= lag[lag > 15 * 60].median() <= 8 * 3600
    assert lag.max() <= 31 * 3600


def test_scanners_open_and_click_within_seconds(realistic: tuple[Path, World]) -> None:
    out, world = realistic
    clicks = world.email_clicks()
    scanned = set(world.customer_params.loc[world.customer_params["is_scanner"], "customer_id"])
    machine = clicks[clicks["is_machine"]]
    assert len(machine) > 10 and set(machine["customer_id"]) <= scanned
    messages = world.messages().set_index("message_id")
    lag = _seconds_after_send(machine, messages)
    assert lag.max() < 60
    email = pq.read_table(out / "email_events").to_pandas().drop_duplicates("event_id").set_index("event_id")
    assert not email.loc[machine["event_id"], "user_agent"].isin(DEVICE_USER_AGENTS).any()


def test_rhythm_families_keep_the_held_out_ones_apart(tmp_path: Path) -> None:
    rates, realism = simulation_options(rhythms="development")
    simulate(tmp_path, customers=CUSTOMERS, days=7, seed=SEED, progress=False, rates=rates, realism=realism)
    development = set(World.load(tmp_path).customer_params["rhythm_family"])
    assert development == {f.name for f in families.DEVELOPMENT}
    assert not development & {f.name for f in families.HELD_OUT}


def test_held_out_families_include_nights_and_earlier_weekends() -> None:
    rng = np.random.default_rng(0)
    by_name = {f.name: f for f in families.HELD_OUT}
    weekday, weekend = families.draw(rng, by_name["night shift"], 500)
    assert np.isin(weekday.argmax(axis=1), [22, 23, 0, 1, 2, 3, 4, 5]).mean() > 0.9
    weekday, weekend = families.draw(rng, by_name["weekend earlier"], 500)
    assert (weekend.argmax(axis=1) < weekday.argmax(axis=1)).mean() > 0.9
    assert np.allclose(weekday.sum(axis=1), 1.0) and np.allclose(weekend.sum(axis=1), 1.0)


def test_classic_world_is_unchanged_by_the_realistic_options(
    world_dir: tuple[Path, SimulationSummary], tmp_path: Path
) -> None:
    """The options draw from streams of their own: a classic world is the same world, byte for byte."""
    rates, realism = simulation_options()
    simulate(tmp_path, customers=CUSTOMERS, days=DAYS, seed=SEED, progress=False, rates=rates, realism=realism)
    for name in ("customers.csv", "site_events.parquet", "offer_events.parquet"):
        assert (tmp_path / name).read_bytes() == (world_dir[0] / name).read_bytes(), name


def test_simulation_options_refuse_values_out_of_range() -> None:
    with pytest.raises(ValueError, match="rhythms must be one of"):
        simulation_options(rhythms="martian")
    with pytest.raises(ValueError, match=r"scanner share must be between 0 and 0\.08"):
        simulation_options(scanner_share=0.5)
