"""The shop's site: sessions with page views, product views, carts and purchases.

A session views products in categories drawn from the customer's affinities, puts some in the cart and
sometimes buys the cart; an abandoned cart of a consenting customer is due a triggered email. Sessions come
on their own (a Poisson process that follows each customer's daily rhythm) and after clicks in emails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sendwise.simulator.options import Rates
from sendwise.simulator.recent import RecentLog
from sendwise.simulator.records import (
    ADD_TO_CART,
    PAGE_VIEW,
    PRODUCT_VIEW,
    PRODUCTS_PER_CATEGORY,
    PURCHASE,
    SESSION_START,
    Rows,
)
from sendwise.simulator.truth import CATEGORIES, DAY, HOUR, World

Carts = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Abandoned carts that are due a triggered email: (customer, when the email is due, category)."""

PRODUCT_VIEWS = 1.2
"""Mean product views of a session (Poisson), besides the one of a click's topic."""
CART_BASE, CART_AFFINITY = 0.08, 0.4
"""A viewed product goes into the cart with probability CART_BASE + CART_AFFINITY × the category's affinity."""
PURCHASE_GIVEN_CART = 0.35
"""A session with something in the cart ends in a purchase of the whole cart with this probability."""


@dataclass
class _Views:
    """Product views of a batch of sessions (one entry per view)."""

    session: np.ndarray
    rank: np.ndarray
    category: np.ndarray
    product: np.ndarray
    affinity: np.ndarray


@dataclass
class _SessionRows:
    """Site event rows of a batch of sessions, in time order within each session."""

    session: np.ndarray
    event: np.ndarray
    category: np.ndarray
    product: np.ndarray
    value: np.ndarray


def _session_rows(
    views: _Views, carted: np.ndarray, purchased: np.ndarray, n: int, n_pages: np.ndarray
) -> _SessionRows:
    """session_start, page views, product views (each carted one followed by add_to_cart), purchase."""
    page_session = np.repeat(np.arange(n), n_pages)
    page_rank = np.arange(len(page_session)) - np.repeat(np.cumsum(n_pages) - n_pages, n_pages)
    cart = np.flatnonzero(carted)
    buyers = np.flatnonzero(purchased)
    view_order = n_pages[views.session] + 1 + 2 * views.rank
    parts: tuple[tuple[Any, ...], ...] = (  # (session, order within the session, event, category, product)
        (np.arange(n), np.zeros(n), SESSION_START, -1, -1),
        (page_session, 1 + page_rank, PAGE_VIEW, -1, -1),
        (views.session, view_order, PRODUCT_VIEW, views.category, views.product),
        (views.session[cart], view_order[cart] + 1, ADD_TO_CART, views.category[cart], views.product[cart]),
        (buyers, np.full(len(buyers), np.inf), PURCHASE, -1, -1),
    )
    session = np.concatenate([p[0] for p in parts])
    order = np.lexsort((np.concatenate([p[1] for p in parts]), session))
    sizes = [len(p[0]) for p in parts]

    def column(i: int) -> np.ndarray:
        pieces = [np.broadcast_to(np.asarray(p[i]), (size,)) for p, size in zip(parts, sizes, strict=True)]
        return np.concatenate(pieces)[order]

    return _SessionRows(
        session=session[order],
        event=column(2).astype(np.int64),
        category=column(3).astype(np.int64),
        product=column(4).astype(np.int64),
        value=np.full(len(order), np.nan),
    )


class Site:
    """The site's sessions of a world's customers, and the site event rows they produce."""

    def __init__(self, world: World, rates: Rates, rng: np.random.Generator, track_recent: bool = False) -> None:
        """`track_recent`: keep every event in `recent` too, for each customer's activity before a time."""
        params = world.customer_params
        self.world, self.rates, self.rng = world, rates, rng
        self.consent = params["consent_email"].to_numpy(bool)
        self.session_rate = params["session_rate"].to_numpy(np.float64)
        self.affinity_cum = np.cumsum(np.stack(params["affinity"].to_numpy()), axis=1)
        catalog_rng = np.random.default_rng(1234)
        self.product_price = np.round(catalog_rng.lognormal(3.6, 0.6, len(CATEGORIES) * PRODUCTS_PER_CATEGORY), 2)
        self.rows = Rows()
        self.recent = RecentLog() if track_recent else None

    def baseline_sessions(self, rng: np.random.Generator, start_s: float, end_s: float) -> Carts:
        """Sessions as a Poisson process whose hourly rate follows each customer's activity profile."""
        customers = np.arange(len(self.session_rate))
        starts, owners = [], []
        days = round((end_s - start_s) / DAY)
        for day in range(days):
            hour_starts = start_s + day * DAY + HOUR * np.arange(24)
            activity = self.world.activity_at(customers[:, None], hour_starts[None, :] + HOUR / 2)
            counts = rng.poisson(self.session_rate[:, None] * activity)
            who, hour = np.nonzero(counts)
            repeats = counts[who, hour]
            owners.append(np.repeat(who, repeats))
            starts.append(np.repeat(hour_starts[hour], repeats) + rng.random(repeats.sum()) * HOUR)
        c = np.concatenate(owners) if owners else np.empty(0, np.int64)
        t = np.concatenate(starts) if starts else np.empty(0)
        return self.sessions(c, t, np.full(len(c), -1))

    def sessions(self, c: np.ndarray, t: np.ndarray, topic: np.ndarray) -> Carts:
        """Site events of sessions starting at `t` (a topic leads the first product view: a click's session).

        A session has page views, product views (category by affinity), some products put in the cart, and
        sometimes a purchase of the cart. Returns the abandoned carts of consenting customers as
        (customer, when the triggered email is due, category).
        """
        if not len(c):
            return np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64)
        views = self._product_views(c, topic)
        n = len(c)
        carted = self.rng.random(len(views.session)) < CART_BASE + CART_AFFINITY * views.affinity
        has_cart = np.bincount(views.session[carted], minlength=n) > 0
        purchased = has_cart & (self.rng.random(n) < PURCHASE_GIVEN_CART)
        rows = _session_rows(views, carted, purchased, n, self.rng.poisson(1.5, n) + 1)
        cart_value = np.bincount(views.session[carted], weights=self.product_price[views.product[carted]], minlength=n)
        first_cart = np.full(n, -1)
        first_cart[views.session[carted][::-1]] = np.flatnonzero(carted)[::-1]
        bought = rows.event == PURCHASE
        rows.category[bought] = views.category[first_cart[rows.session[bought]]]
        rows.product[bought] = views.product[first_cart[rows.session[bought]]]
        rows.value[bought] = cart_value[rows.session[bought]]
        gaps = self.rng.exponential(40.0, len(rows.session)) + 1.0
        first_row = np.r_[True, rows.session[1:] != rows.session[:-1]]
        gaps[first_row] = 0.0
        elapsed = np.cumsum(gaps)
        elapsed -= np.maximum.accumulate(np.where(first_row, elapsed, 0.0))
        at = t[rows.session] + elapsed
        self.rows.add(c=c[rows.session], ev=rows.event, t=at, cat=rows.category, product=rows.product, value=rows.value)
        if self.recent is not None:
            self.recent.add(c[rows.session], rows.event, at, rows.category)

        is_cart = np.flatnonzero(rows.event == ADD_TO_CART)
        cart_sessions = rows.session[is_cart]
        last_cart = is_cart[np.append(cart_sessions[1:] != cart_sessions[:-1], True)[: len(is_cart)]]
        session = rows.session[last_cart]
        abandoned = last_cart[~purchased[session] & self.consent[c[session]]]
        low, high = self.rates.triggered_delay_minutes
        due = at[abandoned] + 60.0 * self.rng.uniform(low, high, len(abandoned))
        return c[rows.session[abandoned]], due, rows.category[abandoned]

    def expected_purchase(self, c: np.ndarray, topic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P(a session ends in a purchase), the expected revenue of a session) for sessions of customers `c`
        led by `topic` (-1: none), from the probabilities `sessions` draws with, not from draws.

        Views are Poisson, so the views of each category are independent Poisson counts: a session has no cart
        with probability (1 − q_topic) · exp(−PRODUCT_VIEWS · Σ_k a_k q_k), q_k the cart probability of a view
        in category k and a_k its affinity; what the cart is worth is the expected price of every carted view.
        """
        affinity = np.diff(self.affinity_cum[c], axis=1, prepend=0.0)
        cart = CART_BASE + CART_AFFINITY * affinity
        prices = self.product_price.reshape(len(CATEGORIES), PRODUCTS_PER_CATEGORY).mean(axis=1)
        led = topic >= 0
        g = np.where(led, topic, 0)
        rows = np.arange(len(c))
        topic_cart = np.where(led, cart[rows, g], 0.0)
        no_cart = (1.0 - topic_cart) * np.exp(-PRODUCT_VIEWS * (affinity * cart).sum(axis=1))
        carted_value = topic_cart * prices[g] + PRODUCT_VIEWS * (affinity * cart * prices[None, :]).sum(axis=1)
        return PURCHASE_GIVEN_CART * (1.0 - no_cart), PURCHASE_GIVEN_CART * carted_value

    def _product_views(self, c: np.ndarray, topic: np.ndarray) -> _Views:
        """Product views per session, each in a category drawn from the customer's affinities (a session
        that follows a click on a campaign starts with a product of the campaign's topic)."""
        rng = self.rng
        n_views = rng.poisson(PRODUCT_VIEWS, len(c)) + (topic >= 0)
        session = np.repeat(np.arange(len(c)), n_views)
        rank = np.arange(len(session)) - np.repeat(np.cumsum(n_views) - n_views, n_views)
        u = rng.random(len(session))
        category = (u[:, None] > self.affinity_cum[c[session]]).sum(axis=1).clip(0, len(CATEGORIES) - 1)
        category = np.where((rank == 0) & (topic[session] >= 0), topic[session], category)
        product = category * PRODUCTS_PER_CATEGORY + rng.integers(0, PRODUCTS_PER_CATEGORY, len(session))
        cumulative = self.affinity_cum[c[session]]
        affinity = np.diff(cumulative, axis=1, prepend=0.0)[np.arange(len(session)), category]
        return _Views(session=session, rank=rank, category=category, product=product, affinity=affinity)

    def purchase_visit(
        self, c: np.ndarray, visit_t: np.ndarray, conv_t: np.ndarray, category: np.ndarray, value: np.ndarray
    ) -> None:
        """The visit in which an offer's conversion was bought: a session start, then the purchase."""
        self.rows.add(c=c, ev=SESSION_START, t=visit_t, cat=-1, product=-1, value=np.nan)
        self.rows.add(c=c, ev=PURCHASE, t=conv_t, cat=category, product=-1, value=value)
        if self.recent is not None:
            self.recent.add(c, np.full(len(c), SESSION_START), visit_t, np.full(len(c), -1))
            self.recent.add(c, np.full(len(c), PURCHASE), conv_t, category)
