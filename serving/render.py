"""Turn the chosen modules into an email that mail clients render: subject, preheader, HTML and plain text.

The HTML is a 600 px table layout whose CSS lives in one <style> block of `base.html.j2` and is inlined into
`style` attributes at render time (css_inline); only the @media rules (small screens, dark mode) stay in a
<style> block, as a progressive enhancement. Jinja2 autoescapes every value in the HTML templates; values from
data that reach the subject or preheader lose their control characters first, so no CR or LF reaches a header.

Templates are looked up by name in `SENDWISE_TEMPLATES_DIR` first, then among the built-in ones
(`serving/templates`): a file of the same name there replaces a built-in layout or module.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import css_inline
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, TemplateError, select_autoescape
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel

from serving.brand import Brand
from serving.errors import ServingError
from serving.links import Tracking
from serving.modules import (
    MODULE_NAMES,
    TEMPLATES,
    ModuleChoice,
    ModuleFacts,
    OfferFact,
    UnknownTemplateError,
)

__all__ = ["TEMPLATES", "RenderedEmail", "UnknownTemplateError", "available_templates", "render_email"]

TEMPLATES_DIR = Path(__file__).parent / "templates"
OFFER_MODULES = frozenset({"hero_offer", "secondary_offers", "content_block"})
CATEGORY_MODULES = frozenset({"category_picks", "newsletter_digest"})
CLIP_BYTES = 102 * 1024
"""Gmail shows only the first 102 KB of an email's HTML and hides the rest behind a link."""
PREHEADER_CHARS = 140
_UNSAFE_URL_SCHEMES = ("javascript:", "vbscript:", "data:")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]+")


class RenderedEmail(BaseModel):
    subject: str
    preheader: str
    html: str
    text: str
    modules: list[ModuleChoice]
    warnings: list[str]


class TemplateTextError(ServingError, ValueError):
    """A campaign's subject or preheader that is not a template sendwise can fill in."""

    status = 422
    error = "invalid template text"


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
class CategoryView:
    name: str
    url: str | None


@dataclass(frozen=True)
class ModuleView:
    name: str
    reason: str
    offers: list[OfferView] = field(default_factory=list)
    categories: list[CategoryView] = field(default_factory=list)


@dataclass(frozen=True)
class Personal:
    """What an email is personalised with: the campaign's subject and preheader (templates) and the customer's
    attributes (`attr_*`) they may name."""

    subject: str | None = None
    preheader: str | None = None
    attributes: Mapping[str, object] = field(default_factory=dict)


@functools.cache
def _environment(templates_dir: Path | None) -> Environment:
    """One Jinja2 environment per templates folder: HTML templates autoescaped, text templates not."""
    folders = [*([templates_dir] if templates_dir else []), TEMPLATES_DIR]
    return Environment(
        loader=ChoiceLoader([FileSystemLoader(folder) for folder in folders]),
        autoescape=select_autoescape(
            enabled_extensions=("html.j2", "html"), disabled_extensions=("txt.j2",), default=True
        ),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@functools.cache
def _sandbox() -> SandboxedEnvironment:
    """Where a campaign's subject and preheader are filled in: no access to anything but the values given."""
    return SandboxedEnvironment(autoescape=False)


@functools.cache
def _inliner() -> css_inline.CSSInliner:
    return css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)


def available_templates(templates_dir: Path | None) -> tuple[str, ...]:
    """The layouts an email can be rendered with: the built-in ones and every `<name>.html.j2` of the templates
    folder that has its `<name>.txt.j2` beside it."""
    own: list[str] = []
    if templates_dir is not None and templates_dir.is_dir():
        own = sorted(
            path.name.removesuffix(".html.j2")
            for path in templates_dir.glob("*.html.j2")
            if (templates_dir / path.name.replace(".html.j2", ".txt.j2")).is_file()
        )
    return tuple(dict.fromkeys([*TEMPLATES, *own]))


def check_layout(template: str, templates_dir: Path | None) -> str:
    known = available_templates(templates_dir)
    if template not in known or template.startswith(("base", "macros")):
        raise UnknownTemplateError(template, known)
    return template


def render_email(
    template: str,
    facts: ModuleFacts,
    choices: list[ModuleChoice],
    *,
    brand: Brand,
    tracking: Tracking,
    unsubscribe_url: str | None,
    offers_catalog: Mapping[str, Mapping[str, Any]] | None = None,
    personal: Personal | None = None,
    templates_dir: Path | None = None,
) -> RenderedEmail:
    """Render one recipient's email.

    `offers_catalog` maps offer ids to what the shop says about each offer; the keys used are `title`,
    `description`, `url`, `image_url` and `image_alt`, all optional. Every link gets `tracking`'s parameters.
    `unsubscribe_url` is None only for transactional email. Raises `UnknownTemplateError` for a template sendwise
    does not have, `TemplateTextError` for a subject or preheader it cannot fill in, and `ValueError` for a
    module that names an offer the facts do not have.
    """
    check_layout(template, templates_dir)
    personal = personal or Personal()
    warnings: list[str] = []
    modules = [_module_view(choice, facts, offers_catalog or {}, brand, tracking, warnings) for choice in choices]
    values = _personal_values(personal.attributes, brand, facts)
    subject = _filled(personal.subject, values, "campaign.subject") or _subject(template, facts, modules, brand)
    preheader = _filled(personal.preheader, values, "campaign.preheader") or _preheader(modules, brand)
    context = {
        "brand": brand,
        "brand_link": tracking.link(brand.website_url, "logo") if brand.website_url else None,
        "website_link": tracking.link(brand.website_url, "content") if brand.website_url else None,
        "address_lines": (brand.postal_address or "").splitlines(),
        "subject": subject,
        "preheader": preheader,
        "modules": modules,
        "module_names": [module.name for module in modules],
        "topic": (facts.campaign_topic or "").strip(),
        "unsubscribe_url": unsubscribe_url,
    }
    environment = _environment(templates_dir)
    html = _inliner().inline(environment.get_template(f"{template}.html.j2").render(context))
    text = environment.get_template(f"{template}.txt.j2").render(context)
    size = len(html.encode("utf-8"))
    if size > CLIP_BYTES:
        warnings.append(f"the HTML is {size:,} bytes: Gmail clips email over {CLIP_BYTES:,} bytes")
    return RenderedEmail(
        subject=subject,
        preheader=preheader,
        html=html,
        text=re.sub(r"\n{3,}", "\n\n", text).strip() + "\n",
        modules=list(choices),
        warnings=warnings,
    )


def _module_view(
    choice: ModuleChoice,
    facts: ModuleFacts,
    catalog: Mapping[str, Mapping[str, Any]],
    brand: Brand,
    tracking: Tracking,
    warnings: list[str],
) -> ModuleView:
    if choice.name not in MODULE_NAMES:
        raise ValueError(f"unknown module {choice.name!r}; known modules: {', '.join(MODULE_NAMES)}")
    if choice.name in OFFER_MODULES:
        if not choice.items and choice.name != "content_block":
            raise ValueError(f"module {choice.name!r} names no offer in its items")
        by_id = {offer.offer_id: offer for offer in facts.offers}
        missing = [offer_id for offer_id in choice.items if offer_id not in by_id]
        if missing:
            raise ValueError(
                f"module {choice.name!r} names offers {missing} that are not among the facts' offers "
                f"for customer {facts.customer_id!r}"
            )
        offers = [
            _offer_view(by_id[offer_id], catalog.get(offer_id, {}), tracking, choice.name, warnings)
            for offer_id in choice.items
        ]
        return ModuleView(name=choice.name, reason=choice.reason, offers=offers)
    categories = []
    if choice.name in CATEGORY_MODULES:
        for name in choice.items:
            url = brand.category_url.format(category=quote(name, safe="")) if brand.category_url else None
            categories.append(CategoryView(name, tracking.link(url, f"category-{name}") if url else None))
    return ModuleView(name=choice.name, reason=choice.reason, categories=categories)


def _offer_view(
    offer: OfferFact, entry: Mapping[str, Any], tracking: Tracking, module: str, warnings: list[str]
) -> OfferView:
    category = str(entry.get("category") or offer.category or "").strip()
    badge = f"{offer.discount_pct:g}% off" if offer.discount_pct else ""
    title = _text(entry.get("title")) or _default_title(offer, category, badge)
    if badge.casefold() in title.casefold():
        badge = ""
    url = _safe_url(entry.get("url"))
    if url is None:
        warnings.append(f"offer {offer.offer_id} has no url in the offers table: its {module} has no link")
    image_url = _safe_url(entry.get("image_url"))
    return OfferView(
        offer_id=offer.offer_id,
        kind=offer.kind,
        title=title,
        description=_text(entry.get("description")),
        badge=badge,
        category=category,
        url=tracking.link(url, f"{module}-{offer.offer_id}") if url else None,
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


def _personal_values(attributes: Mapping[str, object], brand: Brand, facts: ModuleFacts) -> dict[str, object]:
    """What a subject or preheader may name: the customer's attributes (one line each), the brand's name and
    the campaign's topic. A missing attribute is undefined, so `| default('there')` applies."""
    values: dict[str, object] = {
        name: _text(value) if isinstance(value, str) else value
        for name, value in attributes.items()
        if value is not None and not (isinstance(value, float) and value != value)
    }
    values["brand"] = brand.name
    values["topic"] = (facts.campaign_topic or "").strip()
    return values


def _filled(template: str | None, values: Mapping[str, object], name: str) -> str:
    """A campaign's subject or preheader with its placeholders filled in, as one line of text."""
    if not template:
        return ""
    try:
        return _text(_sandbox().from_string(template).render(values))
    except TemplateError as error:
        raise TemplateTextError(f"{name} cannot be filled in: {error}", field=name) from error


def _subject(template: str, facts: ModuleFacts, modules: list[ModuleView], brand: Brand) -> str:
    names = {module.name for module in modules}
    hero = next((module.offers[0] for module in modules if module.name == "hero_offer"), None)
    first = next((module.offers[0] for module in modules if module.offers), None)
    topic = (facts.campaign_topic or "").strip()
    if template == "newsletter":
        subject = f"{brand.name} newsletter: {topic}" if topic else f"{brand.name} newsletter"
    elif "welcome" in names:
        subject = f"Welcome to {brand.name}: {hero.title}" if hero else f"Welcome to {brand.name}"
    elif hero is not None:
        subject = hero.title
    elif first is not None:
        subject = f"{first.title}, and more from {brand.name}"
    elif topic:
        subject = f"New in {topic} at {brand.name}"
    else:
        subject = f"News from {brand.name}"
    if "reengagement" in names:
        subject = f"We miss you – {subject}"
    return _text(subject)


def _preheader(modules: list[ModuleView], brand: Brand) -> str:
    """The line mail clients show after the subject: what the email holds, in a few words."""
    parts: list[str] = []
    for module in modules:
        if module.name == "welcome":
            parts.append(f"Welcome to {brand.name}")
        elif module.offers:
            parts.extend(offer.title for offer in module.offers)
        elif module.categories:
            parts.append("Picks in " + ", ".join(category.name for category in module.categories))
    if not parts:
        parts.append(f"The latest from {brand.name}")
    return _text(" · ".join(parts))[:PREHEADER_CHARS]


def _text(value: object) -> str:
    """A value as one line of plain text: no control characters, no runs of spaces."""
    if value is None:
        return ""
    return " ".join(_CONTROL_CHARS.sub(" ", str(value)).split())


def _safe_url(value: object) -> str | None:
    """A link as given, or None when empty or a scheme that runs code."""
    url = _text(value)
    if not url:
        return None
    if "".join(url.split()).lower().startswith(_UNSAFE_URL_SCHEMES):
        return None
    return url
