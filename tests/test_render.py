"""Module choice (serving.modules) and email rendering (serving.render)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest

from serving.brand import Brand
from serving.links import Tracking
from serving.modules import ModuleChoice, ModuleFacts, OfferFact, choose_modules
from serving.render import TEMPLATES, RenderedEmail, UnknownTemplateError, render_email

UNSUBSCRIBE = "https://shop.example/unsubscribe?c=c-1&t=tok"
CATALOG = {
    "of-7": {
        "title": "Trail shoes, 20% off",
        "description": "Light and waterproof.",
        "url": "https://shop.example/of-7",
        "image_url": "https://shop.example/img/of-7.jpg",
    },
    "of-2": {"url": "https://shop.example/of-2"},
}


def offer(offer_id: str, expected_value: float, kind: str = "discount", **extra: Any) -> OfferFact:
    return OfferFact(
        offer_id=offer_id,
        kind=kind,
        conversion_probability=min(expected_value / 40, 1.0),
        expected_value=expected_value,
        **extra,
    )


def make_facts(**changes: Any) -> ModuleFacts:
    values: dict[str, Any] = {
        "customer_id": "c-1",
        "campaign_topic": "outdoor",
        "open_probability": 0.30,
        "population_open_probability": 0.22,
        "offers": [
            offer("of-7", 1.9, category="shoes", discount_pct=20, incremental_value=1.1),
            offer("of-2", 0.8, category="tents", discount_pct=10, incremental_value=0.4),
            offer("of-5", 0.3, kind="content", category="outdoor", incremental_value=0.1),
            offer("ctl", 0.2, kind="control", incremental_value=0.0),
        ],
        "high_value_threshold": 1.2,
        "category_affinity": {"shoes": 0.42, "tents": 0.30, "books": 0.05},
        "interests": ["cycling"],
        "history_emails": 25,
    }
    values.update(changes)
    return ModuleFacts(**values)


def by_name(choices: list[ModuleChoice]) -> dict[str, ModuleChoice]:
    return {choice.name: choice for choice in choices}


BRAND = Brand(
    name="Trail & Co",
    website_url="https://shop.example/",
    postal_address="Trail & Co\n1 Example Street\nBerlin",
    unsubscribe_url="https://shop.example/unsubscribe?c={customer_id}",
)
TRACKING = Tracking("d-" + "ab" * 16, "sendwise", "email", "spring-sale")


def render(template: str = "promotional", facts: ModuleFacts | None = None, **kwargs: Any) -> RenderedEmail:
    facts = facts or make_facts()
    kwargs.setdefault("offers_catalog", CATALOG)
    kwargs.setdefault("unsubscribe_url", UNSUBSCRIBE)
    return render_email(template, facts, choose_modules(facts, template), brand=BRAND, tracking=TRACKING, **kwargs)


class Page(HTMLParser):
    """What a test needs from an HTML document: its elements with their attributes, styles and text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.styles: list[str] = []
        self.texts: list[str] = []
        self._in_style = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {name: value or "" for name, value in attrs}))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        (self.styles if self._in_style else self.texts).append(data)

    def tags(self, tag: str) -> list[dict[str, str]]:
        return [attrs for name, attrs in self.elements if name == tag]

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.texts).split())


# --- choosing modules ---------------------------------------------------------------------------------


def test_hero_offer_above_threshold_with_numbers_in_reason() -> None:
    choices = by_name(choose_modules(make_facts()))

    hero = choices["hero_offer"]
    assert hero.items == ["of-7"]
    assert "of-7" in hero.reason
    assert "1.90 ≥ threshold 1.20" in hero.reason
    assert "incremental value 1.10" in hero.reason
    assert choices["secondary_offers"].items == ["of-2", "of-5"]
    assert "0.80" in choices["secondary_offers"].reason


def test_hero_offer_at_threshold_is_chosen() -> None:
    facts = make_facts(offers=[offer("of-1", 1.2), offer("of-2", 0.5)])

    assert by_name(choose_modules(facts))["hero_offer"].items == ["of-1"]


def test_no_hero_offer_below_threshold() -> None:
    facts = make_facts(offers=[offer("of-1", 1.19), offer("of-2", 0.5), offer("ctl", 0.1, kind="control")])

    choices = by_name(choose_modules(facts))

    assert "hero_offer" not in choices
    assert choices["secondary_offers"].items == ["of-1", "of-2"]
    assert "threshold 1.20" in choices["secondary_offers"].reason


def test_hero_is_best_ranked_offer_that_reaches_threshold() -> None:
    facts = make_facts(offers=[offer("of-1", 0.9), offer("of-2", 1.5), offer("of-3", 0.4)])

    choices = by_name(choose_modules(facts))

    assert choices["hero_offer"].items == ["of-2"]
    assert "ranked 2nd" in choices["hero_offer"].reason
    assert choices["secondary_offers"].items == ["of-1", "of-3"]


@pytest.mark.parametrize("template", TEMPLATES)
def test_no_offer_when_control_ranks_first_but_a_content_block(template: str) -> None:
    facts = make_facts(
        offers=[
            offer("ctl", 0.5, kind="control", incremental_value=0.0),
            offer("of-7", 3.0, discount_pct=20, incremental_value=-0.25),
            offer("of-5", 0.3, kind="content"),
        ]
    )

    choices = by_name(choose_modules(facts, template))

    assert not {"hero_offer", "secondary_offers"} & set(choices)
    content = choices["content_block"]
    assert content.items == []
    assert content.reason == (
        "the control arm ranks first, so sending no offer is worth the most: the best offer, of-7, would add "
        "-0.25; the email carries content"
    )
    email = render(template, facts)
    page = Page(email.html)
    assert "What is new in outdoor at Trail &amp; Co" in email.html
    assert not [a for a in page.tags("a") if "of-7" in a["href"]]
    website = [a["href"] for a in page.tags("a") if a["href"].startswith("https://shop.example/?")]
    assert any("utm_content=content" in href and "sw=d-" in href for href in website), website


def test_offers_ranked_below_control_are_not_shown() -> None:
    facts = make_facts(offers=[offer("of-1", 1.5), offer("ctl", 0.4, kind="control"), offer("of-2", 3.0)])

    choices = by_name(choose_modules(facts))

    assert choices["hero_offer"].items == ["of-1"]
    assert "ahead of the control arm" in choices["hero_offer"].reason
    assert "secondary_offers" not in choices


def test_reengagement_below_half_the_population_rate() -> None:
    facts = make_facts(open_probability=0.05, population_open_probability=0.20)

    reason = by_name(choose_modules(facts))["reengagement"].reason

    assert "5.0%" in reason
    assert "20.0%" in reason
    assert "0.25×" in reason
    assert "25 emails" in reason


@pytest.mark.parametrize("open_probability", [0.10, 0.15, 0.35])
def test_no_reengagement_at_or_above_half_the_population_rate(open_probability: float) -> None:
    facts = make_facts(open_probability=open_probability, population_open_probability=0.20)

    assert "reengagement" not in by_name(choose_modules(facts))


def test_cold_start_gets_welcome_and_topic_then_interests() -> None:
    facts = make_facts(
        cold_start=True,
        history_emails=0,
        open_probability=0.02,
        category_affinity={},
        interests=["books", "Outdoor", "games", "music"],
    )

    choices = by_name(choose_modules(facts))

    assert "reengagement" not in choices, "a pooled estimate says nothing about this customer's engagement"
    assert "new customer" in choices["welcome"].reason
    assert choices["category_picks"].items == ["outdoor", "books", "games"]
    assert "outdoor (campaign topic)" in choices["category_picks"].reason
    assert "books (stated interest)" in choices["category_picks"].reason


def test_little_history_gets_welcome_not_reengagement() -> None:
    facts = make_facts(history_emails=1, open_probability=0.01)

    choices = by_name(choose_modules(facts))

    assert "1 email received so far (fewer than 3)" in choices["welcome"].reason
    assert "reengagement" not in choices


def test_known_customer_categories_by_share_then_interests() -> None:
    facts = make_facts(
        category_affinity={"books": 0.05, "shoes": 0.42, "tents": 0.30, "SHOES": 0.01},
        interests=["cycling", "tents"],
    )

    picks = by_name(choose_modules(facts))["category_picks"]

    assert picks.items == ["shoes", "tents", "cycling"]
    assert "shoes (42% of product views)" in picks.reason
    assert "cycling (stated interest)" in picks.reason


def test_stated_interest_ranks_above_a_rarely_viewed_category() -> None:
    facts = make_facts(category_affinity={"shoes": 0.9, "books": 0.05}, interests=["cycling"])

    assert by_name(choose_modules(facts))["category_picks"].items == ["shoes", "cycling", "books"]


def test_newsletter_modules() -> None:
    choices = choose_modules(make_facts(), "newsletter")
    named = by_name(choices)

    assert choices[0].name == "newsletter_digest"
    assert named["newsletter_digest"].items == ["outdoor", "shoes", "tents"]
    assert "topic outdoor" in named["newsletter_digest"].reason
    assert named["content_block"].items == ["of-5"]
    assert "of-5" in named["content_block"].reason
    assert named["hero_offer"].items == ["of-7"]
    assert named["secondary_offers"].items == ["of-2"], "content offers go to the content block"
    assert "category_picks" not in named


def test_choice_is_deterministic() -> None:
    assert choose_modules(make_facts()) == choose_modules(make_facts())


def test_unknown_template_lists_the_known_ones() -> None:
    with pytest.raises(UnknownTemplateError) as raised:
        render("holiday")
    message = str(raised.value)
    assert "'holiday'" in message
    assert "promotional" in message
    assert "newsletter" in message
    with pytest.raises(UnknownTemplateError, match="promotional, newsletter"):
        choose_modules(make_facts(), "holiday")


# --- rendering ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", TEMPLATES)
def test_unsubscribe_link_in_html_and_text(template: str) -> None:
    email = render(template)

    hrefs = [attrs.get("href") for attrs in Page(email.html).tags("a")]
    assert UNSUBSCRIBE in hrefs
    assert f"Unsubscribe: {UNSUBSCRIBE}" in email.text


def test_reengagement_email_offers_the_unsubscribe_link_in_its_banner() -> None:
    email = render(facts=make_facts(open_probability=0.05, population_open_probability=0.20))

    assert [a.get("href") for a in Page(email.html).tags("a")].count(UNSUBSCRIBE) == 2
    assert email.subject.startswith("We miss you")


@pytest.mark.parametrize("template", TEMPLATES)
def test_values_from_data_are_escaped(template: str) -> None:
    evil = "<script>alert(1)</script>"
    facts = make_facts(
        campaign_topic=f"topic{evil}",
        offers=[
            offer(f"of{evil}", 2.0, category=f"cat{evil}"),
            offer("of-c", 0.5, kind="content", category=f"read{evil}"),
        ],
        category_affinity={f"aff{evil}": 0.5},
        interests=[f'"><img src=x onerror=alert(1)>{evil}'],
    )

    email = render(template, facts, offers_catalog={})
    page = Page(email.html)

    assert not page.tags("script")
    assert not [attrs for attrs in page.tags("img") if "onerror" in attrs]
    assert not [attrs for _, attrs in page.elements if any(name.startswith("on") for name in attrs)]
    assert f"Picked for you in cat{evil}" in page.text
    assert f'"><img src=x onerror=alert(1)>{evil}' in page.text
    assert f"topic{evil}" in page.text
    assert "&lt;script&gt;" in email.html


def test_css_is_inlined_and_layout_needs_no_style_block() -> None:
    page = Page(render().html)

    assert all(style.strip().startswith("@media") for style in page.styles), "only @media rules stay"
    containers = [attrs for attrs in page.tags("table") if "max-width: 600px" in attrs.get("style", "")]
    assert containers, "the 600 px container carries its width inline"
    cells = page.tags("td")
    assert cells
    assert all("style" in attrs for attrs in cells if attrs.get("class"))
    assert all(attrs.get("role") == "presentation" for attrs in page.tags("table"))


def test_images_have_alt_text_and_preheader_is_hidden() -> None:
    email = render()
    page = Page(email.html)

    images = page.tags("img")
    assert images
    assert all(attrs.get("alt") for attrs in images)
    preheader = next(attrs for tag, attrs in page.elements if tag == "div")
    assert "display: none" in preheader["style"]
    assert "Trail shoes, 20% off" in page.text


def test_text_part_has_offers_and_no_html() -> None:
    email = render()

    assert "Trail shoes, 20% off" in email.text
    assert "https://shop.example/of-7" in email.text
    assert "10% off tents" in email.text
    assert "Picked for you:\n- shoes\n- tents\n- cycling" in email.text
    assert not re.search(r"<[a-zA-Z/!]", email.text)
    assert "&amp;" not in email.text


def test_subject_and_internal_numbers() -> None:
    email = render()

    assert email.subject == "Trail shoes, 20% off"
    assert email.modules == choose_modules(make_facts())
    assert "expected value" not in email.html, "reasons are for marketers, not for the recipient"
    assert "expected value" not in email.text


def test_subject_is_one_line_even_with_a_newline_in_the_topic() -> None:
    email = render("newsletter", make_facts(campaign_topic="outdoor\r\nBcc: someone@example.com"))

    assert "\n" not in email.subject
    assert "\r" not in email.subject
    assert email.subject == "Trail & Co newsletter: outdoor Bcc: someone@example.com"


def test_cold_start_email_welcomes() -> None:
    facts = make_facts(cold_start=True, history_emails=0, category_affinity={}, interests=["books"])

    email = render(facts=facts)

    assert email.subject == "Welcome to Trail & Co: Trail shoes, 20% off"
    assert "Welcome to Trail & Co!" in email.text
    assert "Picked for you:\n- outdoor\n- books" in email.text


def test_newsletter_renders_digest_and_content() -> None:
    email = render("newsletter")

    assert email.subject == "Trail & Co newsletter: outdoor"
    assert "IN THIS ISSUE\n- outdoor\n- shoes\n- tents" in email.text
    assert "Worth a read" in email.text
    assert "More about outdoor" in Page(email.html).text


def test_unsafe_links_are_refused() -> None:
    catalog = {"of-7": {"url": "javascript:alert(1)", "image_url": "data:text/html,x"}}

    page = Page(render(offers_catalog=catalog).html)

    assert not [a for a in page.tags("a") if "javascript" in a.get("href", "").lower()]
    assert not page.tags("img")


def test_module_naming_an_unknown_offer_is_an_error() -> None:
    choice = ModuleChoice(name="hero_offer", reason="forced", items=["of-404"])

    with pytest.raises(ValueError, match="of-404"):
        render_email("promotional", make_facts(), [choice], brand=BRAND, tracking=TRACKING, unsubscribe_url=UNSUBSCRIBE)
