"""Rendered emails as a reader's browser shows them: Debian's chromium at 600 and 375 px, light and dark.

The offers' pictures are served by a local web server; every email is a logged decision rendered by its id
(`Engine.render`). The screenshots are kept under `artifacts/screenshots/test_email_browser/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest

from serving.render import CLIP_BYTES
from serving.schemas import DecideRequest, Recipient, RenderRequest
from tests.browser import Chromium, PageInspection, inspect_page, screenshots_dir, serve_directory, write_png

HOSTILE_TITLE = '<img src=x onerror="window.pwned=1"><script>window.pwned=1</script>{{ 7*7 }}\r\nBcc: x@example.com'
WIDTHS = (600, 375)


@pytest.fixture
def served(tmp_path: Path) -> Any:
    with serve_directory(tmp_path) as base:
        yield tmp_path, base


def _with_pictures(engine: Any, monkeypatch: pytest.MonkeyPatch, folder: Path, base: str) -> dict[str, dict]:
    """The engine's offers with pictures on the local server (one colour each) and links of their own; the first
    discount offer's title is hostile."""
    offers: pd.DataFrame = engine.catalog.offers.copy()
    colours = [(37, 99, 235), (220, 38, 38), (22, 163, 74), (234, 179, 8), (147, 51, 234)]
    for k, offer_id in enumerate(offers["offer_id"]):
        write_png(folder / "images" / f"{offer_id}.png", 1072, 536, colours[k % len(colours)])
    offers["image_url"] = [f"{base}images/{o}.png" for o in offers["offer_id"]]
    offers["url"] = [f"https://shop.example/offers/{o}?ref=email" for o in offers["offer_id"]]
    hostile = offers.index[offers["kind"] == "discount"][0]
    offers.loc[hostile, "title"] = HOSTILE_TITLE
    monkeypatch.setattr(engine.catalog, "offers", offers)
    return engine.catalog.rows_by_id()


def _shown_offers(engine: Any, decision_id: str) -> list[str]:
    logged = engine.log.find(engine.settings.decisions_dir, decision_id)
    assert logged is not None
    return [str(o) for o in logged.entry["exposed_offer_ids"]]


def _check_offer(page: PageInspection, offer: dict, decision_id: str) -> None:
    links = [link.href or "" for link in page.links if (link.href or "").startswith(offer["url"].split("?")[0])]
    assert links, f"no link to {offer['url']}"
    for href in links:
        query = parse_qs(urlsplit(href).query)
        assert query["sw"] == [decision_id] and query["ref"] == ["email"]
        assert {"utm_source", "utm_medium", "utm_campaign", "utm_content"} <= query.keys()
    images = [image for image in page.images if image.src == offer["image_url"]]
    assert images, f"no picture of {offer['offer_id']}"
    for image in images:
        assert image.loaded and image.natural_width == 1072, image
        assert image.alt, f"the picture of {offer['offer_id']} has no alt text"


def test_offers_link_and_show_their_pictures_at_600_and_375_px(  # type: ignore[no-untyped-def]
    engine, customers, browser: Chromium, served, monkeypatch
) -> None:
    folder, base = served
    catalog = _with_pictures(engine, monkeypatch, folder, base)
    ids = customers.loc[customers["consent_email"] & customers["consent_profiling"], "customer_id"].head(40).tolist()
    request = DecideRequest(
        recipients=[Recipient(customer_id=c) for c in ids],
        campaign={"kind": "promotional", "topic": "outdoor", "campaign_id": "spring-sale"},
        k_offers=5,
    )
    decisions = [d for d in engine.decide(request).decisions if d.send]
    with_offers = [d for d in decisions if _shown_offers(engine, d.decision_id)]
    assert len(with_offers) >= 5
    shots = screenshots_dir() / "test_email_browser"
    checked = 0
    for decision in with_offers[:5]:
        email = engine.render(RenderRequest(decision_id=decision.decision_id))
        assert email.send and email.html
        assert len(email.html.encode()) < CLIP_BYTES
        page_file = folder / f"{decision.decision_id}.html"
        page_file.write_text(email.html, encoding="utf-8")
        shown = _shown_offers(engine, decision.decision_id)
        for width in WIDTHS:
            for scheme in ("light", "dark"):
                page = inspect_page(
                    browser,
                    f"{base}{page_file.name}",
                    width,
                    shots / f"{checked}-{width}px-{scheme}.png",
                    color_scheme=scheme,
                )
                assert not page.scrolls_horizontally, f"{page.scroll_width} px wide at {width} px"
                assert page.scripts == 0 and page.event_handlers == 0, "markup from data never runs"
                assert page.screenshot.stat().st_size > 5_000
                for offer_id in shown:
                    _check_offer(page, catalog[offer_id], decision.decision_id)
                unsubscribe = [link for link in page.links if link.text.lower() == "unsubscribe"]
                assert unsubscribe and (unsubscribe[0].href or "").startswith("https://shop.example/unsubscribe?")
        checked += 1
    assert checked == 5
    assert (shots / "0-375px-dark.png").exists()
