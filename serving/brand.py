"""The brand emails are rendered for: `SENDWISE_BRAND_FILE`, a YAML file the marketer owns.

Every commercial email (every campaign kind but `transactional`) must carry the sender's postal address and a
working unsubscribe link (CAN-SPAM), and bulk senders must offer one-click unsubscription in the
`List-Unsubscribe` headers (RFC 8058, required by Gmail and Yahoo). sendwise never invents either: a brand
without them, or no brand at all, gets a 422 that names what is missing.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from serving.errors import ServingError

Colour = Annotated[str, StringConstraints(pattern=r"^#[0-9a-fA-F]{6}$")]
OneLine = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\r\n]*$")]
PLACEHOLDERS = ("customer_id", "decision_id", "campaign_id")
"""What an unsubscribe URL template may name, in braces: `https://shop.example/u?c={customer_id}`."""
COMMERCIAL_NEEDS = ("postal_address", "unsubscribe_url")
_EMAIL = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Colours(_Strict):
    """Colours as #rrggbb. Dark mode keeps `primary` for buttons and links and darkens the rest."""

    primary: Colour = "#2563eb"
    button_text: Colour = "#ffffff"
    background: Colour = "#f4f4f5"
    text: Colour = "#111827"


class Utm(_Strict):
    """The UTM parameters every link of an email carries (`utm_campaign` is the campaign's id or topic)."""

    source: OneLine = "sendwise"
    medium: OneLine = "email"


class Brand(_Strict):
    name: OneLine
    sender_name: OneLine | None = None
    sender_email: OneLine | None = None
    logo_url: str | None = Field(default=None, description="https link to the logo shown at the top")
    website_url: str | None = Field(default=None, description="where the logo and the content blocks link")
    category_url: str | None = Field(
        default=None, description="a category's page, naming {category}: where category picks link"
    )
    colours: Colours = Field(default_factory=Colours)
    postal_address: str | None = Field(default=None, max_length=500, description="shown in every footer")
    unsubscribe_url: str | None = Field(
        default=None,
        description="https URL template; may name {customer_id}, {decision_id} and {campaign_id}, which are "
        "filled in URL-encoded",
    )
    list_unsubscribe_mailto: str | None = Field(
        default=None, description="optional mailto: for List-Unsubscribe; may name the same placeholders"
    )
    utm: Utm = Field(default_factory=Utm)

    @field_validator("sender_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.match(value):
            raise ValueError(f"not an email address: {value!r}")
        return value

    @field_validator("logo_url", "website_url")
    @classmethod
    def _link(cls, value: str | None, info: object) -> str | None:
        if value is None:
            return None
        return _checked_url(value, ("https://", "http://"), getattr(info, "field_name", "link"))

    @field_validator("category_url")
    @classmethod
    def _category(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = _checked_url(value, ("https://", "http://"), "category_url")
        return _checked_template(value, "category_url", ("category",))

    @field_validator("unsubscribe_url")
    @classmethod
    def _unsubscribe(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _checked_template(_checked_url(value, ("https://",), "unsubscribe_url"), "unsubscribe_url")

    @field_validator("list_unsubscribe_mailto")
    @classmethod
    def _mailto(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = "list_unsubscribe_mailto"
        return _checked_template(_checked_url(value, ("mailto:",), name), name)

    @field_validator("postal_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        lines = [line.strip() for line in value.splitlines() if line.strip()]
        return "\n".join(lines) or None

    def missing_for_commercial(self) -> list[str]:
        """What a commercial email needs that this brand does not give."""
        return [name for name in COMMERCIAL_NEEDS if not getattr(self, name)]


def _checked_url(value: str, schemes: tuple[str, ...], name: str) -> str:
    value = value.strip()
    if any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise ValueError(f"{name} must not contain spaces or line breaks: {value!r}")
    scheme = next((s for s in schemes if value.lower().startswith(s)), None)
    if scheme is None or len(value) == len(scheme):
        raise ValueError(f"{name} must start with {' or '.join(schemes)}: got {value!r}")
    return value


def _checked_template(value: str, name: str, allowed: tuple[str, ...] = PLACEHOLDERS) -> str:
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(value) if field is not None]
    except ValueError as error:
        raise ValueError(f"{name} has unbalanced braces ({error}): {value!r}") from error
    unknown = sorted({field for field in fields if field not in allowed})
    if unknown:
        raise ValueError(f"{name} names {unknown}; it may name {', '.join('{' + p + '}' for p in allowed)}")
    return value


class BrandFileError(ValueError):
    """A brand file that cannot be read, or that says something sendwise cannot use."""


def load_brand(path: Path) -> Brand:
    """The brand of a YAML file, or `BrandFileError` naming the file and every field that is wrong."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise BrandFileError(f"cannot read the brand file {path} (SENDWISE_BRAND_FILE): {error}") from error
    except yaml.YAMLError as error:
        raise BrandFileError(f"the brand file {path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise BrandFileError(f"the brand file {path} must be a YAML mapping (name: ..., postal_address: ...)")
    try:
        return Brand.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'file'}: {e['msg']}" for e in error.errors()
        )
        raise BrandFileError(f"the brand file {path} is not usable: {problems}") from error


class BrandNotReady(ServingError):
    """An email the brand cannot be rendered for: no brand, or a commercial email without what the law needs."""

    status = 422
    error = "brand incomplete"

    def __init__(self, message: str) -> None:
        super().__init__(message, field="SENDWISE_BRAND_FILE")


def brand_for(brand: Brand | None, kind: str, source: Path | None) -> Brand:
    """The brand to render a `kind` email with, or `BrandNotReady` saying what to configure."""
    if brand is None:
        raise BrandNotReady(
            "no brand configured: set SENDWISE_BRAND_FILE to a YAML file with the brand's name, postal_address "
            "and unsubscribe_url (see docs/emails.md); sendwise does not make up a sender"
        )
    if kind != "transactional":
        missing = brand.missing_for_commercial()
        if missing:
            raise BrandNotReady(
                f"cannot render a {kind} email: the brand file {source} has no {' and no '.join(missing)}; "
                "every commercial email must show the sender's postal address and a working unsubscribe link "
                "(CAN-SPAM)"
            )
    return brand
