"""The links of an email: every one carries its decision (`sw=<decision_id>`) and UTM parameters, so that a click
comes back attributed; the unsubscribe links are the brand's, filled in for the recipient.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import formataddr
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from serving.brand import Brand

DECISION_PARAMETER = "sw"


@dataclass(frozen=True)
class Tracking:
    """What every link of one email carries."""

    decision_id: str
    source: str
    medium: str
    campaign: str

    def link(self, url: str, content: str) -> str:
        """`url` with `sw` and the UTM parameters added; parameters the link already has are kept as they are
        (a marketer's own `utm_campaign` wins)."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        present = {name for name, _ in query}
        wanted = [
            (DECISION_PARAMETER, self.decision_id),
            ("utm_source", self.source),
            ("utm_medium", self.medium),
            ("utm_campaign", self.campaign),
            ("utm_content", content),
        ]
        query.extend((name, value) for name, value in wanted if name not in present and value)
        return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def filled(template: str, customer_id: str, decision_id: str, campaign_id: str | None) -> str:
    """A brand URL template with its placeholders filled in, each value URL-encoded (so no value can add a
    parameter, a path or a line break)."""
    values = {"customer_id": customer_id, "decision_id": decision_id, "campaign_id": campaign_id or ""}
    return template.format(**{name: quote(value, safe="") for name, value in values.items()})


def list_unsubscribe(https_url: str, mailto: str | None) -> dict[str, str]:
    """The headers of one-click unsubscription (RFC 2369 and RFC 8058)."""
    targets = [https_url, *([mailto] if mailto else [])]
    return {
        "List-Unsubscribe": ", ".join(f"<{target}>" for target in targets),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def email_headers(
    brand: Brand, decision_id: str, unsubscribe_url: str | None, kind: str, customer_id: str, campaign_id: str | None
) -> dict[str, str]:
    """The headers the sending system adds to one email: one-click unsubscription for every commercial email,
    the sender where the brand names an address, and the decision (so that bounces and complaints can be
    joined to it). Every value is built from the brand file and ids, never from free text of the data."""
    headers: dict[str, str] = {"X-Sendwise-Decision": decision_id}
    if brand.sender_email:
        headers["From"] = formataddr((brand.sender_name or brand.name, brand.sender_email))
    if unsubscribe_url and kind != "transactional":
        mailto = (
            filled(brand.list_unsubscribe_mailto, customer_id, decision_id, campaign_id)
            if brand.list_unsubscribe_mailto
            else None
        )
        headers.update(list_unsubscribe(unsubscribe_url, mailto))
    return {name: " ".join(value.split()) for name, value in headers.items()}
