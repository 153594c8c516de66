"""Choose an email's dynamic modules from the predictions, each with a reason a marketer can read.

`choose_modules` is a plain, deterministic function: the same facts always give the same modules, in the
order the email shows them. Each `ModuleChoice` names the offers or categories it shows (`items`), so the
renderer draws exactly what the reason describes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serving.errors import ServingError

TEMPLATES: tuple[str, ...] = ("promotional", "newsletter")
MODULE_NAMES: tuple[str, ...] = (
    "welcome",
    "reengagement",
    "newsletter_digest",
    "content_block",
    "hero_offer",
    "secondary_offers",
    "category_picks",
)

REENGAGEMENT_RATIO = 0.5
"""Below this multiple of the population's open probability, the email leads with a re-engagement block."""
WELCOME_MAX_EMAILS = 3
"""A customer who has received fewer emails than this is still new: the email welcomes them."""
MAX_SECONDARY_OFFERS = 2
MAX_CONTENT_OFFERS = 2
MAX_CATEGORIES = 3
MIN_AFFINITY_SHARE = 0.10
"""Viewed categories with at least this share of product views rank ahead of stated interests."""


class UnknownTemplateError(ServingError, ValueError):
    """A template name that sendwise does not have."""

    status = 422
    error = "unknown template"

    def __init__(self, template: str, known: tuple[str, ...] = TEMPLATES) -> None:
        self.template = template
        super().__init__(f"unknown template {template!r}; known templates: {', '.join(known)}", field="template")


def check_template(template: str) -> str:
    if template not in TEMPLATES:
        raise UnknownTemplateError(template)
    return template


class OfferFact(BaseModel):
    """One ranked offer for one customer, as the next-best-offer model scored it. Other fields of a scored
    offer (margin, propensity, ...) are ignored, so a decision's offer can be passed as it is."""

    offer_id: str
    kind: str
    category: str | None = None
    discount_pct: float | None = None
    conversion_probability: float = Field(ge=0.0, le=1.0)
    expected_value: float
    incremental_value: float | None = None


class ModuleFacts(BaseModel):
    """What the predictions say about one recipient, as far as choosing modules needs it."""

    model_config = ConfigDict(extra="forbid")

    customer_id: str
    campaign_kind: str = "promotional"
    campaign_topic: str | None = None
    open_probability: float = Field(ge=0.0, le=1.0)
    """P(human open within 72 h) at the chosen send hour."""
    population_open_probability: float = Field(ge=0.0, le=1.0)
    """The mean over customers, for comparison."""
    offers: list[OfferFact] = Field(default_factory=list)
    """Ranked best first; a `control` offer first means "send no offer"."""
    high_value_threshold: float = Field(ge=0.0)
    """Expected value above which an offer deserves the hero slot."""
    category_affinity: dict[str, float] = Field(default_factory=dict)
    """Share of the customer's product views per category."""
    interests: list[str] = Field(default_factory=list)
    cold_start: bool = False
    history_emails: int = Field(default=0, ge=0)
    """Emails this customer has received: how much history the prediction rests on."""


class ModuleChoice(BaseModel):
    """One module of the email, the reason for it in plain words, and what it shows."""

    name: str
    reason: str
    items: list[str] = Field(default_factory=list)
    """The offer ids (offer modules) or category names (category modules) the module shows, in order."""


def planned_modules(
    template: str,
    hero: str | None,
    secondary: list[str],
    content: list[str],
    *,
    cold_start: bool,
    history_emails: int,
    open_probability: float,
    population_open_probability: float,
    has_categories: bool,
    control_first: bool = False,
) -> list[tuple[str, list[str]]]:
    """The modules `choose_modules` picks (names, and the offers the offer modules show), without writing the
    reasons: what a decision carries, at campaign scale. The offers come placed by `offer_slots` (or
    `offer_slots_batch`, for a whole ranking), the rule `choose_modules` reads: the hero's id, the secondary
    offers' and the content offers'; `has_categories` is `has_category_picks` of the recipient."""
    plan: list[tuple[str, list[str]]] = []
    if _wants_welcome(cold_start, history_emails):
        plan.append(("welcome", []))
    if _wants_reengagement(cold_start, history_emails, open_probability, population_open_probability):
        plan.append(("reengagement", []))
    slots = [("hero_offer", [hero])] if hero is not None else []
    if secondary:
        slots.append(("secondary_offers", secondary))
    if template == "newsletter":
        plan.append(("newsletter_digest", []))
        if content or control_first:
            plan.append(("content_block", content))
        plan.extend(slots)
    else:
        plan.extend(slots)
        if control_first:
            plan.append(("content_block", []))
        if has_categories:
            plan.append(("category_picks", []))
    return plan


def offer_slots(
    kinds: Sequence[str], values: Sequence[float], template: str, threshold: float
) -> tuple[int | None, list[int], list[int]]:
    """Positions in the ranking (0-based) of the hero offer, the secondary offers and the content offers.

    Only offers ranked ahead of the control arm (if any) are candidates: one ranked below it is worth less than
    sending no offer. The hero is the first candidate worth `threshold`; in a newsletter content offers go to
    the content block instead."""
    try:
        ahead = range(kinds.index("control"))
    except ValueError:  # no control arm: every offer is a candidate
        ahead = range(len(kinds))
    content = [j for j in ahead if kinds[j] == "content"]
    if template == "newsletter" and content:
        candidates: Sequence[int] = [j for j in ahead if kinds[j] != "content"]
    else:
        candidates = ahead
    hero = next((j for j in candidates if values[j] >= threshold), None)
    rest = [j for j in candidates if j != hero][:MAX_SECONDARY_OFFERS]
    return hero, rest, content[:MAX_CONTENT_OFFERS]


def placed_offers(
    offer_ids: Sequence[str], kinds: Sequence[str], values: Sequence[float], template: str, threshold: float
) -> tuple[str | None, list[str], list[str]]:
    """`offer_slots` as offer ids, what `planned_modules` takes: the hero (or None), the secondary offers and
    the content offers."""
    hero, rest, content = offer_slots(kinds, values, template, threshold)
    return (
        offer_ids[hero] if hero is not None else None,
        [offer_ids[j] for j in rest],
        [offer_ids[j] for j in content],
    )


def offer_slots_batch(
    kinds: np.ndarray, values: np.ndarray, template: str, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`offer_slots` of every row of a ranking at once ([rows, ranked] kinds and expected values): the hero's
    position (-1 for none), and masks of the secondary and of the content offers."""
    n, width = kinds.shape
    ahead = np.cumsum(kinds == "control", axis=1) == 0  # ranked before the control arm
    content = ahead & (kinds == "content")
    candidates = ahead & ~content if template == "newsletter" else ahead
    worth = candidates & (values >= threshold)
    hero = np.where(worth.any(axis=1), worth.argmax(axis=1), -1) if width else np.full(n, -1)
    others = candidates & (np.arange(width)[None, :] != hero[:, None])
    secondary = others & (np.cumsum(others, axis=1) <= MAX_SECONDARY_OFFERS)
    return hero, secondary, content & (np.cumsum(content, axis=1) <= MAX_CONTENT_OFFERS)


def has_category_picks(cold_start: bool, topic: str | None, interests: Sequence[str], any_views: bool) -> bool:
    """Whether `_ranked_categories` names anything: viewed categories (known customers), interests, a topic."""
    if (topic or "").strip() or any(name.strip() for name in interests):
        return True
    return any_views and not cold_start


def choose_modules(facts: ModuleFacts, template: str = "promotional") -> list[ModuleChoice]:
    """The modules of one email, in the order the email shows them."""
    check_template(template)
    intro = [_welcome(facts), _reengagement(facts)]
    offers = _offer_modules(facts, template)
    if template == "newsletter":
        body = [_newsletter_digest(facts), _content_block(facts), *offers]
    else:
        body = [*offers, _no_offer_content(facts), _category_picks(facts)]
    return [choice for choice in (*intro, *body) if choice is not None]


def as_logged(choices: list[ModuleChoice], logged: Sequence[tuple[str, list[str]]]) -> list[ModuleChoice]:
    """The modules a decision logged (`[name, offer ids]` pairs, as `planned_modules` gave them), with the
    reasons and category items `choose_modules` gives for the same facts. They agree unless the rules changed
    since the decision was made; the logged modules are what was decided, so they win, and a module the rules
    no longer choose says so."""
    by_name = {choice.name: choice for choice in choices}
    kept = []
    for name, items in logged:
        choice = by_name.get(name)
        if choice is None:
            kept.append(ModuleChoice(name=name, reason="chosen when the decision was made", items=items))
        elif items and choice.items != items:
            kept.append(choice.model_copy(update={"items": items}))
        else:
            kept.append(choice)
    return kept


def _wants_welcome(cold_start: bool, history_emails: int) -> bool:
    return cold_start or history_emails < WELCOME_MAX_EMAILS


def _wants_reengagement(cold_start: bool, history_emails: int, probability: float, population: float) -> bool:
    """Only with enough history: a low pooled estimate says nothing about disengagement."""
    if cold_start or history_emails < WELCOME_MAX_EMAILS or population <= 0.0:
        return False
    return probability < REENGAGEMENT_RATIO * population


def _welcome(facts: ModuleFacts) -> ModuleChoice | None:
    if not _wants_welcome(facts.cold_start, facts.history_emails):
        return None
    if facts.cold_start:
        reason = (
            f"new customer: {_emails(facts.history_emails)} received, "
            "so the predictions are pooled from similar customers"
        )
    elif facts.history_emails < WELCOME_MAX_EMAILS:
        received = _emails(facts.history_emails)
        reason = f"little history: {received} received so far (fewer than {WELCOME_MAX_EMAILS})"
    return ModuleChoice(name="welcome", reason=reason)


def _reengagement(facts: ModuleFacts) -> ModuleChoice | None:
    population = facts.population_open_probability
    if not _wants_reengagement(facts.cold_start, facts.history_emails, facts.open_probability, population):
        return None
    ratio = facts.open_probability / population
    reason = (
        f"open probability {_pct(facts.open_probability)} is {ratio:.2f}× the population's "
        f"{_pct(population)} (below {REENGAGEMENT_RATIO:g}×), over {_emails(facts.history_emails)} received"
    )
    return ModuleChoice(name="reengagement", reason=reason)


def _control_clause(facts: ModuleFacts) -> str:
    return ", ahead of the control arm" if any(o.kind == "control" for o in facts.offers) else ""


def _offer_modules(facts: ModuleFacts, template: str) -> list[ModuleChoice]:
    """The hero offer and the secondary offers. In a newsletter, content offers go to the content block."""
    threshold = facts.high_value_threshold
    offers = facts.offers
    hero, rest, _ = offer_slots([o.kind for o in offers], [o.expected_value for o in offers], template, threshold)
    choices: list[ModuleChoice] = []
    if hero is not None:
        offer = offers[hero]
        reason = (
            f"offer {offer.offer_id} expected value {offer.expected_value:.2f} ≥ threshold {threshold:.2f}; "
            f"ranked {_ordinal(hero + 1)} of {len(offers)}{_control_clause(facts)}{_incremental(offer)}"
        )
        choices.append(ModuleChoice(name="hero_offer", reason=reason, items=[offer.offer_id]))
    if rest:
        listed = "; ".join(
            f"offer {offers[j].offer_id} ranked {_ordinal(j + 1)}, expected value {offers[j].expected_value:.2f}"
            f"{_incremental(offers[j])}"
            for j in rest
        )
        lead = "next offers" if hero is not None else f"no offer reaches the hero threshold {threshold:.2f}"
        reason = f"{lead}{_control_clause(facts)}: {listed}"
        choices.append(ModuleChoice(name="secondary_offers", reason=reason, items=[offers[j].offer_id for j in rest]))
    return choices


def _control_first(facts: ModuleFacts) -> bool:
    return bool(facts.offers) and facts.offers[0].kind == "control"


def _no_offer_content(facts: ModuleFacts) -> ModuleChoice | None:
    """The content block of an email whose best choice is no offer at all."""
    if not _control_first(facts):
        return None
    best = next((o for o in facts.offers if o.kind != "control"), None)
    detail = (
        f": the best offer, {best.offer_id}, would add {best.incremental_value:.2f}"
        if best is not None and best.incremental_value is not None
        else ""
    )
    reason = f"the control arm ranks first, so sending no offer is worth the most{detail}; the email carries content"
    return ModuleChoice(name="content_block", reason=reason, items=[])


def _content_block(facts: ModuleFacts) -> ModuleChoice | None:
    offers = facts.offers
    _, _, content = offer_slots([o.kind for o in offers], [o.expected_value for o in offers], "newsletter", 0.0)
    if not content:
        return _no_offer_content(facts)
    listed = "; ".join(
        f"content offer {offers[j].offer_id} ranked {_ordinal(j + 1)} of {len(offers)}, "
        f"conversion probability {_pct(offers[j].conversion_probability)}{_incremental(offers[j])}"
        for j in content
    )
    reason = f"{listed}{_control_clause(facts)}"
    return ModuleChoice(name="content_block", reason=reason, items=[offers[j].offer_id for j in content])


def _newsletter_digest(facts: ModuleFacts) -> ModuleChoice:
    """The issue's topic first, then the customer's own categories as the sections of the issue."""
    topic = (facts.campaign_topic or "").strip()
    issue = [(topic, "issue topic")] if topic else []
    sections = _dedupe([*issue, *_ranked_categories(facts)])[:MAX_CATEGORIES]
    described = ", ".join(f"{name} ({why})" for name, why in sections) or "none"
    reason = f"newsletter on {f'topic {topic}' if topic else 'no campaign topic'}; sections: {described}"
    return ModuleChoice(name="newsletter_digest", reason=reason, items=[name for name, _ in sections])


def _category_picks(facts: ModuleFacts) -> ModuleChoice | None:
    picks = _ranked_categories(facts)[:MAX_CATEGORIES]
    if not picks:
        return None
    described = ", ".join(f"{name} ({why})" for name, why in picks)
    lead = "new customer, picks from the campaign and stated interests" if facts.cold_start else "top categories"
    return ModuleChoice(name="category_picks", reason=f"{lead}: {described}", items=[name for name, _ in picks])


def _ranked_categories(facts: ModuleFacts) -> list[tuple[str, str]]:
    """Categories with the reason each is there, best first.

    A known customer: categories with at least MIN_AFFINITY_SHARE of product views (by share), then stated
    interests, then the other viewed categories, then the campaign topic. A cold-start customer has no views:
    the campaign topic, then stated interests.
    """
    topic = [((facts.campaign_topic or "").strip(), "campaign topic")]
    interests = [(name.strip(), "stated interest") for name in facts.interests]
    if facts.cold_start:
        return _dedupe([*topic, *interests])
    viewed = sorted(
        ((name.strip(), share) for name, share in facts.category_affinity.items() if share > 0.0),
        key=lambda item: (-item[1], item[0]),
    )
    strong = [(name, f"{share:.0%} of product views") for name, share in viewed if share >= MIN_AFFINITY_SHARE]
    weak = [(name, f"{share:.1%} of product views") for name, share in viewed if share < MIN_AFFINITY_SHARE]
    return _dedupe([*strong, *interests, *weak, *topic])


def _dedupe(named: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop empty names and repeats (case-insensitive), keeping the first."""
    seen: set[str] = set()
    kept: list[tuple[str, str]] = []
    for name, why in named:
        key = name.casefold()
        if name and key not in seen:
            seen.add(key)
            kept.append((name, why))
    return kept


def _incremental(offer: OfferFact) -> str:
    if offer.incremental_value is None:
        return ""
    return f", incremental value {offer.incremental_value:.2f} over sending no offer"


def _pct(probability: float) -> str:
    return f"{probability:.1%}"


def _emails(count: int) -> str:
    return "no emails" if count == 0 else f"{count} email" + ("" if count == 1 else "s")


def _ordinal(rank: int) -> str:
    suffix = "th" if 10 <= rank % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(rank % 10, "th")
    return f"{rank}{suffix}"
