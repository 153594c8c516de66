"""`POST /v1/events`: a batch of contract rows appended durably to the raw store, then its latest values pushed
to the online store so that the next decision, on every replica, sees them.

The order is what makes it safe to stop at any moment: the rows are on disk (`sendwise.ingest.appended`)
before anything else happens, so a service stopped between the append and the push loses nothing (the next
ingest merges the rows, the next feature build and `sendwise materialize` compute the same latest values from
them); and the answer (202) comes only after both. A push that fails leaves the rows appended and the answer
says `degraded`, with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sendwise.ingest.appended import CheckedEvents, EventsError, append_events, check_events
from sendwise.settings import Settings
from serving.http_app import MAX_DETAILS
from serving.schemas import ErrorAnswer, EventsRequest, EventsResponse, FieldError

logger = logging.getLogger(__name__)

Push = Callable[[CheckedEvents], int]
"""Pushes a checked batch's latest values to the online store; how many customers it updated."""

ONLINE_NOT_UPDATED = (
    "the events were appended, but the online store could not be updated: decisions see them after the next "
    "`sendwise materialize`"
)


def receive_events(settings: Settings, request: EventsRequest, push: Push | None) -> EventsResponse:
    """Check the rows (`EventsError` naming every bad row: nothing appended), append them, push them."""
    checked = check_events(request.events, settings)
    appended = append_events(settings, checked)
    if checked.forgotten:
        logger.info("POST /v1/events: %d rows of erased customers refused", checked.forgotten)
    answer = EventsResponse(received=len(request.events), appended=appended, forgotten=checked.forgotten, pushed=0)
    if push is None or not checked.rows:
        return answer
    try:
        answer.pushed = push(checked)
    except Exception:
        logger.exception("pushing appended events to the online store failed")
        answer.status, answer.reasons = "degraded", [ONLINE_NOT_UPDATED]
    return answer


def events_error_answer(error: EventsError) -> ErrorAnswer:
    """The 422 answer to a batch with bad rows: every bad row's field, by its position in `events`."""
    details = [FieldError(field=p.name, message=p.message) for p in error.problems[:MAX_DETAILS]]
    return ErrorAnswer(error="invalid events", message=str(error), details=details)
