"""Turn the chosen modules into an email that mail clients render: subject, HTML and plain text.

The HTML is a 600 px table layout whose CSS lives in one <style> block of `base.html.j2` and is inlined into
`style` attributes at render time (css_inline); only the @media rules for small screens stay in a <style>
block, as a progressive enhancement. Jinja2 autoescapes every value in the HTML templates.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import css_inline
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from pydantic import BaseModel

from serving.modules import (
    MODULE_NAMES,
    TEMPLATES,
    ModuleChoice,
    ModuleFacts,
    OfferFact,
    UnknownTemplateError,
    check_template,
)

__all__ = ["TEMPLATES", "RenderedEmail", "UnknownTemplateError", "render_email"]

TEMPLATES_DIR = Path(__file__).parent / "templates"
OFFER_MODULES = frozenset({"hero_offer", "secondary_offers", "content_block"})
CATEGORY_MODULES = frozenset({"category_picks", "newsletter_digest"})
_UNSAFE_URL_SCHEMES = ("javascript:", "vbscript:", "data:")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]+")


class RenderedEmail(BaseModel):
    subject: str
    html: str
    text: str
    modules: list[ModuleChoice]


@dataclass(frozen=True)
class OfferView:
    """An offer as the email shows it: catalog text where there is some, else words made from the facts."""

    offer_id: str
    kind: str
    title: str
    description: str
    badge: str
    category: str
    url: str | None
    image_url: str | None
    image_alt: str


@dataclass(frozen=True)
class ModuleView:
    name: str
    reason: str
    offers: list[OfferView] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)


@functools.cache
def _environment() -> Environment:
    """One Jinja2 environment per process: HTML templates autoescaped, text templates not."""
    return Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(
            enabled_extensions=("html.j2", "html"), disabled_extensions=("txt.j2",), default=True
        ),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@functools.cache
def _inliner() -> css_inline.CSSInliner:
    return css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)


def render_email(
    template: str,
    facts: ModuleFacts,
    choices: list[ModuleChoice],
    *,
    unsubscribe_url: str,
    offers_catalog: dict[str, dict[str, Any]] | None = None,
    brand: str = "sendwise demo shop",
) -> RenderedEmail:
    """Render one recipient's email.

    `offers_catalog` maps offer ids to what the shop says about each offer; the keys used are `title`,
    `description`, `url`, `image_url` and `image_alt`, all optional. Raises `UnknownTemplateError` for a
    template sendwise does not have, and `ValueError` for an unusable unsubscribe URL or a module that names
    an offer the facts do not have.
    """
    check_template(template)
    unsubscribe = _safe_url(unsubscribe_url)
    if unsubscribe is None:
        raise ValueError(
            f"unsubscribe_url must be a non-empty link (not javascript:, vbscript: or data:), got {unsubscribe_url!r}"
        )
    modules = [_module_view(choice, facts, offers_catalog or {}) for choice in choices]
    subject = _subject(template, facts, modules, brand)
    context = {
        "brand": brand,
        "subject": subject,
        "preheader": _preheader(modules, brand),
        "modules": modules,
        "topic": (facts.campaign_topic or "").strip(),
        "unsubscribe_url": unsubscribe,
    }
    environment = _environment()
    html = environment.get_template(f"{template}.html.j2").render(context)
    text = environment.get_template(f"{template}.txt.j2").render(context)
    return RenderedEmail(
        subject=subject,
        html=_inliner().inline(html),
        text=re.sub(r"\n{3,}", "\n\n", text).strip() + "\n",
        modules=list(choices),
    )


def _module_view(choice: ModuleChoice, facts: ModuleFacts, catalog: dict[str, dict[str, Any]]) -> ModuleView:
    if choice.name not in MODULE_NAMES:
        raise ValueError(f"unknown module {choice.name!r}; known modules: {', '.join(MODULE_NAMES)}")
    if choice.name in OFFER_MODULES:
        if not choice.items:
            raise ValueError(f"module {choice.name!r} names no offer in its items")
        by_id = {offer.offer_id: offer for offer in facts.offers}
        missing = [offer_id for offer_id in choice.items if offer_id not in by_id]
        if missing:
            raise ValueError(
                f"module {choice.name!r} names offers {missing} that are not among the facts' offers "
                f"for customer {facts.customer_id!r}"
            )
        offers = [_offer_view(by_id[offer_id], catalog.get(offer_id, {})) for offer_id in choice.items]
        return ModuleView(name=choice.name, reason=choice.reason, offers=offers)
    categories = list(choice.items) if choice.name in CATEGORY_MODULES else []
    return ModuleView(name=choice.name, reason=choice.reason, categories=categories)


def _offer_view(offer: OfferFact, entry: dict[str, Any]) -> OfferView:
    category = str(entry.get("category") or offer.category or "").strip()
    badge = f"{offer.discount_pct:g}% off" if offer.discount_pct else ""
    title = _text(entry.get("title")) or _default_title(offer, category, badge)
    if badge.casefold() in title.casefold():
        badge = ""
    image_url = _safe_url(entry.get("image_url"))
    return OfferView(
        offer_id=offer.offer_id,
        kind=offer.kind,
        title=title,
        description=_text(entry.get("description")),
        badge=badge,
        category=category,
        url=_safe_url(entry.get("url")),
        image_url=image_url,
        image_alt=_text(entry.get("image_alt")) or title,
    )


def _default_title(offer: OfferFact, category: str, badge: str) -> str:
    if badge and category:
        return f"{badge} {category}"
    if badge:
        return f"{badge}, picked for you"
    if offer.kind == "content" and category:
        return f"More about {category}"
    if category:
        return f"Picked for you in {category}"
    return f"Offer {offer.offer_id}"


def _subject(template: str, facts: ModuleFacts, modules: list[ModuleView], brand: str) -> str:
    names = {module.name for module in modules}
    hero = next((module.offers[0] for module in modules if module.name == "hero_offer"), None)
    topic = (facts.campaign_topic or "").strip()
    if template == "newsletter":
        subject = f"{brand} newsletter: {topic}" if topic else f"{brand} newsletter"
    elif "welcome" in names:
        subject = f"Welcome to {brand}: {hero.title}" if hero else f"Welcome to {brand}"
    elif hero is not None:
        subject = hero.title
    elif topic:
        subject = f"New in {topic} at {brand}"
    else:
        subject = f"News from {brand}"
    if "reengagement" in names:
        subject = f"We miss you – {subject}"
    return _text(subject)


def _preheader(modules: list[ModuleView], brand: str) -> str:
    """The line mail clients show after the subject: what the email holds, in a few words."""
    parts: list[str] = []
    for module in modules:
        if module.name == "welcome":
            parts.append(f"Welcome to {brand}")
        elif module.offers:
            parts.extend(offer.title for offer in module.offers)
        elif module.categories:
            parts.append("Picks in " + ", ".join(module.categories))
    if not parts:
        parts.append(f"The latest from {brand}")
    return _text(" · ".join(parts))[:140]


def _text(value: object) -> str:
    """A value as one line of plain text: no control characters, no runs of spaces."""
    if value is None:
        return ""
    return " ".join(_CONTROL_CHARS.sub(" ", str(value)).split())


def _safe_url(value: object) -> str | None:
    """A link as given, or None when empty or a scheme that runs code. ESP merge tags pass through."""
    url = _text(value)
    if not url:
        return None
    if "".join(url.split()).lower().startswith(_UNSAFE_URL_SCHEMES):
        return None
    return url
