"""Emails a brand can send: the brand file, tracked links, the headers inbox providers require, personalised
subjects, the user's own templates, and rendering a logged decision by its id (serving.brand, serving.links,
serving.render, Engine.render)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from serving.brand import Brand, BrandFileError, BrandNotReady, brand_for, load_brand
from serving.errors import UnknownDecision
from serving.links import email_headers, filled
from serving.modules import choose_modules
from serving.render import CLIP_BYTES, TemplateTextError, available_templates, render_email
from serving.schemas import DecideRequest, Recipient, RenderRequest
from tests.conftest import DEMO_BRAND
from tests.test_render import BRAND, CATALOG, TRACKING, Page, make_facts, offer, render

HOSTILE = "<script>alert(1)</script>{{ 7*7 }}{% if 1 %}x{% endif %}\r\nBcc: victim@example.com"
DECISION = "d-" + "0123456789abcdef" * 2


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


# --- the brand file ---------------------------------------------------------------------------------------------


def test_demo_brand_loads_and_can_send_commercial_email() -> None:
    brand = load_brand(DEMO_BRAND)
    assert brand.missing_for_commercial() == []
    assert brand_for(brand, "promotional", DEMO_BRAND) is brand


def test_brand_file_errors_name_every_field(tmp_path: Path) -> None:
    path = tmp_path / "brand.yaml"
    path.write_text(
        "name: Shop\ncolours: {primary: blue}\nunsubscribe_url: http://shop.example/u?c={customer_id}\n"
        "category_url: https://shop.example/{category}/{email}\nlogo: x.png\n"
    )
    with pytest.raises(BrandFileError) as raised:
        load_brand(path)
    message = str(raised.value)
    assert str(path) in message
    assert "colours.primary" in message
    assert "unsubscribe_url: Value error, unsubscribe_url must start with https://" in message
    assert "category_url: Value error, category_url names ['email']; it may name {category}" in message
    assert "logo: Extra inputs are not permitted" in message


def test_brand_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "brand.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(BrandFileError, match="must be a YAML mapping"):
        load_brand(path)
    with pytest.raises(BrandFileError, match="cannot read the brand file"):
        load_brand(tmp_path / "missing.yaml")


def test_commercial_email_needs_an_address_and_an_unsubscribe_link() -> None:
    bare = Brand(name="Shop")
    with pytest.raises(BrandNotReady) as raised:
        brand_for(bare, "promotional", Path("brand.yaml"))
    assert raised.value.status == 422
    assert "has no postal_address and no unsubscribe_url" in raised.value.message
    assert "CAN-SPAM" in raised.value.message
    assert brand_for(bare, "transactional", Path("brand.yaml")) is bare
    with pytest.raises(BrandNotReady, match="no brand configured: set SENDWISE_BRAND_FILE"):
        brand_for(None, "transactional", None)


# --- links and headers ------------------------------------------------------------------------------------------


def test_every_link_carries_the_decision_and_utm_without_losing_its_own_parameters() -> None:
    link = TRACKING.link("https://shop.example/p?id=7&utm_campaign=own#top", "hero_offer-of-7")
    parts = urlsplit(link)
    assert (parts.scheme, parts.netloc, parts.path, parts.fragment) == ("https", "shop.example", "/p", "top")
    assert query(link) == {
        "id": ["7"],
        "utm_campaign": ["own"],
        "sw": [TRACKING.decision_id],
        "utm_source": ["sendwise"],
        "utm_medium": ["email"],
        "utm_content": ["hero_offer-of-7"],
    }


def test_unsubscribe_template_values_are_encoded() -> None:
    url = filled("https://shop.example/u?c={customer_id}&d={decision_id}", "a&b=c\r\n/x", DECISION, None)
    assert url == f"https://shop.example/u?c=a%26b%3Dc%0D%0A%2Fx&d={DECISION}"


def test_headers_for_one_click_unsubscription() -> None:
    brand = load_brand(DEMO_BRAND)
    unsubscribe = filled(str(brand.unsubscribe_url), "c-1", DECISION, "spring")
    headers = email_headers(brand, DECISION, unsubscribe, "promotional", "c-1", "spring")
    assert headers == {
        "X-Sendwise-Decision": DECISION,
        "From": "The demo shop team <news@shop.example>",
        "List-Unsubscribe": (
            f"<https://shop.example/unsubscribe?c=c-1&d={DECISION}>, "
            f"<mailto:unsubscribe@shop.example?subject=unsubscribe%20{DECISION}>"
        ),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    transactional = email_headers(brand, DECISION, None, "transactional", "c-1", None)
    assert "List-Unsubscribe" not in transactional


# --- what the email says ----------------------------------------------------------------------------------------


def test_offer_links_and_pictures() -> None:
    email = render()
    page = Page(email.html)
    hrefs = [a["href"] for a in page.tags("a")]
    hero = [h for h in hrefs if h.startswith("https://shop.example/of-7?")]
    assert hero and all(query(h)["sw"] == [TRACKING.decision_id] and "utm_source" in query(h) for h in hero)
    images = {img["src"]: img["alt"] for img in page.tags("img")}
    assert images == {"https://shop.example/img/of-7.jpg": "Trail shoes, 20% off"}
    text_links = {word for word in email.text.split() if word.startswith("https://shop.example/of")}
    assert text_links == {h for h in hrefs if h.startswith("https://shop.example/of")}, "the same links in both parts"


def test_footer_has_the_address_and_the_unsubscribe_link() -> None:
    email = render()
    assert "Trail &amp; Co<br>1 Example Street<br>Berlin" in email.html
    assert "Trail & Co\n1 Example Street\nBerlin" in email.text
    assert any(a["href"] == "https://shop.example/unsubscribe?c=c-1&t=tok" for a in Page(email.html).tags("a"))


def test_hostile_strings_come_out_escaped_and_never_reach_a_header() -> None:
    catalog = {"of-7": {**CATALOG["of-7"], "title": HOSTILE, "description": HOSTILE}}
    facts = make_facts(campaign_topic=HOSTILE, interests=[HOSTILE])
    subject = "Hi {{ attr_name }}, for you"
    email = render_email(
        "promotional",
        facts,
        choose_modules(facts),
        brand=BRAND,
        tracking=TRACKING,
        unsubscribe_url="https://shop.example/u",
        offers_catalog=catalog,
        personal=_personal(subject, {"attr_name": HOSTILE}),
    )
    page = Page(email.html)
    assert not page.tags("script"), "markup from data is never markup in the email"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;{{ 7*7 }}{% if 1 %}x{% endif %}" in email.html
    assert HOSTILE.replace("\r\n", " ") in [img["alt"] for img in page.tags("img")], "an attribute holds it as text"
    assert "49" not in email.subject and "\r" not in email.subject and "\n" not in email.subject
    assert (
        email.subject == "Hi <script>alert(1)</script>{{ 7*7 }}{% if 1 %}x{% endif %} Bcc: victim@example.com, for you"
    )
    assert "\n" not in email.preheader and "\r" not in email.preheader
    assert "<script>" in email.text, "the plain-text part is text: nothing in it runs"


def _personal(subject: str | None, attributes: dict[str, Any], preheader: str | None = None) -> Any:
    from serving.render import Personal

    return Personal(subject, preheader, attributes)


def test_subject_and_preheader_from_the_campaign_personalised() -> None:
    personal = _personal("{{ attr_first_name | default('Hello') }}, new in {{ topic }}", {}, "Only at {{ brand }}")
    email = render(personal=personal)
    assert email.subject == "Hello, new in outdoor"
    assert email.preheader == "Only at Trail & Co"
    named = render(personal=_personal("{{ attr_first_name | default('Hello') }}!", {"attr_first_name": "Ana"}))
    assert named.subject == "Ana!"
    with pytest.raises(TemplateTextError, match=r"campaign\.subject cannot be filled in"):
        render(personal=_personal("{{ attr_first_name.__class__.__mro__ }}", {"attr_first_name": "Ana"}))
    with pytest.raises(TemplateTextError, match=r"campaign\.subject"):
        render(personal=_personal("{{ unclosed", {}))


def test_mail_client_layout_dark_mode_and_size() -> None:
    email = render()
    assert '<meta name="color-scheme" content="light dark">' in email.html
    assert "@media (prefers-color-scheme: dark)" in email.html
    assert 'width="600"' in email.html and "max-width: 600px" in email.html
    assert len(email.html.encode()) < CLIP_BYTES and email.warnings == [
        "offer of-5 has no url in the offers table: its secondary_offers has no link"
    ]
    huge = {"of-7": {**CATALOG["of-7"], "description": "x " * 60_000}}
    assert any("Gmail clips email over" in w for w in render(offers_catalog=huge).warnings)


def test_templates_folder_overrides_built_ins_by_name(tmp_path: Path) -> None:
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "hero_offer.html.j2").write_text(
        '<tr><td class="module"><a href="{{ module.offers[0].url }}">'
        "OWN HERO {{ module.offers[0].title }}</a></td></tr>\n"
    )
    (tmp_path / "holiday.html.j2").write_text('{% extends "base.html.j2" %}\n')
    (tmp_path / "holiday.txt.j2").write_text(
        '{% extends "base.txt.j2" %}\n{% block kicker %}Happy holidays{% endblock %}\n'
    )
    (tmp_path / "draft.html.j2").write_text("no text part beside it\n")
    assert available_templates(tmp_path) == ("promotional", "newsletter", "holiday")
    facts = make_facts()
    email = render_email(
        "holiday",
        facts,
        choose_modules(facts),
        brand=BRAND,
        tracking=TRACKING,
        unsubscribe_url="https://shop.example/u",
        offers_catalog=CATALOG,
        templates_dir=tmp_path,
    )
    assert "OWN HERO Trail shoes, 20% off" in email.html
    assert "Happy holidays" in email.text
    assert "OWN HERO" not in render().html, "the built-ins are unchanged without the folder"


def test_content_block_when_no_offer_beats_the_control_arm() -> None:
    facts = make_facts(offers=[offer("ctl", 0.5, kind="control"), offer("of-7", 0.4, discount_pct=20)])
    email = render(facts=facts)
    assert [m.name for m in email.modules] == ["content_block", "category_picks"]
    assert "Have a look: https://shop.example/?" in email.text


# --- rendering a logged decision (the engine) -------------------------------------------------------------------


def _decide_one(engine, customer_id: str, **campaign: Any):  # type: ignore[no-untyped-def]
    request = DecideRequest(recipients=[Recipient(customer_id=customer_id)], campaign=campaign or {}, k_offers=5)
    return engine.decide(request).decisions[0]


def _log_lines(engine) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return [
        orjson.loads(line)
        for p in engine.settings.decisions_dir.glob("*.jsonl")
        for line in p.read_bytes().splitlines()
    ]


def test_decide_then_render_by_id_renders_that_decision(engine, customers) -> None:  # type: ignore[no-untyped-def]
    known = customers.loc[customers["consent_email"], "customer_id"].iloc[5]
    decision = _decide_one(engine, known, kind="promotional", campaign_id="spring-sale", topic="outdoor")
    assert decision.send
    email = engine.render(RenderRequest(decision_id=decision.decision_id))
    assert email.send and email.decision_id == decision.decision_id and email.send_at == decision.send_at
    assert [m.name for m in email.modules] == decision.modules
    assert all(m.reason != "chosen when the decision was made" for m in email.modules), "the logged facts agree"
    assert len(_log_lines(engine)) == 1, "rendering made no second decision"
    page = Page(email.html or "")
    shown = [o.offer_id for o in decision.offers][: len(decision.offers)]
    catalog = engine.catalog.rows_by_id()
    offer_links = [a["href"] for a in page.tags("a") if "/offers/" in a["href"]]
    for href in offer_links:
        q = query(href)
        assert (
            q["sw"] == [decision.decision_id] and q["utm_campaign"] == ["spring-sale"] and q["utm_medium"] == ["email"]
        )
        assert href.split("?")[0] in {catalog[o]["url"] for o in shown if catalog[o].get("url")}
    assert email.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert email.headers["List-Unsubscribe"].startswith(f"<https://shop.example/unsubscribe?c={known}&d=")
    assert "mailto:" in email.headers["List-Unsubscribe"]
    again = engine.render(RenderRequest(decision_id=decision.decision_id))
    assert again.html == email.html and again.subject == email.subject
    assert len(_log_lines(engine)) == 1


def test_render_by_customer_decides_and_logs_once(engine, customers) -> None:  # type: ignore[no-untyped-def]
    known = customers.loc[customers["consent_email"], "customer_id"].iloc[6]
    email = engine.render(RenderRequest(customer_id=known, campaign={"kind": "newsletter", "topic": "books"}))
    lines = _log_lines(engine)
    assert [entry["decision_id"] for entry in lines] == [email.decision_id]
    assert email.template == "newsletter" and "newsletter_digest" in [m.name for m in email.modules]
    assert engine.render(RenderRequest(decision_id=email.decision_id)).html == email.html


def test_unknown_and_expired_decisions_are_404(engine, customers) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownDecision) as raised:
        engine.render(RenderRequest(decision_id=DECISION))
    assert raised.value.status == 404 and f"no decision {DECISION} in this home's decision log" in raised.value.message
    known = customers.loc[customers["consent_email"], "customer_id"].iloc[7]
    decision = _decide_one(engine, known)
    old = datetime.now(UTC) - timedelta(days=engine.settings.render_days + 1)
    with sqlite3.connect(engine.settings.decisions_dir / "index.sqlite") as index:
        index.execute("UPDATE batches SET decided_at = ?", (int(old.timestamp()),))
    with pytest.raises(UnknownDecision, match=f"decision {decision.decision_id} expired: it was made"):
        engine.render(RenderRequest(decision_id=decision.decision_id))


def test_a_decision_not_to_send_renders_nothing(engine, customers) -> None:  # type: ignore[no-untyped-def]
    refused = customers.loc[~customers["consent_email"], "customer_id"].iloc[0]
    decision = _decide_one(engine, refused)
    email = engine.render(RenderRequest(decision_id=decision.decision_id))
    assert not email.send and email.html is None and email.headers == {}
    assert email.reasons[0].startswith(f"decision {decision.decision_id} was not to send")
    assert email.reasons[1:] == decision.reasons


def test_commercial_email_without_a_complete_brand_is_refused_before_deciding(  # type: ignore[no-untyped-def]
    engine, customers, tmp_path, monkeypatch
) -> None:
    path = tmp_path / "brand.yaml"
    path.write_text("name: Bare shop\n")
    monkeypatch.setattr(engine, "brand", load_brand(path))
    monkeypatch.setattr(engine, "settings", engine.settings.model_copy(update={"brand_file": path}))
    known = customers.loc[customers["consent_email"], "customer_id"].iloc[8]
    with pytest.raises(BrandNotReady, match="no postal_address and no unsubscribe_url"):
        engine.render(RenderRequest(customer_id=known))
    assert _log_lines(engine) == [], "a refused render decides nothing"
    email = engine.render(RenderRequest(customer_id=known, campaign={"kind": "transactional"}))
    assert email.send and "List-Unsubscribe" not in email.headers


def test_cold_start_recipient_subject_from_their_context(engine) -> None:  # type: ignore[no-untyped-def]
    recipient = {"customer_id": "new-42", "timezone": "Asia/Tokyo", "attributes": {"attr_first_name": HOSTILE}}
    campaign = {"subject": "{{ attr_first_name | default('Hi') }}: new arrivals"}
    email = engine.render(RenderRequest(customer_id="new-42", recipient=recipient, campaign=campaign))
    assert email.send and "\n" not in (email.subject or "") and (email.subject or "").endswith(": new arrivals")
    assert (email.subject or "").startswith("<script>alert(1)</script>")
    assert not Page(email.html or "").tags("script")
    again = engine.render(RenderRequest(decision_id=email.decision_id))
    assert again.subject == email.subject, "the recipient's context is kept with the decision"


def test_render_command_writes_the_email_to_files(pipeline_home, customers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from sendwise.cli import app
    from tests.conftest import home_with_own_decision_log

    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path / "home")
    known = customers.loc[customers["consent_email"], "customer_id"].iloc[9]
    env = {**settings.library_environment(), "SENDWISE_HOME": str(settings.home)}
    result = CliRunner().invoke(app, ["render", "--customer", known, "--out", str(tmp_path / "emails")], env=env)
    assert result.exit_code == 0, result.output
    written = sorted(p.suffix for p in (tmp_path / "emails").iterdir())
    assert written == [".html", ".json", ".txt"]
    details = orjson.loads(next((tmp_path / "emails").glob("*.json")).read_bytes())
    assert details["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in result.output
    missing = CliRunner().invoke(app, ["render", "--decision-id", "d-" + "e" * 32], env=env)
    assert missing.exit_code != 0 and f"no decision d-{'e' * 32}" in missing.output


def test_no_email_for_a_customer_who_unsubscribed_since_the_decision(  # type: ignore[no-untyped-def]
    engine, customers, monkeypatch
) -> None:
    known = customers.loc[customers["consent_email"], "customer_id"].iloc[10]
    decision = _decide_one(engine, known)
    assert decision.send
    snapshot = engine.online.current().snapshot
    eligible = snapshot.consent["email_eligible"].copy()
    eligible[snapshot.rows([known])] = 0
    monkeypatch.setitem(snapshot.consent, "email_eligible", eligible)
    email = engine.render(RenderRequest(decision_id=decision.decision_id))
    assert not email.send and email.html is None and email.headers == {}
    assert email.reasons == [
        f"the customer's consent or eligibility changed since decision {decision.decision_id}: no email",
        "no longer eligible for sends: unsubscribed, complained or hard-bounced",
    ]
