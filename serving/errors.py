"""What a request can ask that the engine cannot answer, as exceptions the HTTP layer answers with a status.

Each carries the status, a short error and the request field it concerns; its message is the sentence the
client reads (`serving.http_app.error_answer`). Any other exception is a bug: a 500 whose details stay in
the server's log.
"""

from __future__ import annotations

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
