"""The marketer report (`sendwise report`) on the session's pipeline home: its figures against what they are
computed from, what it must never show (customer ids, markup from data), its artifacts in MLflow, and every
page in a real browser.

The site is written into temporary folders, never into the shared home's `reports/`; the report logs it to the
champions' runs (what `sendwise report` does), which adds artifacts beside theirs and changes nothing else.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
from markupsafe import escape
from mlflow import MlflowClient
from playwright.sync_api import Browser, Route

from features.labels import message_sends
from features.transform import HOUR_FEATURES
from sendwise.asof import resolve_as_of
from sendwise.raw import load_table
from sendwise.registry import MODEL_NAMES
from sendwise.settings import Settings
from tests.browser import Chromium, screenshots_dir, serve_directory
from tests.conftest import PipelineHome, home_with_own_decision_log
from training import report as report_module
from training.explain import MIN_GROUP, Group, feature_groups
from training.report import ReportResult, _champions, write_report
from training.reporting.inputs import NO_AUDIENCE, ReportInputs
from training.reporting.site import Section, SiteFacts, number, percent, points, render_site
from training.samples import load_sample

HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=1">{{ 7*7 }}'
PAGES = ("index", "drivers", "segments", "send-time", "offers", "lift", "models")


@dataclass
class Site:
    settings: Settings
    result: ReportResult
    folder: Path

    def section(self, slug: str) -> Section:
        return next(s for s in self.result.sections if s.slug == slug)

    def page(self, slug: str) -> str:
        return (self.folder / f"{slug}.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def site(pipeline_home: PipelineHome, tmp_path_factory: pytest.TempPathFactory) -> Site:
    """The report of the small world's champions, written to a folder of its own and logged to their runs."""
    folder = tmp_path_factory.mktemp("report") / "site"
    result = write_report(pipeline_home.settings, site_dir=folder, progress=False)
    assert result.index == folder / "index.html", result.missing
    return Site(pipeline_home.settings, result, folder)


def _hostile_section(inputs: ReportInputs) -> Section:
    """A section as the realized-lift one will be added: one function, the generic page, data from outside."""
    return Section(
        slug="hostile",
        title=f"Data {HOSTILE}",
        summary=[f"a sentence with {HOSTILE}"],
        context={"paragraphs": [HOSTILE], "tables": [{"caption": HOSTILE, "header": ["a"], "rows": [[HOSTILE]]}]},
    )


@pytest.fixture(scope="module")
def hostile_site(pipeline_home: PipelineHome, tmp_path_factory: pytest.TempPathFactory) -> Site:
    """The report of a copy of the home whose offer titles and categories, attribute values and countries are
    markup, with one more section from outside: written to a folder of its own, not logged."""
    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path_factory.mktemp("hostile") / "home")
    offers_path = settings.raw_dir / "offers.parquet"
    offers = pd.read_parquet(offers_path)
    offers["title"] = [f"{HOSTILE} {k}" for k in range(len(offers))]
    offers.loc[offers["kind"] != "control", "category"] = offers["category"].astype(str) + HOSTILE
    offers.to_parquet(offers_path)
    attributes_path = settings.feature_tables_dir / "customer_attributes.parquet"
    attributes = pd.read_parquet(attributes_path)
    column = next(c for c in attributes.columns if c.startswith("attr_") and attributes[c].dtype == object)
    attributes[column] = attributes[column].where(attributes[column] != attributes[column].mode()[0], HOSTILE)
    attributes.to_parquet(attributes_path)
    profile_path = settings.feature_tables_dir / "customer_features.parquet"
    profile = pd.read_parquet(profile_path)
    profile.loc[profile.index[: len(profile) // 2], "country"] = HOSTILE
    profile.to_parquet(profile_path)
    sections = [*report_module.SECTIONS]
    sections.insert(-1, ("hostile", _hostile_section))
    folder = settings.home / "site"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report_module, "SECTIONS", sections)
        result = write_report(settings, site_dir=folder, log_to_mlflow=False, progress=False)
    assert result.index is not None, result.missing
    return Site(settings, result, folder)


# --- the parts, on tiny data (no pipeline) ----------------------------------------------------------------------
def test_numbers_split_in_ranges_with_round_bounds_and_their_mean_predictions() -> None:
    rng = np.random.default_rng(0)
    rate = pd.Series(rng.uniform(0, 0.6, 900).astype(np.float32))
    rate[rng.random(900) < 0.1] = np.nan
    prediction = 0.05 + 0.5 * np.nan_to_num(rate.to_numpy(), nan=0.2)
    groups = feature_groups("open_rate", rate, prediction)
    low, high = groups[1].low, groups[1].high
    assert low is not None and high is not None
    assert (low, high) == (float(f"{low:.2g}"), float(f"{high:.2g}"))  # round bounds near the terciles
    assert abs(low - 0.2) < 0.03 and abs(high - 0.4) < 0.03
    assert [g.label for g in groups] == [
        f"under {low:.0%}",
        f"{low:.0%} to under {high:.0%}",
        f"{high:.0%} or more",
        "unknown",
    ]
    assert (groups[0].high, groups[2].low) == (low, high)
    for group in groups:
        rows = _members(group, rate, [])
        assert group.rows == rows.sum() >= MIN_GROUP
        assert group.mean_probability == pytest.approx(prediction[rows].mean())
    assert sum(g.rows for g in groups) == len(rate)


def test_counts_mostly_zero_split_at_zero_and_flags_as_yes_and_no() -> None:
    counts = pd.Series([0.0] * 300 + [0.4, 1.0, 2.5] * 100)
    split = feature_groups("sends_7d", counts, np.where(counts > 0, 0.3, 0.1))
    assert [(g.label, g.rows, round(g.mean_probability, 9)) for g in split] == [
        ("above 0", 300, 0.3),
        ("at 0", 300, 0.1),
    ]
    flags = feature_groups("is_weekend", pd.Series([1.0] * 60 + [0.0] * 200), np.linspace(0, 1, 260))
    assert [(g.label, g.rows) for g in flags] == [("yes", 60), ("no", 200)]


def test_small_categories_are_told_together_as_other_or_not_at_all() -> None:
    labels = pd.Series(["gold"] * 120 + ["silver"] * 60 + ["x"] * 30 + ["y"] * 25 + ["z"] * 10 + [None] * 49)
    groups = feature_groups("attr_tier", labels, np.arange(len(labels)) / len(labels))
    assert [(g.label, g.rows) for g in groups] == [("gold", 120), ("silver", 60), ("other", 65)]  # 49 unknown: none
    few = feature_groups("attr_tier", labels.iloc[:215], np.zeros(215))
    assert [(g.label, g.rows) for g in few] == [("gold", 120), ("silver", 60)]  # other has 35: left out


def test_the_site_escapes_data_and_refuses_missing_charts(tmp_path: Path) -> None:
    facts = SiteFacts(home=HOSTILE, generated_at=datetime(2026, 1, 1, tzinfo=UTC), as_of=HOSTILE, champions={"x": "1"})
    hostile = Section(slug="lift", title=HOSTILE, summary=[HOSTILE], context={"paragraphs": [HOSTILE], "tables": []})
    index = render_site([hostile], facts, tmp_path / "site")
    for page in (index, tmp_path / "site" / "lift.html"):
        html = page.read_text(encoding="utf-8")
        assert "<script" not in html and "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html
    missing = Section(slug="x", title="x", summary=[], images=["plots/nowhere.png"])
    with pytest.raises(FileNotFoundError, match=r"plots/nowhere\.png"):
        render_site([missing], facts, tmp_path / "other")
    assert (percent(0.3142), points(-0.023), number(12345.6)) == ("31.4%", "-2.3 points", "12,346")


# --- the site and its artifacts ---------------------------------------------------------------------------------
def test_the_site_has_an_index_linking_every_page_and_every_chart_it_names(site: Site) -> None:
    index = site.page("index")
    for slug in PAGES[1:]:
        assert (site.folder / f"{slug}.html").is_file()
        assert f'href="{slug}.html"' in index
    for section in site.result.sections:
        # model cards have no chart; realized lift has none before any decision was sent and answered
        assert section.images or section.slug in ("models", "lift"), section.slug
        for image in section.images:
            assert (site.folder / image).stat().st_size > 5_000
            assert f'src="{image}"' in site.page(section.slug)
    assert not site.result.missing and not site.result.notes
    assert site.result.total_seconds > 0 and set(site.result.seconds) >= {"drivers", "segments", "offers"}


def test_the_site_is_logged_to_each_champion_run(site: Site) -> None:
    settings = site.settings
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    runs = {client.get_model_version_by_alias(name, "champion").run_id for name in MODEL_NAMES}
    assert sorted(runs) == sorted(site.result.logged_runs) and len(runs) == 2  # open and send time share one
    written = sorted(str(p.relative_to(site.folder)) for p in site.folder.rglob("*") if p.is_file())
    for run_id in runs:
        assert run_id is not None
        top = {Path(a.path).name for a in client.list_artifacts(run_id, "report")}
        plots = {Path(a.path).name for a in client.list_artifacts(run_id, "report/plots")}
        assert top >= {f"{page}.html" for page in PAGES} and "plots" in top
        assert {f"plots/{name}" for name in plots} >= {w for w in written if w.startswith("plots/")}


def test_no_customer_id_appears_in_any_file(site: Site, hostile_site: Site) -> None:
    customers = load_table(site.settings, "customers")
    assert customers is not None
    ids = [i.encode() for i in customers["customer_id"]]
    client = MlflowClient(tracking_uri=site.settings.tracking_uri)
    logged = [
        Path(client.get_run(r).info.artifact_uri.removeprefix("file://")) / "report" for r in site.result.logged_runs
    ]
    files = [p for root in (site.folder, hostile_site.folder, *logged) for p in root.rglob("*") if p.is_file()]
    assert len(files) > 30
    for path in files:
        content = path.read_bytes()
        found = [i.decode() for i in ids if i in content]
        assert not found, f"{path} names {found[:3]}"


# --- the figures -------------------------------------------------------------------------------------------------
def _members(group: Group, values: pd.Series, shown: list[str]) -> np.ndarray:
    """The rows of a group, worked out here from its bounds or categories."""
    if group.missing:
        return values.isna().to_numpy()
    labels = values.astype(object)
    if group.categories is not None:
        return labels.isin(group.categories).to_numpy()
    if group.other:
        return (values.notna() & ~labels.isin(shown)).to_numpy()
    numbers = values.astype(float).to_numpy()
    low = -np.inf if group.low is None else group.low
    high = np.inf if group.high is None else group.high
    return (numbers >= low) & (numbers < high)


def test_driver_groups_are_the_mean_predictions_of_their_rows(site: Site) -> None:
    """Each group's rate is the champion's mean prediction over the sample rows in it: computed here from the
    sample the run kept and the registered booster."""
    settings = site.settings
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    page = site.page("drivers")
    parts = site.section("drivers").context["parts"]
    assert [p.name for p in parts] == list(MODEL_NAMES)
    from sendwise.registry import champion

    for part in parts:
        found = champion(client, part.name)
        assert found is not None
        run_id = client.get_model_version(part.name, found[0]).run_id
        assert run_id is not None
        sample = load_sample(settings, run_id)
        assert sample is not None
        prediction = found[1].predict(sample[found[1].feature_name()])
        assert part.mean_probability == pytest.approx(prediction.mean(), abs=1e-12)
        assert len(part.drivers) >= (3 if part.name == "send_time" else 5), part.name
        weights = [d.importance for d in part.drivers]
        assert weights == sorted(weights, reverse=True)
        for driver in part.drivers:
            shown = [c for g in driver.groups if g.categories for c in g.categories]
            for group in driver.groups:
                rows = _members(group, sample[driver.feature], shown)
                assert group.rows == rows.sum() >= MIN_GROUP, (driver.feature, group.label)
                assert group.mean_probability == pytest.approx(prediction[rows].mean(), abs=1e-12)
            assert escape(driver.sentence(part.wording.outcome)) in page
            assert percent(driver.highest().mean_probability) in page
        # the strongest driver tells groups apart by a margin a marketer can act on
        top = max(part.drivers[:3], key=lambda d: d.spread)
        assert top.spread >= (0.01 if part.name == "next_best_offer" else 0.05), part.name


def test_send_time_drivers_are_the_hour_features(site: Site) -> None:
    parts = {p.name: p for p in site.section("drivers").context["parts"]}
    assert {d.feature for d in parts["send_time"].drivers} <= set(HOUR_FEATURES)
    assert parts["send_time"].note and "open-propensity model itself" in parts["send_time"].note


def test_segments_have_at_least_50_customers_and_add_up(site: Site) -> None:
    section = site.section("segments")
    recipients = section.context["recipients"]
    profile = pd.read_parquet(site.settings.feature_tables_dir / "customer_features.parquet")
    eligible = profile[profile["email_eligible"] > 0]
    assert recipients == len(eligible)
    groupings = {g.column: g for g in section.context["groupings"]}
    assert {"timezone", "country"} <= set(groupings) and any(c.startswith("attr_") for c in groupings)
    for grouping in groupings.values():
        assert all(s.customers >= 50 for s in grouping.segments), grouping.column
        assert sum(s.customers for s in grouping.segments) + grouping.left_out == recipients
        if grouping.left_out == 0:  # every customer in one segment: the segments' rates average to everyone's
            mean = sum(s.customers * s.mean_probability for s in grouping.segments) / recipients
            assert mean == pytest.approx(section.context["overall"], abs=1e-9)
    counts = eligible["timezone"].value_counts()
    for segment in groupings["timezone"].segments:
        if segment.label not in ("other", "unknown"):
            assert segment.customers == counts[segment.label]
    shown = [zone for zone, n in counts.items() if n >= 50][:12]
    other = next((s for s in groupings["timezone"].segments if s.label == "other"), None)
    rest = counts.drop(shown).sum()
    assert (other.customers if other else 0) == (rest if rest >= 50 else 0)
    assert "America/New_York" in site.page("segments")


def test_send_hours_chart_sums_and_matches_the_sends(site: Site) -> None:
    """The hours used are the local hours of the raw store's sends, worked out here zone by zone."""
    context = site.section("send-time").context
    sendwise = np.array(context["sendwise_share"])
    used = np.array(context["used_share"])
    assert sendwise.sum() == pytest.approx(1.0) and used.sum() == pytest.approx(1.0)
    assert np.allclose(sendwise * context["recipients"], np.round(sendwise * context["recipients"]))
    events = load_table(site.settings, "email_events")
    customers = load_table(site.settings, "customers")
    assert events is not None and customers is not None
    sends = message_sends(events).merge(customers[["customer_id", "timezone"]], on="customer_id")
    hours = np.concatenate(
        [group["send_at"].dt.tz_convert(zone).dt.hour.to_numpy() for zone, group in sends.groupby("timezone")]
    )
    assert used == pytest.approx(np.bincount(hours, minlength=24) / len(hours), abs=1e-12)
    lift = context["lift"]
    assert lift is not None and lift.recipients > 0.9 * context["recipients"]
    if lift.recipients == context["recipients"]:  # the tabulated curves at sendwise's hour, against the booster
        assert lift.at_sendwise == pytest.approx(site.section("segments").context["overall"], abs=1e-9)
    assert lift.at_sendwise >= lift.at_used  # each recipient's best hour is worth at least any mix of hours
    assert lift.points > 0.01
    page = site.page("send-time")
    assert "Baseline:" in page and percent(lift.at_used) in page and percent(lift.at_sendwise) in page


def _observed_reward(settings: Settings, valid_start: str, as_of: pd.Timestamp) -> tuple[int, float]:
    """Closed exposures with a propensity from `valid_start` on, and their mean reward (the margin of a
    conversion within the offer's window), worked out here from the raw offer events."""
    events = load_table(settings, "offer_events")
    offers = load_table(settings, "offers")
    assert events is not None and offers is not None
    days = offers.set_index("offer_id")["conversion_window_days"].fillna(settings.conversion_window_days)
    margin = offers.set_index("offer_id")["margin"].fillna(1.0)
    shown = events[(events["event"] == "exposed") & (events["propensity"] > 0)].reset_index(drop=True)
    window = pd.to_timedelta(shown["offer_id"].map(days), unit="D")
    shown = shown[(shown["occurred_at"] >= pd.Timestamp(valid_start)) & (shown["occurred_at"] + window <= as_of)]
    converted = events[events["event"] == "converted"]
    pairs = shown.reset_index().merge(converted, on=["customer_id", "offer_id"], suffixes=("", "_c"))
    delay = pairs["occurred_at_c"] - pairs["occurred_at"]
    hit = pairs[(delay >= pd.Timedelta(0)) & (delay <= pd.to_timedelta(pairs["offer_id"].map(days), unit="D"))]
    won = shown.index.isin(hit["index"].unique())
    return len(shown), float((won * shown["offer_id"].map(margin).to_numpy()).mean())


def test_offers_mix_values_and_off_policy_estimates(site: Site) -> None:
    context = site.section("offers").context
    mix = context["mix"]
    assert sum(r.share for r in mix.offers) == pytest.approx(1.0)
    assert sum(r.share for r in mix.kinds) == pytest.approx(1.0)
    assert mix.added is not None and mix.added >= 0 and mix.chosen_value >= mix.control_value
    estimates = context["estimates"]
    assert estimates is not None and estimates.held_out_model  # judged by the booster fit before its window
    settings = site.settings
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    version = client.get_model_version_by_alias("next_best_offer", "champion")
    assert version.run_id is not None
    valid_start = client.get_run(version.run_id).data.params["valid_start"]
    units, observed = _observed_reward(settings, valid_start, resolve_as_of(settings).time)
    assert estimates.units == units
    assert estimates.logged.value == pytest.approx(observed, rel=1e-9)
    for estimate in [*estimates.sendwise, *estimates.control, *estimates.over_logged, *estimates.over_control]:
        assert estimate.low < estimate.value < estimate.high
    assert {e.estimator for e in estimates.sendwise} == {"IPS", "SNIPS", "DR"}
    assert 0 < estimates.matched < estimates.units


def test_model_cards_show_the_runs_metrics_beside_baselines(site: Site) -> None:
    settings = site.settings
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    cards = {c.champion.name: c for c in site.section("models").context["cards"]}
    page = site.page("models")
    for name, made in cards.items():
        run = client.get_run(client.get_model_version_by_alias(name, "champion").run_id or "")
        metrics = run.data.metrics
        auc, logloss = made.metrics[0], next(m for m in made.metrics if m.name.startswith("log loss"))
        assert auc.value == metrics["valid_auc"] and f"{metrics['valid_auc']:.3f}" in page
        rule = dict(auc.baselines)
        simple = run.data.tags["baseline_valid_auc"]
        assert rule[simple] == metrics["baseline_valid_auc"]
        assert auc.value > max(rule.values())  # better than chance, a simple rule (and any champion it replaced)
        assert logloss.value < logloss.baselines[0][1] == metrics["baseline_valid_logloss"]
        assert dict(made.window)["held out from"] != "not recorded"
        limits = " ".join(made.limits)
        assert "Cold start:" in limits
        if name != "next_best_offer":
            assert "Privacy proxies:" in limits and "Exploration:" in limits


def test_without_online_features_the_pages_say_what_to_run(pipeline_home: PipelineHome, tmp_path: Path) -> None:
    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path / "home")
    (settings.feast_dir / "registry.db").unlink()
    result = write_report(settings, "open", site_dir=tmp_path / "site", log_to_mlflow=False, progress=False)
    assert [s.slug for s in result.sections] == ["drivers", "segments", "send-time", "lift", "models"]
    assert result.notes == [NO_AUDIENCE] and "sendwise pipeline --data DATA_DIR" in NO_AUDIENCE
    assert "sendwise pipeline --data DATA_DIR" in (tmp_path / "site" / "segments.html").read_text(encoding="utf-8")
    assert not (settings.feast_dir / "registry.db").exists()  # nothing applied or rebuilt


# --- what the site must never do ----------------------------------------------------------------------------
def test_markup_from_data_comes_out_escaped(hostile_site: Site) -> None:
    pages = {p.name: p.read_text(encoding="utf-8") for p in hostile_site.folder.glob("*.html")}
    assert "hostile.html" in pages and 'href="hostile.html"' in pages["index.html"]
    seen = {name for name, html in pages.items() if "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html}
    assert {"index.html", "offers.html", "segments.html", "hostile.html"} <= seen
    for name, html in pages.items():
        assert "<script" not in html and "onerror=" not in html.replace("onerror=&#34;", ""), name
        assert "{{ 7*7 }}" in html or name not in seen, name  # data is not rendered as a template either
    segments = hostile_site.section("segments").context["groupings"]
    assert any(s.label == HOSTILE for g in segments for s in g.segments)


# --- in a browser -------------------------------------------------------------------------------------------
_READ = """() => ({
    images: [...document.images].map(i => ({src: i.getAttribute("src"), width: i.naturalWidth, done: i.complete})),
    scripts: document.scripts.length,
    pwned: window.pwned === 1,
    scrollWidth: document.documentElement.scrollWidth,
    clientWidth: document.documentElement.clientWidth,
})"""


def _visit(url: str, screenshot: Path, browser: Browser) -> dict[str, Any]:
    """Load `url` with every request recorded (and any that would leave 127.0.0.1 refused), read the page, and
    save a full-page screenshot."""
    requested: list[str] = []

    def record(route: Route) -> None:
        requested.append(route.request.url)
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            route.abort()

    context = browser.new_context(viewport={"width": 1024, "height": 800})
    try:
        page = context.new_page()
        page.route("**/*", record)
        response = page.goto(url, wait_until="load")
        assert response is not None and response.ok, url
        found: dict[str, Any] = page.evaluate(_READ)
        page.screenshot(path=screenshot, full_page=True)
    finally:
        context.close()
    return {**found, "requested": requested}


def test_every_page_loads_offline_in_chromium(hostile_site: Site, site: Site, browser: Chromium) -> None:
    shots = screenshots_dir() / "test_report"
    shots.mkdir(parents=True, exist_ok=True)
    for label, built in (("site", site), ("hostile", hostile_site)):
        with serve_directory(built.folder) as base:
            for page in sorted(built.folder.glob("*.html")):
                shot = shots / f"{label}-{page.stem}.png"
                found = browser.run(functools.partial(_visit, f"{base}{page.name}", shot))
                assert not [u for u in found["requested"] if urlsplit(u).hostname != "127.0.0.1"], page.name
                assert found["images"] or page.stem in ("index", "models", "hostile", "lift"), page.name
                for image in found["images"]:
                    assert image["done"] and image["width"] > 0, (page.name, image["src"])
                assert found["scripts"] == 0 and not found["pwned"], page.name
                assert found["scrollWidth"] <= found["clientWidth"], f"{page.name} scrolls sideways"
                assert shot.stat().st_size > 10_000
    assert (shots / "site-index.png").exists() and (shots / "hostile-offers.png").exists()


def test_the_audience_on_redis_is_the_one_on_the_snapshot(
    pipeline_home: PipelineHome, redis_home: Settings, tmp_path: Path
) -> None:
    """With Redis the service keeps no snapshot of every customer, so the report takes its audience from the
    customers the feature build materialized and reads them from Redis: the same people, curves and hours."""

    audiences = []
    for settings in (pipeline_home.settings, redis_home):
        _, inputs = _champions(settings, ReportResult(), list(MODEL_NAMES), tmp_path / settings.home.name)
        audiences.append(inputs.audience)
    on_sqlite, on_redis = audiences
    assert on_sqlite is not None and on_redis is not None and len(on_sqlite) > 100
    assert on_redis.known == on_sqlite.known
    assert sorted(on_redis.ids.tolist()) == sorted(on_sqlite.ids.tolist())
    order = pd.Index(on_redis.ids).get_indexer(on_sqlite.ids)
    np.testing.assert_allclose(on_redis.curves[order], on_sqlite.curves, rtol=1e-6)
    np.testing.assert_array_equal(on_redis.best[order], on_sqlite.best)
