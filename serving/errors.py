"""What a request can ask that the engine cannot answer, as exceptions the HTTP layer answers with a status.

Each carries the status, a short error and the request field it concerns; its message is the sentence the
client reads (`serving.http_app.error_answer`). Any other exception is a bug: a 500 whose details stay in
the server's log.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar


class ServingError(Exception):
    """A request the engine cannot answer, for a reason the client can read and act on."""

    status: ClassVar[int] = 500
    error: ClassVar[str] = "cannot answer"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class UnknownCustomer(ServingError, LookupError):
    """A customer the online features do not have, where only a known customer can be answered."""

    status = 404
    error = "unknown customer"

    def __init__(self, customer_id: str) -> None:
        super().__init__(
            f"no customer {customer_id!r} in the online features: only a customer of the ingested data, "
            "materialized since, has a prediction of their own to explain",
            field="customer_id",
        )
        self.customer_id = customer_id


class NoChampion(ServingError, LookupError):
    """A model asked for that has no champion yet."""

    status = 503
    error = "model not trained"

    def __init__(self, model: str) -> None:
        super().__init__(f"no champion for {model} yet: run `sendwise pipeline --data DIR`", field="model")
        self.model = model


class NothingToExplain(ServingError, LookupError):
    """A prediction that cannot be made now (no eligible offer for the offer model)."""

    status = 404
    error = "nothing to explain"


class UnknownOffer(ServingError, LookupError):
    """An offer to explain that is not in the catalog, or not eligible when asked about."""

    status = 404
    error = "unknown offer"

    def __init__(self, offer_id: str, why: str | None = None) -> None:
        message = (
            f"offer {offer_id!r} {why}: only an offer /v1/decide could rank then has a prediction to explain"
            if why
            else f"no offer {offer_id!r} in the offers table: give the offer_id of one of the catalog's offers"
        )
        super().__init__(message, field="offer_id")
        self.offer_id = offer_id


class UnknownDecision(ServingError, LookupError):
    """A decision id that cannot be rendered: never made here, expired, or logged without what rendering needs."""

    status = 404
    error = "unknown decision"

    def __init__(
        self,
        decision_id: str,
        decided_at: datetime | None = None,
        keep_days: int | None = None,
        logged_without_facts: bool = False,
    ) -> None:
        if logged_without_facts:
            message = (
                f"decision {decision_id} was logged before decisions kept what rendering needs: decide again, or "
                "render by customer_id"
            )
        elif decided_at is not None:
            message = (
                f"decision {decision_id} expired: it was made {decided_at:%Y-%m-%d %H:%M} UTC and decisions can be "
                f"rendered for {keep_days} days (SENDWISE_RENDER_DAYS); decide again"
            )
        else:
            message = (
                f"no decision {decision_id} in this home's decision log: pass a decision_id that /v1/decide "
                "returned here"
            )
        super().__init__(message, field="decision_id")
        self.decision_id = decision_id


class PastDecisionsUnavailable(ServingError):
    """Render by id while the Redis that keeps past decisions cannot be reached: try again once it is back."""

    status = 503
    error = "past decisions unavailable"

    def __init__(self, where: str) -> None:
        super().__init__(
            f"the decision cannot be read now: the Redis that keeps past decisions ({where}) cannot be reached; "
            "try again once it is back",
            field="decision_id",
        )
