"""The decision logic behind the HTTP API: champions, online features, curves, offers, modules, renders.

`Engine` holds what is loaded once (boosters, the Feast store, the offers); every method is a plain function
of its request, so everything the service does can be tested without starting it.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import lightgbm as lgb
import numpy as np
import orjson
import pandas as pd
from feast import FeatureStore

from features.store import open_store
from features.transform import CustomerMatrix, OfferMatrix, customer_matrix, offer_design, open_design
from sendwise.raw import load_table
from sendwise.settings import Settings
from serving.modules import ModuleFacts, OfferFact, check_template, choose_modules
from serving.render import render_email
from serving.schemas import (
    DecideRequest,
    DecideResponse,
    Decision,
    Driver,
    ExplainRequest,
    ExplainResponse,
    OfferScore,
    Recipient,
    RenderedModule,
    RenderRequest,
    RenderResponse,
)
from training.registry import MODEL_NAMES, champion, connect

ONLINE_CHUNK = 1000
SAMPLE_FOR_POPULATION = 400
BLANK_ENGAGEMENT = (
    "n_emails",
    "n_human_opens",
    "n_clicks",
    "n_sessions",
    "n_purchases",
    "purchase_value",
    "sends_7d",
    "machine_open_share",
    "days_since_human_open",
    "days_since_session",
    "days_since_email",
)
PROFILE_COLUMNS = tuple(f"{s}_hours_{d}" for s in ("open", "click", "session") for d in ("weekday", "weekend"))
FALLBACK_OPEN_PROBABILITY = 0.2


@dataclass
class LoadedModel:
    version: str
    booster: lgb.Booster


@dataclass
class _Batch:
    """What one decide call computes for all its recipients at once."""

    start: datetime
    kind: str
    topic: str | None
    k_offers: int
    explore_share: float
    matrix: CustomerMatrix
    known: np.ndarray
    profiled: np.ndarray
    consent: np.ndarray
    eligible: np.ndarray
    curves: np.ndarray
    explore: np.ndarray
    explore_hour: np.ndarray
    offers: pd.DataFrame
    conversion: np.ndarray
    value: np.ndarray
    control: np.ndarray


@dataclass
class Population:
    """What an average known customer looks like to the models, for modules and reasons."""

    open_probability: float
    high_value_threshold: float


def _eligible_offers(offers: pd.DataFrame | None, at: datetime, offer_ids: list[str] | None) -> pd.DataFrame:
    """Offers in stock and inside their dates at `at` (and among `offer_ids` where given)."""
    if offers is None or offers.empty:
        return pd.DataFrame()
    keep = pd.Series(True, index=offers.index)
    if "inventory" in offers.columns:
        keep &= ~(offers["inventory"].fillna(1) <= 0)
    stamp = pd.Timestamp(at)
    if "starts_at" in offers.columns:
        keep &= offers["starts_at"].isna() | (offers["starts_at"] <= stamp)
    if "ends_at" in offers.columns:
        keep &= offers["ends_at"].isna() | (offers["ends_at"] > stamp)
    if offer_ids is not None:
        keep &= offers["offer_id"].isin(offer_ids)
    return offers[keep].reset_index(drop=True)


class Engine:
    """Champions and features, loaded once; decisions, renders and explanations per request."""

    def __init__(
        self,
        settings: Settings,
        store: FeatureStore | None,
        models: dict[str, LoadedModel],
        offers: pd.DataFrame | None,
        offer_features: pd.DataFrame | None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.models = models
        self.offers = offers
        self.offer_features = offer_features
        self.degraded_reasons: list[str] = []
        self._log_lock = threading.Lock()
        self._rng = np.random.default_rng()
        self._rng_lock = threading.Lock()
        self.population = Population(FALLBACK_OPEN_PROBABILITY, 1.0)
        if store is not None:
            self.population = self._measure_population()

    # --- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, settings: Settings) -> Engine:
        """The champions from MLflow, the Feast store and the offers of the home."""
        client = connect(settings)
        models: dict[str, LoadedModel] = {}
        for name in MODEL_NAMES:
            found = champion(client, name)
            if found is not None:
                models[name] = LoadedModel(version=found[0], booster=found[1])
        store = open_store(settings) if (settings.feast_dir / "registry.db").exists() else None
        offers = load_table(settings, "offers")
        offer_features = None
        if offers is not None and store is not None and len(offers):
            offer_features = (
                store.get_online_features(
                    features=[
                        f"offer_fv:{c}" for c in ("offer_kind", "offer_category", "discount_pct", "price", "margin")
                    ],
                    entity_rows=[{"offer_id": o} for o in offers["offer_id"]],
                )
                .to_df()
                .reset_index(drop=True)
            )
        return cls(settings, store, models, offers, offer_features)

    def model_versions(self) -> dict[str, str | None]:
        return {name: (self.models[name].version if name in self.models else None) for name in MODEL_NAMES}

    def status(self) -> dict[str, object]:
        reasons = list(self.degraded_reasons)
        for name in MODEL_NAMES:
            if name not in self.models:
                reasons.append(f"no champion for {name}: answers use population priors")
        if self.store is None:
            reasons.append("no feature store in the home: run `sendwise pipeline --data DIR`")
        return {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "models": self.model_versions(),
        }

    # --- features --------------------------------------------------------------------------------
    def _online_rows(self, customer_ids: list[str]) -> tuple[pd.DataFrame, bool]:
        """Online feature rows in request order; (rows, degraded)."""
        if self.store is None:
            return pd.DataFrame({"customer_id": customer_ids}), True
        service = self.store.get_feature_service("open_propensity_v1")
        parts = []
        try:
            for start in range(0, len(customer_ids), ONLINE_CHUNK):
                chunk = customer_ids[start : start + ONLINE_CHUNK]
                response = self.store.get_online_features(
                    features=service, entity_rows=[{"customer_id": c} for c in chunk]
                )
                parts.append(pd.DataFrame(response.to_dict()))
        except Exception as error:  # noqa: BLE001 - the online store being down degrades, never fails
            self.degraded_reasons = [f"online store unavailable: {type(error).__name__}: {error}"]
            return pd.DataFrame({"customer_id": customer_ids}), True
        self.degraded_reasons = []
        return pd.concat(parts, ignore_index=True), False

    def _customer_rows(self, recipients: list[Recipient]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, bool]:
        """Feature rows with cold-start context filled in; (rows, known, profiled, degraded)."""
        ids = [r.customer_id for r in recipients]
        rows, degraded = self._online_rows(ids)
        for column in (
            "timezone",
            "interests",
            "consent_email",
            "email_eligible",
            "profiling_allowed",
            "country",
        ):
            if column not in rows.columns:
                rows[column] = None
        known = rows["timezone"].notna().to_numpy()
        profiled = known & (pd.to_numeric(rows["profiling_allowed"], errors="coerce").fillna(0) > 0).to_numpy()
        for i, recipient in enumerate(recipients):
            if known[i]:
                continue
            rows.at[i, "timezone"] = recipient.timezone or "UTC"
            rows.at[i, "interests"] = "|".join(recipient.interests)
            rows.at[i, "country"] = recipient.country
            for name, value in recipient.attributes.items():
                if name not in rows.columns:
                    continue
                rows.at[i, name] = value
        blank = ~profiled
        if blank.any():
            for column in BLANK_ENGAGEMENT:
                if column in rows.columns:
                    rows.loc[blank, column] = np.nan
            for column in (*PROFILE_COLUMNS, "category_views", "category_names"):
                if column in rows.columns:
                    rows[column] = rows[column].astype(object)
                    for i in np.flatnonzero(blank):
                        rows.at[i, column] = None
        return rows, known, profiled, degraded

    # --- predictions -----------------------------------------------------------------------------
    def _curves(self, matrix: CustomerMatrix, start: datetime, hours: int, kind: str, topic: str | None) -> np.ndarray:
        n = len(matrix)
        model = self.models.get("send_time") or self.models.get("open_propensity")
        if model is None or n == 0:
            return np.full((n, hours), FALLBACK_OPEN_PROBABILITY)
        rows = np.repeat(np.arange(n), hours)
        stamps = pd.date_range(start, periods=hours, freq="h", tz=UTC)
        times = pd.Series(np.tile(stamps.tz_convert(None).to_numpy(), n)).dt.tz_localize("UTC")
        design = open_design(matrix, rows, times, np.full(len(rows), kind), np.full(len(rows), topic, dtype=object))
        prediction = model.booster.predict(design[model.booster.feature_name()])
        return np.clip(prediction.reshape(n, hours), 0.0, 1.0)

    def _offer_scores(
        self, matrix: CustomerMatrix, at: datetime, offer_ids: list[str] | None
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """(eligible offers, conversion probability [customers, offers])."""
        eligible = _eligible_offers(self.offers, at, offer_ids)
        model = self.models.get("next_best_offer")
        if eligible.empty or model is None or self.offer_features is None:
            return pd.DataFrame(), np.zeros((len(matrix), 0))
        features = self.offer_features.set_index("offer_id").loc[eligible["offer_id"]].reset_index()
        offers = OfferMatrix.from_rows(features)
        n, m = len(matrix), len(offers)
        design = offer_design(matrix, np.repeat(np.arange(n), m), offers, np.tile(np.arange(m), n))
        probability = model.booster.predict(design[model.booster.feature_name()]).reshape(n, m)
        return eligible.assign(margin=offers.margin), np.clip(probability, 0.0, 1.0)

    def _measure_population(self) -> Population:
        """Mean best-hour open probability and the median best offer value of a sample of known customers."""
        customers = load_table(self.settings, "customers")
        if customers is None or customers.empty or "open_propensity" not in self.models:
            return Population(FALLBACK_OPEN_PROBABILITY, 1.0)
        sample = customers["customer_id"].sample(
            n=min(SAMPLE_FOR_POPULATION, len(customers)), random_state=self.settings.seed
        )
        rows, _, _, _ = self._customer_rows([Recipient(customer_id=c) for c in sample])
        matrix = customer_matrix(rows)
        start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        curves = self._curves(matrix, start, 24, "promotional", None)
        _, probability = self._offer_scores(matrix, start, None)
        threshold = 1.0
        eligible = _eligible_offers(self.offers, start, None)
        if probability.size:
            values = probability * eligible["margin"].fillna(1.0).to_numpy()[None, :]
            threshold = float(np.median(values.max(axis=1)))
        return Population(float(curves.max(axis=1).mean()), threshold)

    # --- decisions -------------------------------------------------------------------------------
    def decide(self, request: DecideRequest) -> DecideResponse:
        start = request.resolved_window_start()
        kind, topic = request.campaign.kind, request.campaign.topic
        explore_share = self.settings.explore_share if request.explore_share is None else request.explore_share
        rows, known, profiled, degraded = self._customer_rows(request.recipients)
        matrix = customer_matrix(rows)
        offers, conversion = self._offer_scores(matrix, start, request.offer_ids)
        margins = offers["margin"].fillna(1.0).to_numpy() if len(offers) else np.zeros(0)
        kinds = offers["kind"].to_numpy() if len(offers) else np.zeros(0, dtype=object)
        n = len(request.recipients)
        with self._rng_lock:
            explore_draw = self._rng.random(n)
            explore_hour = self._rng.integers(0, request.window_hours, n)
        batch = _Batch(
            start=start,
            kind=kind,
            topic=topic,
            k_offers=request.k_offers,
            explore_share=explore_share,
            matrix=matrix,
            known=known,
            profiled=profiled,
            consent=pd.to_numeric(rows["consent_email"], errors="coerce").fillna(0).to_numpy() > 0,
            eligible=pd.to_numeric(rows["email_eligible"], errors="coerce").fillna(0).to_numpy() > 0,
            curves=self._curves(matrix, start, request.window_hours, kind, topic),
            explore=explore_draw < explore_share,
            explore_hour=explore_hour,
            offers=offers,
            conversion=conversion,
            value=conversion * margins[None, :],
            control=np.flatnonzero(kinds == "control"),
        )
        decisions = [self._decision(batch, i, r) for i, r in enumerate(request.recipients)]
        self._log_decisions(decisions, request)
        return DecideResponse(
            model_versions=self.model_versions(), status="degraded" if degraded else "ok", decisions=decisions
        )

    def _decision(self, batch: _Batch, i: int, recipient: Recipient) -> Decision:
        decision_id = f"d-{uuid.uuid4().hex}"
        emails = int(np.nan_to_num(batch.matrix.scalars["n_emails"].iloc[i], nan=0.0))
        curve = batch.curves[i]
        known = bool(batch.known[i])
        if known and not batch.consent[i]:
            return Decision(
                customer_id=recipient.customer_id,
                decision_id=decision_id,
                send=False,
                history_emails=emails,
                reasons=["no email consent: never scheduled, rendered or offered anything"],
            )
        if known and not batch.eligible[i]:
            return Decision(
                customer_id=recipient.customer_id,
                decision_id=decision_id,
                send=False,
                hourly_open_probability=[float(x) for x in curve],
                history_emails=emails,
                reasons=["no longer eligible for sends: unsubscribed, complained or hard-bounced"],
            )
        reasons = []
        if not known:
            reasons.append(
                "unknown customer: predictions pooled from customers with no history"
                + (f" in {recipient.timezone}" if recipient.timezone else " (no time zone given: UTC assumed)")
            )
        elif not batch.profiled[i]:
            reasons.append("profiling consent not given: population-level predictions only")
        else:
            reasons.append(f"prediction rests on {emails} past emails of this customer")
        if "open_propensity" not in self.models and "send_time" not in self.models:
            reasons.append("no open model trained yet: a flat population prior, every hour alike")
        if batch.offers.empty and self.offers is not None and len(self.offers) and "next_best_offer" not in self.models:
            reasons.append("no next-best-offer model trained yet: no offer chosen")
        best = int(np.argmax(curve))
        hours = len(curve)
        share = batch.explore_share
        if batch.explore[i]:
            chosen = int(batch.explore_hour[i])
            propensity = share / hours + ((1 - share) if chosen == best else 0.0)
            reasons.append(f"exploration: a random hour for {share:.0%} of recipients, to keep learning")
        else:
            chosen = best
            propensity = (1 - share) + share / hours
            reasons.append(
                f"best hour of the window: {curve[best]:.1%} open probability vs {curve.mean():.1%} on average"
            )
        ranked, facts_offers = self._rank_offers(batch, i)
        if ranked and ranked[0].kind == "control":
            reasons.append("no offer adds value over sending none for this customer")
        facts = self._facts(
            i,
            recipient,
            batch.matrix,
            float(curve[chosen]),
            facts_offers,
            batch.kind,
            batch.topic,
            not known,
            emails,
        )
        modules = [m.name for m in choose_modules(facts, "newsletter" if batch.kind == "newsletter" else "promotional")]
        return Decision(
            customer_id=recipient.customer_id,
            decision_id=decision_id,
            send=True,
            send_at=batch.start + timedelta(hours=chosen),
            open_probability=float(curve[chosen]),
            hourly_open_probability=[float(x) for x in curve],
            explore=bool(batch.explore[i]),
            propensity=float(propensity),
            offers=ranked,
            modules=modules,
            cold_start=not known,
            history_emails=emails,
            reasons=reasons,
        )

    @staticmethod
    def _rank_offers(batch: _Batch, i: int) -> tuple[list[OfferScore], list[OfferFact]]:
        """The top offers for row i: by value over the control arm where there is one, else by value."""
        if batch.offers.empty:
            return [], []
        value, conversion = batch.value[i], batch.conversion[i]
        baseline = float(value[batch.control].max()) if len(batch.control) else None
        incremental = value - baseline if baseline is not None else None
        order = np.argsort(-(incremental if incremental is not None else value), kind="stable")
        ranked: list[OfferScore] = []
        facts: list[OfferFact] = []
        for j in order[: max(batch.k_offers, 0)]:
            offer = batch.offers.iloc[j]
            score = OfferScore(
                offer_id=str(offer["offer_id"]),
                kind=str(offer["kind"]),
                conversion_probability=float(conversion[j]),
                expected_value=float(value[j]),
                incremental_value=None if incremental is None else float(incremental[j]),
            )
            ranked.append(score)
            category, discount = offer.get("category"), offer.get("discount_pct")
            facts.append(
                OfferFact(
                    **score.model_dump(),
                    category=None if pd.isna(category) else str(category),
                    discount_pct=None if pd.isna(discount) else float(discount),
                )
            )
        return ranked, facts

    def _facts(
        self,
        i: int,
        recipient: Recipient,
        matrix: CustomerMatrix,
        open_probability: float,
        offers: list[OfferFact],
        kind: str,
        topic: str | None,
        cold: bool,
        emails: int,
    ) -> ModuleFacts:
        views = matrix.category_views[i]
        total = float(views.sum()) if len(views) else 0.0
        affinity = (
            {n: float(v) / total for n, v in zip(matrix.category_names[i], views, strict=False) if v > 0}
            if total > 0
            else {}
        )
        return ModuleFacts(
            customer_id=recipient.customer_id,
            campaign_kind=kind,
            campaign_topic=topic,
            open_probability=open_probability,
            population_open_probability=self.population.open_probability,
            offers=offers,
            high_value_threshold=max(self.population.high_value_threshold, 0.0),
            category_affinity=affinity,
            interests=sorted(matrix.interests[i]),
            cold_start=cold,
            history_emails=emails,
        )

    def _log_decisions(self, decisions: list[Decision], request: DecideRequest) -> None:
        """Append every decision (with its exploration flag and propensity) to the day's decision log."""
        now = datetime.now(UTC)
        self.settings.decisions_dir.mkdir(parents=True, exist_ok=True)
        path = self.settings.decisions_dir / f"{now:%Y-%m-%d}.jsonl"
        lines = b"".join(
            orjson.dumps(
                {
                    "decision_id": d.decision_id,
                    "customer_id": d.customer_id,
                    "decided_at": now.isoformat(),
                    "campaign": request.campaign.model_dump(),
                    "send": d.send,
                    "send_at": d.send_at.isoformat() if d.send_at else None,
                    "explore": d.explore,
                    "propensity": d.propensity,
                    "offer_ids": [o.offer_id for o in d.offers],
                    "model_versions": self.model_versions(),
                }
            )
            + b"\n"
            for d in decisions
        )
        with self._log_lock, path.open("ab") as handle:
            handle.write(lines)

    # --- render and explain ----------------------------------------------------------------------
    def render(self, request: RenderRequest) -> RenderResponse:
        template = check_template(request.template)
        recipient = request.recipient or Recipient(customer_id=request.customer_id)
        if recipient.customer_id != request.customer_id:
            recipient = recipient.model_copy(update={"customer_id": request.customer_id})
        decision = self.decide(DecideRequest(recipients=[recipient], campaign=request.campaign)).decisions[0]
        if not decision.send:
            return RenderResponse(
                customer_id=request.customer_id,
                template=template,
                send=False,
                subject=None,
                html=None,
                text=None,
                modules=[],
                reasons=decision.reasons,
            )
        rows, known, _, _ = self._customer_rows([recipient])
        matrix = customer_matrix(rows)
        offers = self._offer_facts(decision)
        facts = self._facts(
            0,
            recipient,
            matrix,
            decision.open_probability or 0.0,
            offers,
            request.campaign.kind,
            request.campaign.topic,
            not bool(known[0]),
            decision.history_emails,
        )
        choices = choose_modules(facts, template)
        url = request.unsubscribe_url or f"https://example.invalid/unsubscribe?customer={request.customer_id}"
        email = render_email(template, facts, choices, unsubscribe_url=url, offers_catalog=self._catalog())
        return RenderResponse(
            customer_id=request.customer_id,
            template=template,
            send=True,
            subject=email.subject,
            html=email.html,
            text=email.text,
            modules=[RenderedModule(name=m.name, reason=m.reason) for m in email.modules],
            reasons=decision.reasons,
        )

    def _offer_facts(self, decision: Decision) -> list[OfferFact]:
        catalog = self._catalog()
        return [
            OfferFact(
                **o.model_dump(),
                category=catalog.get(o.offer_id, {}).get("category"),
                discount_pct=catalog.get(o.offer_id, {}).get("discount_pct"),
            )
            for o in decision.offers
        ]

    def _catalog(self) -> dict[str, dict[str, object]]:
        if self.offers is None:
            return {}
        catalog = {}
        for row in self.offers.to_dict("records"):
            catalog[str(row["offer_id"])] = {
                k: (None if pd.isna(v) else v) for k, v in row.items() if not isinstance(v, list)
            }
        return catalog

    def explain(self, request: ExplainRequest) -> ExplainResponse:
        from training.explain import explain_rows

        recipient = Recipient(customer_id=request.customer_id)
        rows, _, _, _ = self._customer_rows([recipient])
        matrix = customer_matrix(rows)
        name = request.model
        model = self.models.get(name)
        if model is None:
            raise LookupError(f"no champion for {name} yet: run `sendwise pipeline --data DIR`")
        start = request_start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        if name == "next_best_offer":
            offers, _ = self._offer_scores(matrix, start, None)
            if offers.empty:
                raise LookupError("no eligible offers to explain")
            features = self.offer_features.set_index("offer_id").loc[offers["offer_id"]].reset_index()
            design = offer_design(
                matrix,
                np.zeros(len(offers), dtype=np.int64),
                OfferMatrix.from_rows(features),
                np.arange(len(offers)),
            )
        else:
            curve = self._curves(matrix, request_start, 24, request.campaign.kind, request.campaign.topic)[0]
            best = request_start + timedelta(hours=int(np.argmax(curve)))
            design = open_design(
                matrix,
                np.zeros(1, dtype=np.int64),
                pd.Series([pd.Timestamp(best)]),
                np.array([request.campaign.kind]),
                np.array([request.campaign.topic], dtype=object),
            )
        design = design[model.booster.feature_name()]
        prediction = model.booster.predict(design)
        row = int(np.argmax(prediction))
        base, drivers = explain_rows(model.booster, design.iloc[[row]], top=request.top)
        return ExplainResponse(
            customer_id=request.customer_id,
            model=name,
            model_version=model.version,
            prediction=float(prediction[row]),
            base_value=base,
            drivers=[Driver(**d) for d in drivers[0]],
        )
