"""The sending system and the shop after sendwise decided: what follows each decision, and its true value.

`play(world, decisions, start, end, seed)` plays the sending system: every decision to send goes out in its
decided hour (within five minutes of its start), and what follows is drawn from the world's truth: deliveries
and bounces, the privacy proxy's and the scanners' opens, human opens and clicks, the site sessions clicks lead
to, the exposures of the offers each email carries and the conversions of its first (hero) one, and every
customer's own sessions and purchases over [start, end), held-out customers included. `Feedback.write` writes
it all as an export of the data contract, `sent` and `exposed` events carrying the decision id.

It also gives the truth the draws come from (`LiftTruth`), per decision and computed from the world's
probabilities, never from the draws:
- per send: the expected human opens, clicks and conversions at the hour the policy itself chose, and on
  average over every hour of the decision's window (what a uniformly random hour gets);
- per decision: the expected site sessions, purchases and revenue in the window after the decision's window
  start, with the emails its customer was sent (from any decision) and without any (organic only).

The mechanics are the classic world's (docs/simulator.md), with these differences: the sending system sends
exactly what it is told (no audience or blast hour of its own, no triggered emails), nobody unsubscribes or
complains, an email that bounced converts nobody, an email without an offer converts at the control arm's
probability (its conversions are purchases without an offer event), and every hour of a decision's window is
taken to have been allowed (no quiet hours). A session that a click or a conversion leads to is counted in the
window of the open or conversion it follows: they are seconds to minutes apart, which the truth leaves out.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from sendwise.simulator.options import Rates
from sendwise.simulator.records import (
    DEVICE_USER_AGENTS,
    MPP_USER_AGENT,
    PRODUCTS_PER_CATEGORY,
    SCANNER_USER_AGENTS,
    SITE_COLUMNS,
    SITE_EVENTS,
)
from sendwise.simulator.run import open_delay_hours
from sendwise.simulator.sender import conversion_values, expected_conversion_values
from sendwise.simulator.site import Site
from sendwise.simulator.truth import CATEGORIES, DAY, HOUR, KINDS, World, utc_seconds

DECISION_COLUMNS = (
    "decision_id",
    "customer_id",
    "campaign_id",
    "kind",
    "topic",
    "window_start",
    "window_hours",
    "send",
    "send_at",
    "policy_send_at",
    "offer_ids",
    "holdout",
)
"""What `play` reads of each decision: the log's fields, `policy_send_at` the hour the policy itself chose and
`offer_ids` the offers the email carries (hero first)."""
SEND_SPREAD_S = 300.0
"""The sending system sends a decision within this many seconds of its hour's start."""
CLICK_DELAY_S = 45.0
OPENED_CONVERSION_HOURS = 3.0
"""A converter who opened converts Exp(3 h) after the open; one who did not, Exp(1.5 days) after the send."""
UNOPENED_CONVERSION_DAYS = 1.5
TRUTH_CHUNK = 50_000
"""Pairs of (decision, email) whose expected values are computed at a time: [pairs, 72 hours] arrays each."""

_OPEN, _CLICK = "open", "click"


@dataclass
class LiftTruth:
    """The expected values every draw of `play` comes from, per decision.

    `sends`, one row per decision sent: decision_id, campaign_id, kind, customer_id, and the expected human
    opens, clicks and conversions of its email sent at the policy's own hour (`own_*`) and on average over the
    window's hours (`uniform_*`).
    `windows`, one row per decision: decision_id, campaign_id, kind, holdout, window_start, and the expected site
    sessions, purchases and revenue in [window_start, window_start + window_days) with the emails its customer
    got (`*_sent`) and organic only (`*_organic`).
    """

    sends: pd.DataFrame
    windows: pd.DataFrame
    window_days: float


@dataclass
class Feedback:
    """What came back, as tables of the data contract, and the truth it was drawn from."""

    customers: pd.DataFrame
    campaigns: pd.DataFrame
    offers: pd.DataFrame
    email_events: pd.DataFrame
    site_events: pd.DataFrame
    offer_events: pd.DataFrame
    truth: LiftTruth
    as_of: pd.Timestamp
    """When the export is taken: `end`, after every window of the truth has closed."""

    def write(self, out_dir: Path) -> dict[str, int]:
        """The export as Parquet files in `out_dir`, one per table; rows written per table."""
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = {}
        for table in fields(self):
            frame = getattr(self, table.name)
            if isinstance(frame, pd.DataFrame):
                frame.to_parquet(out_dir / f"{table.name}.parquet", index=False)
                rows[table.name] = len(frame)
        return rows


def _checked(decisions: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in DECISION_COLUMNS if c not in decisions.columns]
    if missing:
        raise ValueError(f"decisions lack the columns {missing}: play() reads {list(DECISION_COLUMNS)}")
    frame = decisions.reset_index(drop=True).copy()
    for column in ("window_start", "send_at", "policy_send_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    frame["send"] = frame["send"].astype(bool) & frame["send_at"].notna()
    if (frame["send"] & frame["policy_send_at"].isna()).any():
        raise ValueError("a decision to send has no policy_send_at: the truth needs the hour the policy chose")
    return frame


class _SendTimes:
    """Every send's (customer, time), for the count of sends to a customer in the 7 days before a time."""

    def __init__(self, customers: np.ndarray, times: np.ndarray) -> None:
        self.keys = np.sort(customers.astype(np.float64) * 1e10 + times)

    def before(self, c: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Sends to `c` in [t − 7 days, t)."""
        base = c.astype(np.float64) * 1e10
        high = np.searchsorted(self.keys, base + t, side="left")
        low = np.searchsorted(self.keys, base + t - 7 * DAY, side="left")
        return (high - low).astype(np.float64)


def _prior_sends(world: World) -> tuple[np.ndarray, np.ndarray]:
    """The world's own sends (customer rows, seconds), where its truth has them: fatigue counts them."""
    try:
        messages = world.messages()
    except FileNotFoundError:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return world.customer_index(messages["customer_id"]), utc_seconds(messages["sent_at"])


def _uniform_in(lo: np.ndarray, hi: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(X in [a, b)) for X uniform on [lo, hi), elementwise."""
    width = np.maximum(hi - lo, 1e-9)
    return np.clip((np.minimum(b, hi) - np.maximum(a, lo)) / width, 0.0, 1.0)


def _uniform_plus_exponential_below(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, mean: float) -> np.ndarray:
    """P(X + E < x) for X uniform on [lo, hi) and E exponential with `mean`, elementwise."""
    width = np.maximum(hi - lo, 1e-9)
    inside = ((x - lo) - mean * (1.0 - np.exp(-np.maximum(x - lo, 0.0) / mean))) / width
    after = 1.0 - mean * (np.exp(-np.maximum(x - hi, 0.0) / mean) - np.exp(-np.maximum(x - lo, 0.0) / mean)) / width
    return np.where(x <= lo, 0.0, np.where(x < hi, inside, after))


class _Emails:
    """The emails sent, with what the truth needs of each: the chance it is delivered, opened, clicked and
    converts, when the open falls, and what its click's session and its conversion are worth."""

    def __init__(
        self, world: World, site: Site, rates: Rates, frame: pd.DataFrame, c: np.ndarray, t: np.ndarray
    ) -> None:
        self.world, self.rates = world, rates
        self.frame, self.c, self.t = frame, c, t
        self.kind = pd.Index(KINDS).get_indexer(frame["kind"])
        if (self.kind < 0).any():
            raise ValueError(f"unknown campaign kind {frame['kind'][self.kind < 0].iloc[0]!r}; expected {KINDS}")
        self.topic = pd.Index(CATEGORIES).get_indexer(frame["topic"].fillna(""))
        params = world.customer_params
        self.delivered_p = np.where(params["bad_address"].to_numpy(bool)[c], 0.0, 1.0 - rates.soft_bounce)
        self.click_p = world.click_probability_at(c, self.topic)
        self.offer, self.shown = self._hero(world, frame["offer_ids"])
        self.conversion_p = np.where(
            self.offer >= 0, world.conversion_probability_at(c, np.maximum(self.offer, 0)), 0.0
        )
        offers = world.offer_params
        worth = expected_conversion_values(
            offers["kind"].to_numpy(), offers["price"].to_numpy(np.float64), self._discounts()
        )
        self.conversion_worth = np.where(self.offer >= 0, worth[np.maximum(self.offer, 0)], 0.0)
        self.click_purchase, self.click_revenue = site.expected_purchase(c, self.topic)

    def _discounts(self) -> np.ndarray:
        return self.world.offer_params["discount_pct"].fillna(0.0).to_numpy(np.float64) / 100

    @staticmethod
    def _hero(world: World, offer_ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """The offer whose conversion an email draws (its first known offer, else the control arm's: an email
        without an offer), and whether the email shows it."""
        known = set(world.offer_params["offer_id"].astype(str))
        controls = world.offer_params.index[world.offer_params["kind"] == "control"]
        control = int(controls[0]) if len(controls) else -1
        firsts = [next((str(o) for o in ids if str(o) in known), None) for ids in offer_ids]
        shown = np.array([f is not None for f in firsts], dtype=bool)
        index = world.offer_index([f for f in firsts if f is not None]) if shown.any() else np.zeros(0, np.int64)
        offer = np.full(len(firsts), control, dtype=np.int64)
        offer[shown] = index
        return offer, shown

    def open_p(self, t: np.ndarray, sends7: np.ndarray) -> np.ndarray:
        """The true P(a human opens within 72 h) of every email, had it been sent at `t` ([n] or [n, k])."""
        c, kind, topic = self.c, self.kind, self.topic
        if t.ndim == 2:
            c, kind, topic = (np.broadcast_to(v[:, None], t.shape) for v in (c, kind, topic))
        return self.world.open_probability_at(c, t, kind, topic, sends7)

    def conversion_and_open(self, open_p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P(delivered, opened and converted), P(delivered and converted without an open)): the conversion
        shares the open's uniform draw with probability `open_conversion_coupling`."""
        coupling = self.rates.open_conversion_coupling
        p_c = self.conversion_p
        both = self.delivered_p * (coupling * np.minimum(open_p, p_c) + (1 - coupling) * open_p * p_c)
        return both, self.delivered_p * p_c - both


def play(
    world: World,
    decisions: pd.DataFrame,
    start: pd.Timestamp,
    end: pd.Timestamp,
    seed: int,
    window_days: float = 7.0,
    tag: str = "fb",
) -> Feedback:
    """Send the decisions to send, draw what happens until `end` and every customer's own site activity over
    [start, end), and compute the truth (`LiftTruth`, windows of `window_days` after each decision's window
    start). `start` and `end` are whole UTC hours a whole number of days apart; every decision's window must
    end by `end`. `tag` prefixes the ids of the events and messages made."""
    rng = np.random.default_rng(seed)
    rates = Rates(**{k: v for k, v in world.meta.get("rates", {}).items() if k in Rates.__dataclass_fields__})
    frame = _checked(decisions)
    start_s, end_s = float(utc_seconds(pd.Timestamp(start))[0]), float(utc_seconds(pd.Timestamp(end))[0])
    if start_s % HOUR or (end_s - start_s) % DAY or end_s <= start_s:
        raise ValueError(f"start {start} and end {end} must be whole hours a whole number of days apart")
    window_start = utc_seconds(frame["window_start"])
    if len(frame) and (window_start.min() < start_s or (window_start + window_days * DAY).max() > end_s):
        raise ValueError(f"every decision's window must lie in [{start}, {end}): the truth counts what happens there")
    c_all = world.customer_index(frame["customer_id"].astype(str))
    site = Site(world, rates, rng)
    sent = np.flatnonzero(frame["send"].to_numpy())
    sent = sent[np.argsort(utc_seconds(frame["send_at"].iloc[sent]), kind="stable")]
    decided = utc_seconds(frame["send_at"].iloc[sent])
    t = decided + rng.uniform(0.0, SEND_SPREAD_S, len(sent))
    emails = _Emails(world, site, rates, frame.iloc[sent].reset_index(drop=True), c_all[sent], t)
    prior_c, prior_t = _prior_sends(world)
    history = _SendTimes(np.r_[prior_c, emails.c], np.r_[prior_t, emails.t])
    tables = _Tables(world, tag)
    open_p = _send(emails, history, rng, site, tables)
    site.baseline_sessions(rng, start_s, end_s)
    truth = LiftTruth(
        sends=_send_truth(emails, history, decided),
        windows=_window_truth(frame, c_all, emails, open_p, site, window_days),
        window_days=window_days,
    )
    customers = world.customer_params
    return Feedback(
        customers=pd.DataFrame(
            {
                "customer_id": customers["customer_id"].astype(str),
                "timezone": customers["timezone"],
                "country": customers["country"],
                "consent_email": customers["consent_email"].astype(bool),
                "consent_profiling": customers["consent_profiling"].astype(bool),
                "interests": customers["interests"],
            }
        ),
        campaigns=_campaigns(frame),
        offers=_offers(world),
        email_events=tables.email(end_s),
        site_events=tables.site(site, end_s),
        offer_events=tables.offer(end_s),
        truth=truth,
        as_of=pd.Timestamp(end).tz_convert("UTC"),
    )


def _send(emails: _Emails, history: _SendTimes, rng: np.random.Generator, site: Site, tables: _Tables) -> np.ndarray:
    """Draw what follows every email; each email's true open probability."""
    rates, world, c, t = emails.rates, emails.world, emails.c, emails.t
    n = len(c)
    params = world.customer_params
    tables.sends(emails)
    hard = params["bad_address"].to_numpy(bool)[c]
    bounced = hard | (rng.random(n) < rates.soft_bounce)
    tables.email_event(
        emails, np.flatnonzero(bounced), "bounce", t[bounced] + rng.uniform(2.0, 120.0, int(bounced.sum()))
    )
    delivered = ~bounced
    delivered_t = t + rng.uniform(1.0, 30.0, n)
    d = np.flatnonzero(delivered)
    tables.email_event(emails, d, "delivered", delivered_t[d])

    proxied = d[params["is_mpp"].to_numpy(bool)[c[d]]]
    fetched = delivered_t[proxied] + 2.0 + np.minimum(rng.exponential(60.0, len(proxied)), 400.0)
    tables.email_event(
        emails, proxied, _OPEN, fetched, agent=MPP_USER_AGENT, flag=_flags(rng, len(proxied), rates.mpp_flagged)
    )
    scanned = d[params["is_scanner"].to_numpy(bool)[c[d]]]
    agents = np.asarray(SCANNER_USER_AGENTS, dtype=object)[rng.integers(0, len(SCANNER_USER_AGENTS), len(scanned))]
    scan_t = delivered_t[scanned] + rng.uniform(0.5, 15.0, len(scanned))
    tables.email_event(
        emails, scanned, _OPEN, scan_t, agent=agents, flag=_flags(rng, len(scanned), rates.scanner_flagged)
    )

    open_p = emails.open_p(t, history.before(c, t))
    u_open = rng.random(n)
    h = np.flatnonzero(delivered & (u_open < open_p))
    weight, lo, hi = open_delay_hours(world, c[h], t[h], rates.open_delay_decay_hours)
    cumulative = np.cumsum(weight, axis=1)
    chosen = (cumulative < (rng.random(len(h)) * cumulative[:, -1])[:, None]).sum(axis=1).clip(0, weight.shape[1] - 1)
    rows = np.arange(len(h))
    open_t = np.full(n, np.nan)
    drawn = lo[rows, chosen] + rng.random(len(h)) * (hi[rows, chosen] - lo[rows, chosen])
    open_t[h] = np.maximum(drawn, delivered_t[h] + 5.0)
    device = np.asarray(DEVICE_USER_AGENTS, dtype=object)[params["device_user_agent"].to_numpy(np.int64)[c]]
    tables.email_event(emails, h, _OPEN, open_t[h], agent=device[h], flag=False)
    again = h[rng.random(len(h)) < rates.reopen]
    tables.email_event(
        emails, again, _OPEN, open_t[again] + rng.exponential(4 * HOUR, len(again)), agent=device[again], flag=False
    )

    k = h[rng.random(len(h)) < emails.click_p[h]]
    click_t = open_t[k] + 2.0 + rng.exponential(CLICK_DELAY_S, len(k))
    tables.email_event(emails, k, _CLICK, click_t, agent=device[k])
    site.sessions(c[k], click_t + rng.uniform(3.0, 40.0, len(k)), emails.topic[k])

    tables.exposures(emails)
    shared = rng.random(n) < rates.open_conversion_coupling
    u_conversion = np.where(shared, u_open, rng.random(n))
    v = np.flatnonzero(delivered & (emails.offer >= 0) & (u_conversion < emails.conversion_p))
    opened = ~np.isnan(open_t[v])
    delay = np.where(
        opened,
        open_t[v] - t[v] + rng.exponential(OPENED_CONVERSION_HOURS * HOUR, len(v)),
        rng.exponential(UNOPENED_CONVERSION_DAYS * DAY, len(v)),
    )
    conversion_t = t[v] + np.minimum(delay, world.coefficients.conversion_window_days * DAY - 60.0)
    offers = world.offer_params
    o = emails.offer[v]
    value = conversion_values(
        rng, offers["kind"].to_numpy()[o], offers["price"].to_numpy(np.float64)[o], emails._discounts()[o]
    )
    tables.conversions(emails, v[emails.shown[v]], conversion_t[emails.shown[v]], value[emails.shown[v]])
    category = pd.Index(CATEGORIES).get_indexer(offers["category"].fillna("").to_numpy()[o])
    site.purchase_visit(c[v], conversion_t - rng.uniform(60.0, 600.0, len(v)), conversion_t, category, value)
    return open_p


def _flags(rng: np.random.Generator, n: int, flagged: float) -> np.ndarray:
    """The ESP's machine_open flag: true for a `flagged` share, else false or missing."""
    u = rng.random(n)
    flags = np.full(n, None, dtype=object)
    flags[u < flagged] = True
    flags[(u >= flagged) & (u < flagged + (1 - flagged) / 2)] = False
    return flags


# --- the truth ------------------------------------------------------------------------------------------------
def _send_truth(emails: _Emails, history: _SendTimes, decided: np.ndarray) -> pd.DataFrame:
    """Per send: expected opens, clicks and conversions at the policy's hour and over the window's hours."""
    frame = emails.frame
    n = len(frame)
    hours = int(frame["window_hours"].max()) if n else 0
    spread = emails.t - decided
    starts = utc_seconds(frame["window_start"]) if n else np.zeros(0)
    grid = starts[:, None] + HOUR * np.arange(hours)[None, :] + spread[:, None]
    width = frame["window_hours"].to_numpy(np.int64)
    in_window = np.arange(hours)[None, :] < width[:, None]
    sends7 = history.before(np.broadcast_to(emails.c[:, None], grid.shape), grid)
    sends7 -= (emails.t[:, None] < grid) & (emails.t[:, None] >= grid - 7 * DAY)  # not this email's own send
    opens = emails.delivered_p[:, None] * emails.open_p(grid, sends7)
    policy = (
        ((utc_seconds(frame["policy_send_at"]) - starts) / HOUR).round().astype(np.int64)
        if n
        else np.zeros(0, np.int64)
    )
    own = opens[np.arange(n), np.clip(policy, 0, max(hours - 1, 0))] if n else np.zeros(0)
    uniform = np.where(in_window, opens, 0.0).sum(axis=1) / np.maximum(width, 1)
    conversions = emails.delivered_p * emails.conversion_p * emails.shown
    return pd.DataFrame(
        {
            "decision_id": frame["decision_id"].to_numpy(),
            "campaign_id": frame["campaign_id"].to_numpy(),
            "kind": frame["kind"].to_numpy(),
            "customer_id": frame["customer_id"].to_numpy(),
            "own_opens": own,
            "uniform_opens": uniform,
            "own_clicks": own * emails.click_p,
            "uniform_clicks": uniform * emails.click_p,
            "own_conversions": conversions,
            "uniform_conversions": conversions,
        }
    )


def _window_truth(
    frame: pd.DataFrame,
    c: np.ndarray,
    emails: _Emails,
    open_p: np.ndarray,
    site: Site,
    window_days: float,
) -> pd.DataFrame:
    """Per decision: expected sessions, purchases and revenue in its window, organic and with the emails."""
    a = utc_seconds(frame["window_start"]) if len(frame) else np.zeros(0)
    b = a + window_days * DAY
    organic = _organic(site, c, a, b)
    from_emails = _from_emails(emails, open_p, c, a, b)
    out = pd.DataFrame(
        {
            "decision_id": frame["decision_id"].to_numpy(),
            "campaign_id": frame["campaign_id"].to_numpy(),
            "kind": frame["kind"].to_numpy(),
            "customer_id": frame["customer_id"].to_numpy(),
            "holdout": frame["holdout"].to_numpy(bool),
            "window_start": frame["window_start"].array,
        }
    )
    for j, metric in enumerate(("sessions", "purchases", "revenue")):
        out[f"{metric}_organic"] = organic[:, j]
        out[f"{metric}_sent"] = organic[:, j] + from_emails[:, j]
    return out


def _organic(site: Site, c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n, 3]: expected organic sessions, purchases and revenue of customers `c` in [a, b) (whole hours): the
    sessions' hourly Poisson rates summed, times what a session buys."""
    out = np.zeros((len(c), 3))
    if not len(c):
        return out
    hours = int(np.round((b - a).max() / HOUR))
    rate = site.session_rate
    purchase, revenue = site.expected_purchase(c, np.full(len(c), -1))
    step = max(1, TRUTH_CHUNK * 72 // max(hours, 1))
    for lo in range(0, len(c), step):
        rows = np.arange(lo, min(lo + step, len(c)))
        mids = a[rows, None] + HOUR * (np.arange(hours)[None, :] + 0.5)
        activity = site.world.activity_at(c[rows, None], mids)
        sessions = rate[c[rows]] * np.where(mids < b[rows, None], activity, 0.0).sum(axis=1)
        out[rows] = sessions[:, None] * np.stack([np.ones(len(rows)), purchase[rows], revenue[rows]], axis=1)
    return out


def _from_emails(emails: _Emails, open_p: np.ndarray, c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[n, 3]: expected sessions, purchases and revenue in [a, b) that the emails sent to `c` lead to: their
    clicks' sessions and their conversions."""
    out = np.zeros((len(c), 3))
    if not len(emails.c) or not len(c):
        return out
    pairs = pd.merge(
        pd.DataFrame({"c": c, "i": np.arange(len(c))}),
        pd.DataFrame({"c": emails.c, "e": np.arange(len(emails.c))}),
        on="c",
    )
    i, e = pairs["i"].to_numpy(), pairs["e"].to_numpy()
    horizon = emails.world.coefficients.conversion_window_days * DAY
    near = (emails.t[e] < b[i]) & (emails.t[e] + horizon + HOUR > a[i])
    i, e = i[near], e[near]
    world, rates = emails.world, emails.rates
    both, unopened = emails.conversion_and_open(open_p)
    for lo in range(0, len(i), TRUTH_CHUNK):
        ii, ee = i[lo : lo + TRUTH_CHUNK], e[lo : lo + TRUTH_CHUNK]
        t, start, stop = emails.t[ee], a[ii], b[ii]
        weight, w_lo, w_hi = open_delay_hours(world, emails.c[ee], t, rates.open_delay_decay_hours)
        weight = weight / weight.sum(axis=1, keepdims=True)
        open_in = (weight * _uniform_in(w_lo, w_hi, start[:, None], stop[:, None])).sum(axis=1)
        cap = t + world.coefficients.conversion_window_days * DAY - 60.0
        opened = _opened_conversion_below(stop, weight, w_lo, w_hi, cap) - _opened_conversion_below(
            start, weight, w_lo, w_hi, cap
        )
        unopened_in = _unopened_conversion_below(stop, t, cap) - _unopened_conversion_below(start, t, cap)
        conversions = both[ee] * opened + unopened[ee] * unopened_in
        clicks = emails.delivered_p[ee] * open_p[ee] * emails.click_p[ee] * open_in
        parts = np.stack(
            [
                clicks + conversions,
                clicks * emails.click_purchase[ee] + conversions,
                clicks * emails.click_revenue[ee] + conversions * emails.conversion_worth[ee],
            ],
            axis=1,
        )
        np.add.at(out, ii, parts)
    return out


def _opened_conversion_below(
    x: np.ndarray, weight: np.ndarray, lo: np.ndarray, hi: np.ndarray, cap: np.ndarray
) -> np.ndarray:
    """P(an opener's conversion comes before x): the open uniform in an hour drawn by `weight` (normalized), then
    an exponential delay, at most `cap`."""
    mean = OPENED_CONVERSION_HOURS * HOUR
    below = (weight * _uniform_plus_exponential_below(x[:, None], lo, hi, mean)).sum(axis=1)
    return np.where(x > cap, 1.0, below)


def _unopened_conversion_below(x: np.ndarray, t: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """P(a conversion without an open comes before x): an exponential delay after the send at `t`, at most `cap`."""
    below = 1.0 - np.exp(-np.maximum(x - t, 0.0) / (UNOPENED_CONVERSION_DAYS * DAY))
    return np.where(x > cap, 1.0, below)


# --- the export -----------------------------------------------------------------------------------------------
class _Tables:
    """The rows of the export, collected in parts."""

    def __init__(self, world: World, tag: str) -> None:
        self.world, self.tag = world, tag
        self._email: list[pd.DataFrame] = []
        self._offer: list[pd.DataFrame] = []

    def _message(self, emails: _Emails, rows: np.ndarray) -> np.ndarray:
        return (self.tag + "-m-" + emails.frame["decision_id"].astype(str)).to_numpy()[rows]

    def sends(self, emails: _Emails) -> None:
        rows = np.arange(len(emails.c))
        self.email_event(emails, rows, "sent", emails.t)
        self._email[-1]["decision_id"] = emails.frame["decision_id"].astype(str).to_numpy()

    def email_event(
        self,
        emails: _Emails,
        rows: np.ndarray,
        event: str,
        at: np.ndarray,
        agent: object = None,
        flag: object = None,
    ) -> None:
        frame = emails.frame
        self._email.append(
            pd.DataFrame(
                {
                    "customer_id": frame["customer_id"].astype(str).to_numpy()[rows],
                    "message_id": self._message(emails, rows),
                    "campaign_id": frame["campaign_id"].to_numpy()[rows],
                    "event": event,
                    "at": at,
                    "machine_open": pd.array(
                        np.broadcast_to(np.asarray(flag, dtype=object), len(rows)), dtype="boolean"
                    )
                    if event == _OPEN
                    else pd.array([None] * len(rows), dtype="boolean"),
                    "bounce_type": np.where(
                        self.world.customer_params["bad_address"].to_numpy(bool)[emails.c[rows]], "hard", "soft"
                    )
                    if event == "bounce"
                    else None,
                    "user_agent": np.broadcast_to(np.asarray(agent, dtype=object), len(rows)),
                    "decision_id": None,
                }
            )
        )

    def exposures(self, emails: _Emails) -> None:
        frame = emails.frame
        known = set(self.world.offer_params["offer_id"].astype(str))
        rows, offers = [], []
        for i, ids in enumerate(frame["offer_ids"]):
            for offer in ids:
                if str(offer) in known:
                    rows.append(i)
                    offers.append(str(offer))
        at = np.asarray(rows, dtype=np.int64)
        self._offer.append(
            pd.DataFrame(
                {
                    "customer_id": frame["customer_id"].astype(str).to_numpy()[at],
                    "offer_id": np.asarray(offers, dtype=object),
                    "message_id": self._message(emails, at),
                    "event": "exposed",
                    "at": emails.t[at],
                    "value": np.nan,
                    "decision_id": frame["decision_id"].astype(str).to_numpy()[at],
                }
            )
        )

    def conversions(self, emails: _Emails, rows: np.ndarray, at: np.ndarray, value: np.ndarray) -> None:
        offer_ids = self.world.offer_params["offer_id"].astype(str).to_numpy()
        self._offer.append(
            pd.DataFrame(
                {
                    "customer_id": emails.frame["customer_id"].astype(str).to_numpy()[rows],
                    "offer_id": offer_ids[emails.offer[rows]],
                    "message_id": self._message(emails, rows),
                    "event": "converted",
                    "at": at,
                    "value": value,
                    "decision_id": None,
                }
            )
        )

    def _finish(self, parts: list[pd.DataFrame], end_s: float, prefix: str) -> pd.DataFrame:
        frame = pd.concat(parts, ignore_index=True)
        frame = frame[frame["at"] < end_s].sort_values("at", kind="stable").reset_index(drop=True)
        frame.insert(0, "event_id", [f"{self.tag}-{prefix}-{i:09d}" for i in range(1, len(frame) + 1)])
        frame["occurred_at"] = pd.to_datetime(
            np.round(frame.pop("at").to_numpy() * 1e6).astype(np.int64), unit="us", utc=True
        )
        return frame

    def email(self, end_s: float) -> pd.DataFrame:
        frame = self._finish(self._email, end_s, "ee")
        columns = ["event_id", "customer_id", "message_id", "campaign_id", "event", "occurred_at", "machine_open"]
        return frame[[*columns, "bounce_type", "user_agent", "decision_id"]]

    def offer(self, end_s: float) -> pd.DataFrame:
        frame = self._finish(self._offer, end_s, "oe")
        frame["propensity"] = np.nan
        columns = ["event_id", "customer_id", "offer_id", "message_id", "event", "occurred_at", "value"]
        return frame[[*columns, "propensity", "decision_id"]]

    def site(self, site: Site, end_s: float) -> pd.DataFrame:
        rows = site.rows.columns(SITE_COLUMNS)
        ids = self.world.customer_params["customer_id"].astype(str).to_numpy()
        category = rows["cat"].astype(np.int64)
        product = rows["product"].astype(np.int64)
        names = np.array(
            [f"p-{c}-{j:03d}" for c in CATEGORIES for j in range(1, PRODUCTS_PER_CATEGORY + 1)], dtype=object
        )
        frame = pd.DataFrame(
            {
                "customer_id": ids[rows["c"].astype(np.int64)],
                "event": np.asarray(SITE_EVENTS, dtype=object)[rows["ev"].astype(np.int64)],
                "at": rows["t"],
                "category": _named(np.asarray(CATEGORIES, dtype=object), category),
                "product_id": _named(names, product),
                "value": rows["value"],
            }
        )
        frame = self._finish([frame], end_s, "se")
        return frame[["event_id", "customer_id", "event", "occurred_at", "category", "product_id", "value"]]


def _named(names: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """names[codes], None where a code is negative."""
    out = np.full(len(codes), None, dtype=object)
    known = codes >= 0
    out[known] = names[codes[known]]
    return out


def _campaigns(frame: pd.DataFrame) -> pd.DataFrame:
    campaigns = frame.dropna(subset=["campaign_id"]).drop_duplicates("campaign_id")
    return campaigns[["campaign_id", "kind", "topic"]].reset_index(drop=True)


def _offers(world: World) -> pd.DataFrame:
    columns = ["offer_id", "kind", "category", "discount_pct", "price", "margin", "inventory", "starts_at", "ends_at"]
    return world.offer_params[columns].copy()
