"""The report as an offline site: an index page and one page per section, rendered with Jinja2.

A section is plain data (`Section`): its page's name, title, the sentences the index shows for it, the
template of its page and what that template reads. The templates live beside this module and extend one base
page whose styles are inline: the site loads nothing from the network (no fonts, scripts or stylesheets from
elsewhere), so it reads the same from a laptop offline, a file share or an MLflow artifact.

Every value from the data (offer titles, attribute values, category names, time zones) reaches the page through
Jinja2's autoescaping, which is always on here: nothing is marked safe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

INDEX = "index.html"
PLOTS = "plots"
"""The folder of the site that holds the charts (PNG), which pages name relative to themselves."""


@dataclass
class Section:
    """One page of the site, and what the index says of it.

    `template` is the page's template (under templates/), rendered with `context`; `section.html.j2`, the
    default, needs none of its own: it shows the context's `paragraphs`, `tables` and `figures`. `images` are
    the charts the page shows, as paths relative to the site (`plots/...`), for the check that each was written.
    """

    slug: str
    title: str
    summary: list[str]
    template: str = "section.html.j2"
    context: dict[str, Any] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What the section could not show and why (a model without a champion, data without sends, ...)."""

    @property
    def page(self) -> str:
        return f"{self.slug}.html"

    @classmethod
    def unavailable(cls, slug: str, title: str, why: str) -> Section:
        """A page that says why its part cannot be shown (and what to run)."""
        return cls(slug=slug, title=title, summary=[why], notes=[why])


@dataclass(frozen=True)
class SiteFacts:
    """What the index and every page's footer say about the report as a whole."""

    home: str
    generated_at: datetime
    as_of: str
    champions: dict[str, str]
    """Registered model -> its champion's version, of the champions the report explains."""


def percent(value: float | None, digits: int = 1) -> str:
    """`0.3142` -> `31.4%`; a missing value is a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.{digits}f}%"


def points(value: float | None, digits: int = 1) -> str:
    """A difference of two probabilities in percentage points, signed: `+2.3 points`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:+.{digits}f} points"


def number(value: float | None, digits: int = 0) -> str:
    """`12345.6` -> `12,346`; a missing value is a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def environment() -> Environment:
    """The report's templates, autoescaped whatever their names, strict about undefined names."""
    env = Environment(
        loader=PackageLoader("training.reporting", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(percent=percent, points=points, number=number)
    return env


def render_site(sections: list[Section], facts: SiteFacts, out_dir: Path) -> Path:
    """Write `index.html` and every section's page into `out_dir` (its `plots/` already written); returns the
    index."""
    env = environment()
    out_dir.mkdir(parents=True, exist_ok=True)
    missing = [image for section in sections for image in section.images if not (out_dir / image).is_file()]
    if missing:
        raise FileNotFoundError(f"the report's charts were not written: {', '.join(missing)}")
    shared = {"sections": sections, "facts": facts}
    for section in sections:
        page = env.get_template(section.template).render(section=section, **shared, **section.context)
        (out_dir / section.page).write_text(page, encoding="utf-8")
    index = out_dir / INDEX
    index.write_text(env.get_template("index.html.j2").render(section=None, **shared), encoding="utf-8")
    return index


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
