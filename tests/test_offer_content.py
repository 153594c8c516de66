"""The offers' own content (title, description, url, image_url): through the ingest into the raw store and the
catalog the renderer reads, links checked, text kept as given, and none of it a model feature."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features.build import build_feature_tables
from features.repo.services import offer_feature_refs
from features.repo.views import offer_fv
from sendwise import contract
from sendwise.ingest import IngestReport, ingest
from sendwise.raw import load_table, write_table
from sendwise.settings import Settings
from serving.modules import ModuleFacts, OfferFact, choose_modules
from serving.offers import OfferCatalog
from serving.online import RhythmPriors
from serving.render import render_email
from tests.test_render import BRAND, TRACKING, Page

NOT_A_LINK = "not an absolute http or https link with a host"
BROKEN_LINK = f"{NOT_A_LINK} (it has whitespace or a control character inside)"
HTTP_IMAGE_ADVICE = "mail clients block or warn on images over http; use https"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    pd.DataFrame({"customer_id": ["c1"], "consent_email": ["true"], "consent_profiling": ["true"]}).to_csv(
        folder / "customers.csv", index=False
    )
    return folder


def offers_parquet(data: Path, rows: list[dict[str, object]]) -> None:
    """An offers export as Parquet: every value reaches the ingest exactly as written here."""
    frame = pd.DataFrame(rows)
    frame.insert(1, "kind", "discount")
    frame.astype(object).to_parquet(data / "offers.parquet", index=False)


def run(data: Path, settings: Settings) -> IngestReport:
    return ingest(data, settings, progress=False)


def stored_offers(settings: Settings) -> pd.DataFrame:
    frame = load_table(settings, "offers")
    assert frame is not None, "offers were not written"
    return frame.set_index("offer_id")


def reasons(settings: Settings) -> dict[str, str]:
    quarantine = pd.read_parquet(settings.quarantine_dir / "offers.parquet")
    return dict(zip(quarantine["offer_id"], quarantine["_reason"], strict=True))


# --- through the ingest -------------------------------------------------------------------------------------
def test_content_is_kept_through_the_ingest(data: Path, settings: Settings) -> None:
    (data / "offers.csv").write_text(
        "offer_id;kind;category;discount_pct;title;description;url;image_url\n"
        'of-1;discount;outdoor;20;20% off tents;"Light, waterproof; for two.";'
        "https://shop.example/offers/of-1?utm_source=email&x=1#top;https://cdn.shop.example:8443/img/of-1.png\n"
        'of-2;content;books;;The reading list;"Five books; one weekend.";HTTP://Shop.Example/guide;\n'
        "of-3;control;;;;;;\n",
        encoding="utf-8",
    )
    report = run(data, settings)
    offers = stored_offers(settings)
    assert offers.loc["of-1", ["title", "url", "image_url"]].tolist() == [
        "20% off tents",
        "https://shop.example/offers/of-1?utm_source=email&x=1#top",
        "https://cdn.shop.example:8443/img/of-1.png",
    ]
    assert offers.loc["of-2", ["description", "url"]].tolist() == [
        "Five books; one weekend.",
        "HTTP://Shop.Example/guide",
    ]
    assert offers.loc["of-3", list(contract.OFFER_CONTENT)].isna().all()
    assert report.tables["offers"].accepted == 3 and report.tables["offers"].quarantined == 0
    assert not [w for w in report.warnings if "not in the contract" in w or "http" in w]


def test_the_content_columns_are_the_contracts(data: Path, settings: Settings) -> None:
    """Their names in any case and with spaces around them, like every contract column."""
    offers_parquet(data, [{"offer_id": "of-1", " Title ": "Tents", "IMAGE_URL": "https://shop.example/t.png"}])
    report = run(data, settings)
    assert stored_offers(settings).loc["of-1", ["title", "image_url"]].tolist() == [
        "Tents",
        "https://shop.example/t.png",
    ]
    assert list(load_table(settings, "offers").columns) == list(contract.RAW_COLUMNS["offers"])  # type: ignore[union-attr]
    assert not [w for w in report.warnings if "not in the contract" in w]


@pytest.mark.parametrize("column", ["url", "image_url"])
def test_links_that_are_not_absolute_http_links_are_quarantined(data: Path, settings: Settings, column: str) -> None:
    links = {
        "js": "javascript:alert(document.cookie)",
        "js-spaced": "  JavaScript:alert(1)",
        "vbscript": "vbscript:msgbox(1)",
        "data": "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "mailto": "mailto:shop@example.com",
        "ftp": "ftp://shop.example/offer",
        "relative": "/offers/of-1",
        "bare": "shop.example/offers/of-1",
        "scheme-relative": "//shop.example/offers/of-1",
        "no-host": "https:///offers/of-1",
        "only-scheme": "https://",
        "bad-port": "https://shop.example:99999/offer",
        "bad-ipv6": "https://[::1/offer",
        "space": "https://shop.example/summer sale",
        "tab": "https://shop.example/\tx",
        "crlf": "https://shop.example/x\r\nSet-Cookie: a=b",
        "lf": "https://shop.example/x\nmore",
        "nul": "https://shop.example/x\x00y",
        "nbsp": "https://shop.example/x\u00a0y",
        "line-separator": "https://shop.example/x\u2028y",
    }
    good = {"ok-https": "https://shop.example/offers/1", "ok-padded": "  https://shop.example/offers/2\r\n"}
    offers_parquet(data, [{"offer_id": key, column: value} for key, value in {**links, **good}.items()])
    report = run(data, settings)
    broken = {"space", "tab", "crlf", "lf", "nul", "nbsp", "line-separator"}
    assert reasons(settings) == {key: f"{column}: {BROKEN_LINK if key in broken else NOT_A_LINK}" for key in links}
    kept = stored_offers(settings)[column]
    assert kept.to_dict() == {"ok-https": "https://shop.example/offers/1", "ok-padded": "https://shop.example/offers/2"}
    top = {r.reason: r.rows for r in report.tables["offers"].top_reasons}
    assert top[f"{column}: {NOT_A_LINK}"] == len(links) - len(broken)
    assert top[f"{column}: {BROKEN_LINK}"] == len(broken)


def test_a_bad_link_quarantines_its_row_with_every_reason(data: Path, settings: Settings) -> None:
    offers_parquet(
        data,
        [{"offer_id": "of-1", "discount_pct": 150.0, "url": "javascript:void(0)", "image_url": "img/of-1.png"}],
    )
    run(data, settings)
    assert reasons(settings) == {
        "of-1": f"discount_pct: outside [0, 100]; url: {NOT_A_LINK}; image_url: {NOT_A_LINK}",
    }
    assert load_table(settings, "offers") is not None and stored_offers(settings).empty


def test_an_image_over_plain_http_is_accepted_with_a_warning(data: Path, settings: Settings) -> None:
    offers_parquet(
        data,
        [
            {"offer_id": "of-1", "url": "http://localhost:8000/o/1", "image_url": "http://localhost:8000/i/1.png"},
            {"offer_id": "of-2", "url": "http://localhost:8000/o/2", "image_url": "http://localhost:8000/i/2.png"},
            {"offer_id": "of-3", "url": "http://localhost:8000/o/3", "image_url": "https://shop.example/i/3.png"},
        ],
    )
    report = run(data, settings)
    offers = stored_offers(settings)
    assert offers.loc["of-1", "image_url"] == "http://localhost:8000/i/1.png" and len(offers) == 3
    http = [w for w in report.warnings if "plain http" in w]
    assert http == [
        "offers.parquet, column image_url: 2 links over plain http (e.g. 'http://localhost:8000/i/1.png') were "
        f"accepted; {HTTP_IMAGE_ADVICE}"
    ]  # an offer's own url over http is no warning: the reader's browser opens it
    assert "warning: offers.parquet, column image_url: 2 links over plain http" in report.to_text()


def test_hostile_text_is_kept_as_given(data: Path, settings: Settings) -> None:
    """Escaping is the renderer's: the raw store keeps what the shop wrote, markup, braces, line breaks and spaces."""
    texts = {
        "html": ("<script>alert(1)</script><b>20%</b> off", '<img src=x onerror="alert(1)">'),
        "template": ("{{ 7 * 7 }} {% raw %}", "{{ config.items() }}"),
        "crlf": ("Tents\r\nBcc: victim@example.com", "line one\nline two\r\n"),
        "spaces": ("  padded title  ", "\ttabbed\t"),
        "unicode": ("Zelte – 20 % günstiger ☀", "Ünïcödé\u2028und mehr"),
    }
    offers_parquet(data, [{"offer_id": key, "title": t, "description": d} for key, (t, d) in texts.items()])
    run(data, settings)
    offers = stored_offers(settings)
    for key, (title, description) in texts.items():
        assert (offers.loc[key, "title"], offers.loc[key, "description"]) == (title, description), key


def test_hostile_text_in_a_csv_is_kept_as_given(data: Path, settings: Settings) -> None:
    """Quoted CSV fields may hold the delimiter, quotes and line breaks: they arrive as written."""
    (data / "offers.csv").write_bytes(
        b"offer_id,kind,title,description\r\n"
        b'of-1,discount,"<a href=""javascript:alert(1)"">x</a>","a\r\nb, {{ c }}"\r\n'
        b"of-2,discount,  spaced  ,\r\n"
        b'of-3,discount," ",\r\n'
    )
    run(data, settings)
    offers = stored_offers(settings)
    assert offers.loc["of-1", "title"] == '<a href="javascript:alert(1)">x</a>'
    assert offers.loc["of-1", "description"] == "a\r\nb, {{ c }}"
    assert offers.loc["of-2", "title"] == "  spaced  "
    assert offers.loc["of-3", "title"] is None and offers.loc["of-3", "description"] is None  # nothing to show


def test_offers_stored_before_the_content_columns_get_them(data: Path, settings: Settings) -> None:
    """A home whose offers were ingested before the contract had these columns: its next offers export adds
    them, as missing, to the offers it does not name, and the raw table has the contract's columns in order."""
    old = pd.DataFrame({"offer_id": ["of-0"], "kind": ["discount"], "margin": [2.0]})
    old = old.reindex(columns=[c for c in contract.RAW_COLUMNS["offers"] if c not in contract.OFFER_CONTENT])
    write_table(settings, "offers", old.astype({"margin": float}))
    offers_parquet(data, [{"offer_id": "of-1", "title": "New"}])
    run(data, settings)
    offers = load_table(settings, "offers")
    assert offers is not None and list(offers.columns) == list(contract.RAW_COLUMNS["offers"])
    assert offers.set_index("offer_id")["title"].to_dict() == {"of-0": None, "of-1": "New"}


# --- what serving reads -------------------------------------------------------------------------------------
def catalog_of(offers: pd.DataFrame | None) -> OfferCatalog:
    return OfferCatalog(offers, None, None, {}, RhythmPriors(None))


def test_the_catalog_gives_the_renderer_the_content_as_text_or_none(data: Path, settings: Settings) -> None:
    offers_parquet(
        data,
        [
            {"offer_id": "of-1", "title": "<b>Tents</b>", "url": "https://shop.example/of-1"},
            {"offer_id": "of-2", "discount_pct": 10.0},
        ],
    )
    run(data, settings)
    rows = catalog_of(load_table(settings, "offers")).rows_by_id()
    assert {name: rows["of-1"][name] for name in contract.OFFER_CONTENT} == {
        "title": "<b>Tents</b>",
        "description": None,
        "url": "https://shop.example/of-1",
        "image_url": None,
    }
    assert all(rows["of-2"][name] is None for name in contract.OFFER_CONTENT)
    older = pd.DataFrame({"offer_id": ["of-9"], "kind": ["discount"], "discount_pct": [5.0]})  # an older raw store
    assert {name: catalog_of(older).rows_by_id()["of-9"][name] for name in contract.OFFER_CONTENT} == dict.fromkeys(
        contract.OFFER_CONTENT
    )


def test_hostile_content_reaches_the_email_escaped(data: Path, settings: Settings) -> None:
    offers_parquet(
        data,
        [
            {
                "offer_id": "of-1",
                "discount_pct": 20.0,
                "title": "<script>alert(1)</script>{{ 7 * 7 }}\r\nBcc: victim@example.com",
                "description": "Light\r\nand dry",
                "url": "https://shop.example/of-1?a=1&b=2",
                "image_url": "https://shop.example/of-1.png",
            }
        ],
    )
    run(data, settings)
    catalog = catalog_of(load_table(settings, "offers")).rows_by_id()
    facts = ModuleFacts(
        customer_id="c1",
        open_probability=0.3,
        population_open_probability=0.2,
        offers=[OfferFact(offer_id="of-1", kind="discount", conversion_probability=0.05, expected_value=2.0)],
        high_value_threshold=1.0,
        history_emails=20,
    )
    choices = choose_modules(facts, "promotional")
    assert any(choice.name == "hero_offer" for choice in choices)
    email = render_email(
        "promotional",
        facts,
        choices,
        brand=BRAND,
        tracking=TRACKING,
        unsubscribe_url="https://shop.example/u",
        offers_catalog=catalog,
    )
    page = Page(email.html)
    shown = "<script>alert(1)</script>{{ 7 * 7 }} Bcc: victim@example.com"  # one line, as the shop wrote it
    assert not page.tags("script") and shown in page.text and "&lt;script&gt;" in email.html
    assert any(a["href"].startswith("https://shop.example/of-1?a=1&b=2&sw=d-") for a in page.tags("a"))
    assert [a["src"] for a in page.tags("img")] == ["https://shop.example/of-1.png"]
    assert email.subject == shown  # a header: one line, whatever the title holds
    assert "Light and dry" in page.text and shown in email.text


# --- never a feature ----------------------------------------------------------------------------------------
OFFER_FEATURES = ["offer_kind", "offer_category", "discount_pct", "price", "margin"]


def test_no_content_column_becomes_a_feature(data: Path, settings: Settings) -> None:
    offers_parquet(
        data,
        [
            {
                "offer_id": "of-1",
                "category": "outdoor",
                "discount_pct": 20.0,
                "title": "20% off outdoor",
                "description": "Take 20% off.",
                "url": "https://shop.example/of-1",
                "image_url": "https://shop.example/of-1.png",
            }
        ],
    )
    ingest(data, settings, as_of="2026-03-01T00:00:00Z", progress=False)
    build_feature_tables(settings, progress=False)
    table = pd.read_parquet(settings.feature_tables_dir / "offer_features.parquet")
    assert list(table.columns) == ["offer_id", "event_timestamp", *OFFER_FEATURES]
    assert sorted(field.name for field in offer_fv.schema) == sorted(OFFER_FEATURES)
    assert offer_feature_refs() == [f"offer_fv:{name}" for name in OFFER_FEATURES]
    values = pd.read_parquet(settings.feature_tables_dir / "offer_values.parquet")
    assert not set(values.columns) & set(contract.OFFER_CONTENT)
