"""The simulator's options: the rates of its mechanics and how far a world departs from the classic one.

`Rates` are the mechanics that are not part of the true probabilities (audience sizes, proxy and scanner
shares, bounces, the share of deliberate dirt); `Realism` is how real inboxes depart from the classic world.
`simulation_options` maps `sendwise simulate`'s flags onto both.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sendwise.simulator import families


@dataclass(frozen=True)
class Rates:
    """Rates of the mechanics that are not part of the true probabilities."""

    audience_share_mean: float = 0.7
    random_hour_share: float = 0.1
    campaigns_per_week: int = 3
    promotional_share: float = 0.65
    consent_email_false: float = 0.05
    consent_profiling_false: float = 0.05
    blank_timezone: float = 0.03
    mpp_share: float = 0.30
    mpp_flagged: float = 0.85
    business_share: float = 0.04
    scanner_share_of_business: float = 0.3
    scanner_flagged: float = 0.5
    bad_address: float = 0.008
    soft_bounce: float = 0.004
    reopen: float = 0.12
    open_delay_decay_hours: float = 10.0
    complaint: float = 0.0004
    open_conversion_coupling: float = 0.5
    offer_click_given_click: float = 0.7
    triggered_delay_minutes: tuple[float, float] = (60.0, 90.0)
    duplicate_email_rows: float = 0.005
    duplicate_other_rows: float = 0.002
    alias_share: float = 0.02


@dataclass(frozen=True)
class Realism:
    """How real inboxes depart from the classic world (docs/simulator.md, "Realistic worlds").

    The defaults are the classic world. `realistic()` gives the middle of the ranges real mail shows; every
    field can be set on its own (`sendwise simulate --realistic --mpp-share 0.6 ...`) to reach their corners.
    """

    proxy_human_opens: bool = False
    """A proxied recipient's own opens also arrive through the proxy: its user agent, flagged by the ESP as
    often as the proxy's fetches (the ESP cannot tell them apart). Classic: with the device's user agent."""
    prefetch_fast_share: float = 1.0
    """Share of the proxy's fetches made within minutes of delivery; the rest come hours later."""
    prefetch_slow_median_hours: float = 4.0
    """Median delay of the late fetches (log-normal, at most `PREFETCH_MAX_HOURS`)."""
    refetch_share: float = 0.0
    """Share of proxied emails the proxy fetches a second time, up to two days later."""
    scanner_click_share: float = 0.0
    """Share of scanned emails whose links the scanner also follows, seconds after delivery."""
    rhythms: str = "classic"
    """Daily-rhythm families: `classic`, `development` or `heldout` (sendwise/simulator/families.py)."""
    recent_activity: bool = True
    """Recent site activity moves the probabilities: a visit shortly before a send makes an open likelier (fading
    over hours), a recent view of a category makes its offers convert better (fading over days) and a purchase
    in it worse. On in every new world; off reproduces the worlds made before it (`--no-recent-activity`)."""

    @classmethod
    def realistic(cls, **overrides: Any) -> Realism:
        """The middle of the realistic ranges, with any field overridden."""
        values: dict[str, Any] = {
            "proxy_human_opens": True,
            "prefetch_fast_share": 0.5,
            "prefetch_slow_median_hours": 4.0,
            "refetch_share": 0.15,
            "scanner_click_share": 0.15,
            "rhythms": "heldout",
        }
        return cls(**{**values, **overrides})

    def __post_init__(self) -> None:
        if self.rhythms not in families.CHOICES:
            raise ValueError(f"rhythms must be one of {families.CHOICES}, not {self.rhythms!r}")
        for name in ("prefetch_fast_share", "refetch_share", "scanner_click_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {getattr(self, name)}")
        if self.prefetch_slow_median_hours <= 0:
            raise ValueError(f"prefetch_slow_median_hours must be positive, not {self.prefetch_slow_median_hours}")


PREFETCH_MAX_HOURS = 30.0
"""The latest a late proxy fetch comes, in hours after delivery."""
PREFETCH_FAST_MAX_SECONDS = 600.0
"""The latest a fast proxy fetch comes, in seconds after delivery."""


REALISTIC_RATES = Rates(mpp_share=0.45, mpp_flagged=0.7, business_share=0.08, scanner_share_of_business=0.5)
"""The rates of a realistic world's middle: 45% of recipients behind Apple's proxy, the ESP flagging 70% of
the proxy's opens, security scanners on 4% of recipients."""
SCANNED_BUSINESS_SHARE = 0.08
"""Business accounts in a world whose scanner share is set: scanners sit on business mail servers."""


def simulation_options(
    *,
    realistic: bool = False,
    mpp_share: float | None = None,
    esp_flag_share: float | None = None,
    prefetch_fast_share: float | None = None,
    prefetch_median_hours: float | None = None,
    scanner_share: float | None = None,
    rhythms: str | None = None,
    recent_activity: bool | None = None,
) -> tuple[Rates, Realism]:
    """The rates and realism of `sendwise simulate`'s options: the classic world, or with `realistic` the
    middle of the realistic ranges; any option given overrides either."""
    rates = REALISTIC_RATES if realistic else Rates()
    realism = Realism.realistic() if realistic else Realism()
    overrides: dict[str, Any] = {}
    if mpp_share is not None:
        overrides["mpp_share"] = mpp_share
    if esp_flag_share is not None:
        overrides["mpp_flagged"] = esp_flag_share
    if scanner_share is not None:
        if not 0.0 <= scanner_share <= SCANNED_BUSINESS_SHARE:
            raise ValueError(f"scanner share must be between 0 and {SCANNED_BUSINESS_SHARE}, not {scanner_share}")
        overrides["business_share"] = SCANNED_BUSINESS_SHARE
        overrides["scanner_share_of_business"] = scanner_share / SCANNED_BUSINESS_SHARE
    changes: dict[str, Any] = {}
    if prefetch_fast_share is not None:
        changes["prefetch_fast_share"] = prefetch_fast_share
    if prefetch_median_hours is not None:
        changes["prefetch_slow_median_hours"] = prefetch_median_hours
    if rhythms is not None:
        changes["rhythms"] = rhythms
    if recent_activity is not None:
        changes["recent_activity"] = recent_activity
    return replace(rates, **overrides), replace(realism, **changes)
