"""The online features decisions read: a snapshot of Feast's online store, kept fresh, and a batch's rows.

`OnlineFeatures` holds the current `OnlineState` (the snapshot with every known customer's offer scores) and
swaps it whole when a feature table or the Feast registry changes: a read that fails keeps the last state and
says so. `batch_features` turns a batch's snapshot rows into what the models see (`BatchFeatures`): the
request's context for customers sendwise does not know, and population-level features for those who do not
allow profiling.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from feast import FeatureStore

from features.transform import SCALAR_FEATURES, CustomerMatrix, set_attribute
from sendwise.champions import LoadedModel
from sendwise.settings import Settings
from serving.offer_scores import KeptScores
from serving.realtime import EmailState
from serving.reasons import features_unavailable
from serving.schemas import Recipient
from serving.snapshot import FeatureSnapshot, release_memory, snapshot_signature

logger = logging.getLogger(__name__)

SNAPSHOT_CHECK_SECONDS = 10.0
"""How often a decision looks whether the feature tables or the registry changed (a new materialization)."""

OfferTable = tuple[np.ndarray, dict[str, int]]
"""Every known customer's conversion probability per offer ([snapshot rows + 1, offers], float32, NaN where not
scored) and each offer's column."""


@dataclass(frozen=True)
class OnlineState:
    """One snapshot of the online features with every known customer's offer scores, swapped as a whole."""

    snapshot: FeatureSnapshot
    offer_table: np.ndarray  # [snapshot rows + 1, catalog offers] float32, NaN where not scored
    offer_columns: dict[str, int]

    @classmethod
    def empty(cls, models: Mapping[str, LoadedModel] | None = None) -> OnlineState:
        """No online features at all: every customer is unknown (with the attribute columns `models` read)."""
        return cls(FeatureSnapshot.empty(model_attributes(models or {})), np.zeros((1, 0), dtype=np.float32), {})


def model_attributes(models: Mapping[str, LoadedModel]) -> dict[str, bool]:
    """The `attr_*` features the models read, each True where a model reads it as a category (a label)."""
    found: dict[str, bool] = {}
    for model in models.values():
        for name, info in model.booster.dump_model(num_iteration=1)["feature_infos"].items():
            if name.startswith("attr_"):
                found[name] = found.get(name, False) or bool(isinstance(info, dict) and info.get("values"))
    return found


@dataclass
class BatchFeatures:
    """A batch's feature rows as the models see them: the request's context overlaid for customers sendwise
    does not know, and only population-level features for those who do not allow profiling."""

    state: OnlineState
    matrix: CustomerMatrix
    rows: np.ndarray  # snapshot rows (its empty row for customers it does not have)
    known: np.ndarray
    profiled: np.ndarray
    consent: np.ndarray  # False: no email consent (unknown customers: only after a pushed withdrawal)
    eligible: np.ndarray  # False: email may not go out (unknown customers: only after a pushed stop)
    any_views: np.ndarray  # product views of their own that modules may use
    degraded: bool
    stopped: np.ndarray | None = None
    """Per row, True where email to the customer has stopped (latest values, pushed stops included), when the
    online features were read with them (Redis); None: read through `RealtimeFeatures.stopped`."""
    latest_read: bool = False
    """Whether the matrix has the customers' latest values (what they did last on the site, pushed events
    included): read with the features on Redis, else through `RealtimeFeatures.latest`."""
    withdrawn: np.ndarray | None = None
    """Per row, True where the features allow profiling but a pushed customers row withdrew it: scores computed
    from their own features (a snapshot's offer table, Redis's kept scores) are not theirs to use."""
    kept: KeptScores | None = None
    """The offer scores kept in Redis for these customers, read with their features (`serving.offer_scores`);
    None where the features come from a snapshot (its own table holds them) or Redis could not be read."""

    def set_latest(self, latest: dict[str, np.ndarray]) -> None:
        """The customers' latest values, kept only where the customer allows profiling (as their other events)."""
        blank = ~self.profiled
        for name, values in latest.items():
            values = values.copy()
            values[blank] = np.nan if values.dtype.kind == "f" else None
            self.matrix.latest[name] = values
        self.latest_read = True

    @cached_property
    def engagement(self) -> dict[str, np.ndarray]:
        """Emails, human opens, clicks and site visits of each row (decayed counts, rounded): what a prediction
        rests on; and whether the customer's opens are hidden behind a privacy proxy (1: they are)."""
        scalars = self.matrix.scalars.astype(np.float64)
        counts = np.rint(np.nan_to_num(scalars, nan=0.0)).astype(int)
        names = ("n_emails", "n_human_opens", "n_clicks", "n_sessions")
        found = {name: counts[:, SCALAR_FEATURES.index(name)] for name in names}
        found["opens_hidden"] = (scalars[:, SCALAR_FEATURES.index("opens_observable")] == 0).astype(int)
        return found


class RhythmPriors:
    """Each time zone's pooled daily rhythms (weekday, weekend), and the global one under the zone ""."""

    def __init__(self, priors: pd.DataFrame | None) -> None:
        self.by_zone: dict[str, Any] = (
            {} if priors is None else dict(zip(priors["timezone"], priors.itertuples(), strict=True))
        )

    def pool(self, matrix: CustomerMatrix, pooled: np.ndarray) -> None:
        """Customers without their own history (unknown, or no profiling consent) get their zone's rhythm, or a
        flat day where no zone prior exists: never their own."""
        for day in ("weekday", "weekend"):
            profile = matrix.profiles[f"rhythm_{day}"]
            profile[pooled] = 0.0
            for zone in np.unique(matrix.timezone[pooled]):
                prior = self.by_zone.get(zone) or self.by_zone.get("")
                if prior is not None:
                    profile[pooled[matrix.timezone[pooled] == zone]] = np.asarray(getattr(prior, day), np.float32)


def batch_features(
    state: OnlineState,
    ids: list[str],
    rows: np.ndarray,
    recipients: Sequence[Recipient] | None,
    priors: RhythmPriors,
    degraded: bool = False,
    pushed: EmailState | None = None,
) -> BatchFeatures:
    """Snapshot rows with the request's context for unknown customers (time zone, interests, attributes),
    and, for everyone without profiling consent, their zone's rhythm in place of their own history.

    `pushed` (the latest values: stops and the consent of customers rows pushed as events) narrows what the
    batch features allow at once: a withdrawn email consent stops email, a withdrawn profiling consent leaves
    population-level predictions only, known customer or not. A consent given by event lifts only one withdrawn
    by event; one the customers table withholds is given by the next ingest and features build."""
    snapshot = state.snapshot
    known = snapshot.known[rows]
    pushed = pushed or EmailState.none(len(ids))
    allowed = known & (snapshot.consent["profiling_allowed"][rows] > 0)
    withdrawn = allowed & (pushed.consent_profiling == 0)
    profiled = allowed & ~withdrawn
    unknown = np.flatnonzero(~known)
    blank = np.flatnonzero(~profiled)
    matrix = snapshot.matrix(ids, rows, blank=blank)  # no engagement features for them
    if recipients is not None and len(unknown):
        _overlay_context(matrix, unknown, recipients)
    matrix.timezone[unknown] = [z if isinstance(z, str) and z else "UTC" for z in matrix.timezone[unknown]]
    if len(blank):
        for i in blank:
            matrix.category_names[i] = []
            matrix.category_views[i] = np.zeros(0, dtype=np.float32)
        priors.pool(matrix, blank)
    return BatchFeatures(
        state=state,
        matrix=matrix,
        rows=rows,
        known=known,
        profiled=profiled,
        consent=np.where(known, snapshot.consent["consent_email"][rows] > 0, True) & ~(pushed.consent_email == 0),
        eligible=(snapshot.consent["email_eligible"][rows] > 0) | ~known,  # a stop pushed for them still counts
        any_views=profiled & (snapshot.views[rows] > 0).any(axis=1),
        degraded=degraded,
        stopped=pushed.stopped,
        withdrawn=withdrawn,
    )


def _overlay_context(matrix: CustomerMatrix, unknown: np.ndarray, recipients: Sequence[Recipient]) -> None:
    """The context a request gives for customers sendwise does not know: time zone, interests, attributes."""
    attributes = matrix.attributes
    for i in unknown.tolist():
        recipient = recipients[i]
        matrix.timezone[i] = recipient.timezone or "UTC"
        matrix.interests[i] = {s.strip().lower() for s in "|".join(recipient.interests).split("|") if s.strip()}
        for name, value in recipient.attributes.items():
            if name in attributes:
                set_attribute(attributes, name, i, value)


class OnlineFeatures:
    """The current online state of a home, read again when its feature tables or Feast registry change.

    `score_offers` scores every known customer's offers for a snapshot being read (the offer model reads no
    request context, so a decision looks its offer scores up)."""

    def __init__(
        self,
        settings: Settings,
        store: FeatureStore | None,
        priors: RhythmPriors,
        score_offers: Callable[[FeatureSnapshot], OfferTable],
    ) -> None:
        self.settings = settings
        self.store = store
        self.priors = priors
        self.score_offers = score_offers
        self.degraded_reasons: list[str] = []
        self.blank = OnlineState.empty()
        """What decisions read while no features were ever read: set by the engine, with its models' attributes."""
        self.refresh_in_background = False
        """When set (the service sets it), a changed feature table is read in a thread of its own while answers
        keep coming from the last snapshot: the service decides small requests on its event loop, which must
        not stop for the seconds (a minute at a million customers) a read takes."""
        self.read_email_state: Callable[[list[str]], EmailState] | None = None
        """The latest values' stops and consents of a batch's customers (`RealtimeFeatures.email_state`): set by
        the engine; None: none were pushed."""
        self.state: OnlineState | None = None
        self._lock = threading.Lock()
        self._checked = 0.0
        self._failed_signature: tuple[tuple[str, int], ...] | None = None
        self._refreshing: threading.Thread | None = None
        if store is not None:
            self.refresh()

    def refresh(self) -> None:
        """Load the online features (and score every known customer's offers) when the Feast sources or the
        registry changed since the snapshot was read; a failed read keeps the old snapshot and says so."""
        if self.store is None:
            raise RuntimeError("no feature store to read online features from")
        with self._lock:
            self._checked = time.monotonic()
            signature = snapshot_signature(self.settings)
            current = self.state
            if current is not None and signature == current.snapshot.signature:
                self._recovered()  # the files are back as they were read: the snapshot is theirs again
                return
            if signature == self._failed_signature:
                return
            try:
                snapshot = FeatureSnapshot.load(self.store, self.settings)
                table, columns = self.score_offers(snapshot)
            except Exception as error:  # an unreadable store degrades the answers, never fails them
                logger.exception("reading the online features failed; answers come from the last snapshot read")
                self.degraded_reasons = [features_unavailable(error)]
                self._failed_signature = signature  # tried again once the files change
                return
            self.state = OnlineState(snapshot, table, columns)
            del current  # the old snapshot goes now, not at the next request
            release_memory()
            self._recovered()

    def _recovered(self) -> None:
        if self.degraded_reasons:
            logger.warning("the online features are readable again: answers are no longer degraded")
        self._failed_signature = None
        self.degraded_reasons = []

    def rescored(self, score_offers: Callable[[FeatureSnapshot], OfferTable], offers_changed: bool) -> OnlineFeatures:
        """The same snapshot, its offers scored by `score_offers` when `offers_changed` (a new offer champion),
        as a new object whose state is whole from the start: the engine serving it is swapped in at once."""
        twin = OnlineFeatures(self.settings, None, self.priors, score_offers)
        twin.store = self.store
        with self._lock:
            state, twin.degraded_reasons = self.state, list(self.degraded_reasons)
            twin._failed_signature, twin._checked = self._failed_signature, self._checked
        twin.refresh_in_background = self.refresh_in_background
        twin.read_email_state = self.read_email_state
        if state is not None and offers_changed:
            twin.state = OnlineState(state.snapshot, *score_offers(state.snapshot))
        else:
            twin.state = state
        return twin

    def current(self) -> OnlineState | None:
        """The state to decide from, after looking (at most every `SNAPSHOT_CHECK_SECONDS`) for a newer one."""
        if self.store is not None and time.monotonic() - self._checked > SNAPSHOT_CHECK_SECONDS:
            if not self.refresh_in_background:
                self.refresh()
            elif self._refreshing is None or not self._refreshing.is_alive():
                self._checked = time.monotonic()  # one check at a time
                self._refreshing = threading.Thread(target=self.refresh, name="snapshot", daemon=True)
                self._refreshing.start()
        return self.state

    def wait_for_refresh(self, timeout: float | None = None) -> None:
        """Until a background read of the online features (if one runs) is done: for tests and tools."""
        if self._refreshing is not None:
            self._refreshing.join(timeout)

    def for_recipients(self, recipients: Sequence[Recipient]) -> BatchFeatures:
        """The recipients' feature rows as the models see them (all unknown, and degraded, without a state)."""
        state = self.current()
        ids = [r.customer_id for r in recipients]
        pushed = self.read_email_state(ids) if self.read_email_state is not None else None
        if state is None:
            empty = self.blank
            rows = empty.snapshot.rows(ids)
            return batch_features(empty, ids, rows, recipients, self.priors, degraded=True, pushed=pushed)
        rows = state.snapshot.rows(ids)
        degraded = bool(self.degraded_reasons)
        return batch_features(state, ids, rows, recipients, self.priors, degraded=degraded, pushed=pushed)
