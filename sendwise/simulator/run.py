"""The hour-by-hour run: sends, bounces, opens, clicks, unsubscribes, offers and conversions.

Each hour's emails are sent in time order, so fatigue counts every earlier send, and their outcomes (opens up
to 72 h later, clicks, the sessions clicks lead to, abandoned carts and the triggered emails those cause) are
drawn at once from the World's probabilities. Apple's privacy proxy fetches every email it receives and
security scanners open (and in a realistic world click) within seconds; the ESP flags some of those opens.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from sendwise.simulator.options import PREFETCH_FAST_MAX_SECONDS, PREFETCH_MAX_HOURS, Rates, Realism
from sendwise.simulator.population import interest_matrix
from sendwise.simulator.records import (
    BOUNCE,
    CLICK,
    COMPLAINT,
    CONVERTED,
    DELIVERED,
    EXPOSED,
    HUMAN,
    MPP,
    MPP_UA,
    OFFER_CLICKED,
    OPEN,
    PROMOTIONAL,
    SCANNER,
    SCANNER_UA,
    SCANNER_USER_AGENTS,
    SENT,
    TRIGGERED,
    UNSUBSCRIBE,
    Rows,
)
from sendwise.simulator.sender import LoggedPolicy, OfferMenu, conversion_values
from sendwise.simulator.site import Site
from sendwise.simulator.truth import CATEGORIES, DAY, HOUR, KINDS, Recent, World

RECENT_FIELDS = tuple(Recent.__dataclass_fields__)

RING = 32
"""Send times remembered per customer, for the count of sends in the last 7 days."""


class Run:
    """The state of a simulation while it runs, and the rows it has produced."""

    def __init__(
        self,
        world: World,
        campaigns: pd.DataFrame,
        policy: LoggedPolicy,
        rates: Rates,
        rng: np.random.Generator,
        start_s: float,
        end_s: float,
        realism: Realism | None = None,
        realism_rng: np.random.Generator | None = None,
    ) -> None:
        self.world, self.campaigns, self.policy, self.rates, self.rng = world, campaigns, policy, rates, rng
        self.start_s, self.end_s = start_s, end_s
        self.realism = realism or Realism()
        self.realism_rng = realism_rng or np.random.default_rng()
        params = world.customer_params
        self.n = len(params)
        self.consent = params["consent_email"].to_numpy(bool)
        self.is_mpp = params["is_mpp"].to_numpy(bool)
        self.is_scanner = params["is_scanner"].to_numpy(bool)
        self.bad_address = params["bad_address"].to_numpy(bool)
        self.device_ua = params["device_user_agent"].to_numpy(np.int64)
        self.audience_share = params["audience_share"].to_numpy(np.float64)
        self.interests = interest_matrix(params["interests"])
        self.camp_kind = pd.Index(KINDS).get_indexer(campaigns["kind"])
        self.camp_topic = pd.Index(CATEGORIES).get_indexer(campaigns["topic"].fillna(""))
        self.cart_campaign = np.array(
            [campaigns.index[campaigns["campaign_id"] == f"cmp-cart-{c}"][0] for c in CATEGORIES]
        )
        self.offer_category = pd.Index(CATEGORIES).get_indexer(world.offer_params["category"].fillna(""))
        self.offer_price = world.offer_params["price"].to_numpy(np.float64)
        self.offer_discount = world.offer_params["discount_pct"].fillna(0.0).to_numpy(np.float64) / 100
        self.offer_kind = world.offer_params["kind"].to_numpy()
        self.menu = OfferMenu.from_offers(world.offer_params)
        self.suppressed_at = np.full(self.n, np.inf)
        self.last_triggered = np.full(self.n, -np.inf)
        self.ring = np.full((self.n, RING), -np.inf)
        self.ring_pos = np.zeros(self.n, dtype=np.int64)
        self.next_message = 1
        self.site = Site(world, rates, rng, track_recent=self.realism.recent_activity)
        self.email, self.offer, self.messages = Rows(), Rows(), Rows()
        self.schedule: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    # --- the plan
    def plan(self, session_rng: np.random.Generator) -> None:
        """The site's sessions before any email (drawn from `session_rng`), and the send schedule: every
        campaign's recipients, and the cart emails that the abandoned carts of those sessions trigger."""
        cart_c, cart_t, cart_cat = self.site.baseline_sessions(session_rng, self.start_s, self.end_s)
        sched_c, sched_t, sched_camp = [cart_c], [cart_t], [self.cart_campaign[cart_cat]]
        for campaign in self.campaigns.itertuples():
            if campaign.kind == "triggered":
                continue
            c_, t_ = self._recipients(campaign.day_start_s, campaign.blast_s)
            sched_c.append(c_)
            sched_t.append(t_)
            sched_camp.append(np.full(len(c_), campaign.Index))
        all_t = np.concatenate(sched_t)
        order = np.argsort(all_t, kind="stable")
        self.schedule = (np.concatenate(sched_c)[order], all_t[order], np.concatenate(sched_camp)[order])

    def _recipients(self, day_start_s: float, blast_s: float) -> tuple[np.ndarray, np.ndarray]:
        """About 70% of consenting customers; most at the blast hour, some at a random hour of the day."""
        rng = self.rng
        audience = np.flatnonzero(self.consent & (rng.random(self.n) < self.audience_share))
        random_hour = rng.random(len(audience)) < self.rates.random_hour_share
        t = np.where(
            random_hour,
            day_start_s + HOUR * rng.integers(0, 24, len(audience)) + rng.uniform(0, 600, len(audience)),
            blast_s + rng.uniform(0, 1200, len(audience)),
        )
        return audience, t

    # --- sending
    def hours(self) -> Iterator[int]:
        """Send hour by hour; yields after each hour (for the progress bar)."""
        if self.schedule is None:
            raise RuntimeError("the run has no schedule: call plan() before hours()")
        sched_c, sched_t, sched_camp = self.schedule
        i = 0
        n_hours = round((self.end_s - self.start_s) / HOUR)
        for h in range(n_hours):
            hour_end = self.start_s + (h + 1) * HOUR
            j = int(np.searchsorted(sched_t, hour_end, side="left"))
            c, t, camp = sched_c[i:j], sched_t[i:j], sched_camp[i:j]
            i = j
            if self.pending:
                p_c, p_t, p_camp = (np.concatenate(x) for x in zip(*self.pending, strict=True))
                now = p_t < hour_end
                c, t, camp = np.r_[c, p_c[now]], np.r_[t, p_t[now]], np.r_[camp, p_camp[now]]
                self.pending = [(p_c[~now], p_t[~now], p_camp[~now])] if (~now).any() else []
            if len(c):
                self._send_hour(c, t, camp)
            yield h

    def _send_hour(self, c: np.ndarray, t: np.ndarray, camp: np.ndarray) -> None:
        order = np.argsort(t, kind="stable")
        c, t, camp = c[order], t[order], camp[order]
        triggered = self.camp_kind[camp] == TRIGGERED
        keep = self.suppressed_at[c] > t
        keep &= ~triggered | (self.last_triggered[c] <= t - DAY)
        candidates = np.flatnonzero(keep & triggered)
        _, first = np.unique(c[candidates], return_index=True)
        keep[np.setdiff1d(candidates, candidates[first])] = False
        c, t, camp = c[keep], t[keep], camp[keep]
        sent_triggered = self.camp_kind[camp] == TRIGGERED
        self.last_triggered[c[sent_triggered]] = t[sent_triggered]
        if len(c):
            self._send(c, t, camp)

    def _count_and_record_sends(self, c: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Sends to the same customer in the 7 days before each send (earlier ones in this batch included)."""
        n = len(c)
        order = np.lexsort((t, c))
        sorted_c = c[order]
        new_group = np.r_[True, sorted_c[1:] != sorted_c[:-1]]
        group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
        earlier = np.empty(n, dtype=np.int64)
        earlier[order] = np.arange(n) - group_start
        recent = (self.ring[c] > (t - 7 * DAY)[:, None]).sum(axis=1)
        for rank in range(int(earlier.max()) + 1 if n else 0):
            sel = earlier == rank
            who = c[sel]
            self.ring[who, self.ring_pos[who] % RING] = t[sel]
            self.ring_pos[who] += 1
        return recent + earlier

    def recent_at(self, at_s: float) -> Recent | None:
        """Every customer's recent site activity before `at_s`, where the world has the effect."""
        if self.site.recent is None:
            return None
        return self.site.recent.at(np.arange(self.n), np.full(self.n, at_s))

    def sends_in_last_7_days(self, at_s: float) -> np.ndarray:
        return ((self.ring > at_s - 7 * DAY) & (self.ring < at_s)).sum(axis=1)

    def _log(
        self,
        sent: tuple[np.ndarray, np.ndarray, np.ndarray],
        event: int,
        rows: np.ndarray,
        at: np.ndarray,
        *,
        flag: Any = -1,
        bounce: Any = -1,
        ua: Any = -1,
        source: Any = -1,
    ) -> None:
        """Email events for the `rows` of a batch of sends (customer, message, campaign)."""
        c, msg, camp = sent
        self.email.add(
            c=c[rows],
            msg=msg[rows],
            camp=camp[rows],
            ev=event,
            t=at,
            flag=flag,
            bounce=bounce,
            ua=ua,
            source=source,
        )

    def _send(self, c: np.ndarray, t: np.ndarray, camp: np.ndarray) -> None:
        rng, rates, n = self.rng, self.rates, len(c)
        kind, topic = self.camp_kind[camp], self.camp_topic[camp]
        msg = np.arange(self.next_message, self.next_message + n)
        self.next_message += n
        sent = (c, msg, camp)
        sends7 = self._count_and_record_sends(c, t)
        self._log(sent, SENT, np.arange(n), t)

        hard = self.bad_address[c]
        bounced = hard | (rng.random(n) < rates.soft_bounce)
        bounce_t = t + rng.uniform(2.0, 120.0, n)
        b = np.flatnonzero(bounced)
        self._log(sent, BOUNCE, b, bounce_t[b], bounce=np.where(hard[b], 0, 1))
        self._suppress(c[hard], bounce_t[hard])
        delivered = ~bounced
        delivered_t = t + rng.uniform(1.0, 30.0, n)
        d = np.flatnonzero(delivered)
        self._log(sent, DELIVERED, d, delivered_t[d])
        self._machine_opens(sent, delivered, delivered_t)

        recent = self.site.recent.at(c, t) if self.site.recent is not None else None
        last_visit = None if recent is None else recent.visit
        p_open = self.world.open_probability_at(c, t, kind, topic, sends7.astype(np.float64), last_visit)
        u_open = rng.random(n)
        human = delivered & (u_open < p_open)
        h = np.flatnonzero(human)
        open_t = np.full(n, np.nan)
        open_t[h] = np.maximum(self._human_open_times(c[h], t[h]), delivered_t[h] + 5.0)
        self._log(sent, OPEN, h, open_t[h], **self._human_open_agent(c[h]), source=HUMAN)
        again = h[rng.random(len(h)) < rates.reopen]
        reopen_t = open_t[again] + rng.exponential(4 * HOUR, len(again))
        self._log(sent, OPEN, again, reopen_t, **self._human_open_agent(c[again]), source=HUMAN)

        p_click = self.world.click_probability_at(c[h], topic[h])
        clicked = np.zeros(n, dtype=bool)
        clicked[h] = rng.random(len(h)) < p_click
        k = np.flatnonzero(clicked)
        click_t = np.full(n, np.nan)
        click_t[k] = open_t[k] + 2.0 + rng.exponential(45.0, len(k))
        self._log(sent, CLICK, k, click_t[k], ua=self.device_ua[c[k]])
        cart_c, cart_t, cart_cat = self.site.sessions(c[k], click_t[k] + rng.uniform(3.0, 40.0, len(k)), topic[k])
        if len(cart_c):
            self.pending.append((cart_c, cart_t, self.cart_campaign[cart_cat]))

        unsubscribes = h[rng.random(len(h)) < 0.006 + 0.004 * sends7[h]]
        unsubscribe_t = open_t[unsubscribes] + 5.0 + rng.exponential(30.0, len(unsubscribes))
        self._log(sent, UNSUBSCRIBE, unsubscribes, unsubscribe_t)
        complaints = d[rng.random(len(d)) < rates.complaint]
        complaint_t = delivered_t[complaints] + rng.exponential(3 * HOUR, len(complaints))
        self._log(sent, COMPLAINT, complaints, complaint_t)
        self._suppress(c[unsubscribes], unsubscribe_t)
        self._suppress(c[complaints], complaint_t)

        offer, propensity, p_conv, converted = self._offers(c, t, kind, topic, u_open, open_t, click_t, msg, recent)
        self.messages.add(
            msg=msg,
            c=c,
            camp=camp,
            t=t,
            sends7=sends7,
            p_open=p_open,
            human=human,
            delivered=delivered,
            o=offer,
            propensity=propensity,
            p_conv=p_conv,
            converted=converted,
            last_visit=np.full(n, np.nan) if last_visit is None else last_visit,
        )

    def _human_open_agent(self, c: np.ndarray) -> dict[str, Any]:
        """The user agent and the ESP's flag of human opens: the device's, unflagged; for a proxied recipient
        of a realistic world, the proxy's, flagged as often as the proxy's own fetches."""
        if not self.realism.proxy_human_opens:
            return {"flag": 0, "ua": self.device_ua[c]}
        proxied = self.is_mpp[c]
        flags = _machine_flags(self.realism_rng, len(c), self.rates.mpp_flagged)
        return {"flag": np.where(proxied, flags, 0), "ua": np.where(proxied, MPP_UA, self.device_ua[c])}

    def _prefetch_delays(self, delay: np.ndarray) -> np.ndarray:
        """Seconds from delivery to the proxy's fetch: the classic world's `delay`, or in a realistic world a
        share within minutes (log-uniform from a second) and the rest hours later (log-normal)."""
        realism, rng = self.realism, self.realism_rng
        if realism.prefetch_fast_share >= 1.0:
            return delay
        n = len(delay)
        fast = rng.random(n) < realism.prefetch_fast_share
        soon = np.exp(rng.uniform(0.0, np.log(PREFETCH_FAST_MAX_SECONDS), n))
        late = np.minimum(
            rng.lognormal(np.log(realism.prefetch_slow_median_hours * HOUR), 0.8, n), PREFETCH_MAX_HOURS * HOUR
        )
        return np.where(fast, soon, late)

    def _machine_opens(
        self, sent: tuple[np.ndarray, np.ndarray, np.ndarray], delivered: np.ndarray, delivered_t: np.ndarray
    ) -> None:
        """Every delivered email to an MPP customer is fetched by the proxy; scanners fetch within seconds (and
        in a realistic world follow some links too)."""
        rng, rates, c = self.rng, self.rates, sent[0]
        m = np.flatnonzero(delivered & self.is_mpp[c])
        delay = self._prefetch_delays(2.0 + np.minimum(rng.exponential(60.0, len(m)), 400.0))
        flag = _machine_flags(rng, len(m), rates.mpp_flagged)
        fetched_t = delivered_t[m] + delay
        self._log(sent, OPEN, m, fetched_t, flag=flag, ua=MPP_UA, source=MPP)
        if self.realism.refetch_share > 0:
            again = self.realism_rng.random(len(m)) < self.realism.refetch_share
            refetch_t = fetched_t[again] + self.realism_rng.uniform(HOUR, 2 * DAY, int(again.sum()))
            flag = _machine_flags(self.realism_rng, int(again.sum()), rates.mpp_flagged)
            self._log(sent, OPEN, m[again], refetch_t, flag=flag, ua=MPP_UA, source=MPP)
        s = np.flatnonzero(delivered & self.is_scanner[c])
        agent = SCANNER_UA + rng.integers(0, len(SCANNER_USER_AGENTS), len(s))
        flag = _machine_flags(rng, len(s), rates.scanner_flagged)
        scanned_t = delivered_t[s] + rng.uniform(0.5, 15.0, len(s))
        self._log(sent, OPEN, s, scanned_t, flag=flag, ua=agent, source=SCANNER)
        if self.realism.scanner_click_share > 0:
            follows = self.realism_rng.random(len(s)) < self.realism.scanner_click_share
            click_t = scanned_t[follows] + self.realism_rng.uniform(0.5, 10.0, int(follows.sum()))
            self._log(sent, CLICK, s[follows], click_t, ua=agent[follows], source=SCANNER)

    def _human_open_times(self, c: np.ndarray, t: np.ndarray) -> np.ndarray:
        """When a person who opens does: an hour of the next 72 drawn by their activity, sooner likelier."""
        if not len(c):
            return np.empty(0)
        weight, lo, hi = open_delay_hours(self.world, c, t, self.rates.open_delay_decay_hours)
        cumulative = np.cumsum(weight, axis=1)
        u = self.rng.random(len(c)) * cumulative[:, -1]
        chosen = (cumulative < u[:, None]).sum(axis=1).clip(0, weight.shape[1] - 1)
        rows = np.arange(len(c))
        return lo[rows, chosen] + self.rng.random(len(c)) * (hi[rows, chosen] - lo[rows, chosen])

    def _suppress(self, c: np.ndarray, at: np.ndarray) -> None:
        np.minimum.at(self.suppressed_at, c, at)

    def _offers(
        self,
        c: np.ndarray,
        t: np.ndarray,
        kind: np.ndarray,
        topic: np.ndarray,
        u_open: np.ndarray,
        open_t: np.ndarray,
        click_t: np.ndarray,
        msg: np.ndarray,
        recent: Recent | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One offer per promotional email, chosen by the logged policy; conversions by the true probability.

        A conversion shares its uniform draw with the open (with probability `open_conversion_coupling`), so
        openers convert more often while both probabilities stay exactly the truth's.
        """
        rng, rates, n = self.rng, self.rates, len(c)
        offer, propensity = np.full(n, -1), np.full(n, np.nan)
        p_conv, converted = np.full(n, np.nan), np.zeros(n, dtype=bool)
        p = np.flatnonzero(kind == PROMOTIONAL)
        if not len(p):
            return offer, propensity, p_conv, converted
        probabilities = self.policy.probabilities(self.menu, self.interests[c[p]], topic[p], t[p])
        cumulative = np.cumsum(probabilities, axis=1)
        chosen = (cumulative < rng.random(len(p))[:, None] * cumulative[:, -1:]).sum(axis=1)
        chosen = chosen.clip(0, probabilities.shape[1] - 1)
        offer[p], propensity[p] = chosen, probabilities[np.arange(len(p)), chosen]
        recent_p = None if recent is None else Recent(**{f: getattr(recent, f)[p] for f in RECENT_FIELDS})
        p_conv[p] = self.world.conversion_probability_at(c[p], chosen, recent_p)
        shared = rng.random(len(p)) < rates.open_conversion_coupling
        u_conv = np.where(shared, u_open[p], rng.random(len(p)))
        converted[p] = u_conv < p_conv[p]
        self.offer.add(c=c[p], o=chosen, msg=msg[p], ev=EXPOSED, t=t[p], value=np.nan, propensity=propensity[p])

        k = p[~np.isnan(click_t[p]) & (self.offer_kind[offer[p]] != "control")]
        k = k[rng.random(len(k)) < rates.offer_click_given_click]
        self.offer.add(c=c[k], o=offer[k], msg=msg[k], ev=OFFER_CLICKED, t=click_t[k], value=np.nan, propensity=np.nan)

        v = np.flatnonzero(converted)
        opened = ~np.isnan(open_t[v])
        delay = np.where(
            opened, open_t[v] - t[v] + rng.exponential(3 * HOUR, len(v)), rng.exponential(1.5 * DAY, len(v))
        )
        window = self.world.coefficients.conversion_window_days * DAY
        conv_t = t[v] + np.minimum(delay, window - 60.0)
        o = offer[v]
        value = conversion_values(rng, self.offer_kind[o], self.offer_price[o], self.offer_discount[o])
        self.offer.add(c=c[v], o=o, msg=msg[v], ev=CONVERTED, t=conv_t, value=value, propensity=np.nan)
        u = rng.random(len(v))
        sampled = (u[:, None] > self.site.affinity_cum[c[v]]).sum(axis=1).clip(0, len(CATEGORIES) - 1)
        category = np.where(self.offer_category[o] >= 0, self.offer_category[o], sampled)
        visit_t = conv_t - rng.uniform(60.0, 600.0, len(v))
        self.site.purchase_visit(c[v], visit_t, conv_t, category, value)
        return offer, propensity, p_conv, converted


def open_delay_hours(
    world: World, c: np.ndarray, t: np.ndarray, decay_hours: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The hours in which a person who opens an email sent at `t` does: [n, open window hours] each of the
    (unnormalized) weight of the hour, its start and its end. An hour's weight is the customer's activity in it
    times exp(−hours since the send / `decay_hours`), the hour of the send pro rata; the open is uniform within
    the hour it falls in (from the send itself in the first one)."""
    hours = np.arange(world.coefficients.open_window_hours)
    first_hour = np.floor(t / HOUR) * HOUR
    bin_start = first_hour[:, None] + HOUR * hours[None, :]
    weight = world.activity_at(c[:, None], bin_start + HOUR / 2)
    weight = weight * np.exp(-hours / decay_hours)[None, :]
    weight[:, 0] *= 1.0 - (t - first_hour) / HOUR
    lo = bin_start.copy()
    lo[:, 0] = t
    return weight, lo, bin_start + HOUR


def _machine_flags(rng: np.random.Generator, n: int, flagged: float) -> np.ndarray:
    """The ESP's machine_open flag: true for a `flagged` share, else false or missing (1, 0, -1)."""
    u = rng.random(n)
    return np.where(u < flagged, 1, np.where(u < flagged + (1 - flagged) / 2, 0, -1))
