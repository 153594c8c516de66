"""Small `/v1/decide` requests that arrive together are decided together.

A triggered email asks for one recipient. Deciding one costs a few milliseconds, nearly all of it fixed per call
(building the design, one booster call per model, the decision log), and deciding eight costs about the same.
So the service does not decide small requests one by one: while the engine decides, the small requests that
arrive wait, and the next call decides every waiting request that asks the same question (the same campaign,
window, offers and constraints: everything but the recipients) as one batch. Each client gets the decisions of
its own recipients, in its own order, with the answer's `model_versions` and `status`.

The calls run on the event loop itself, not in a worker thread. A merged call of up to 256 recipients takes a
few milliseconds; handing it to a thread cost more than that in the two threads' contention for the
interpreter lock (at 8 clients: 880 requests a second in threads, 1,850 on the loop, p99 15 -> 7 ms, on the
20,000-customer bench home). While a call runs, the requests that arrive wait in their sockets; before the next
call the loop is given `GATHER_YIELDS` turns to read them, so that they join it. Health checks wait at most
one call; large requests are decided in worker threads by the service, never here.

- Only requests whose every rule is per recipient are merged. `max_share_per_hour` limits what one hour gets of
  *a batch*, so a request with it is decided on its own, as are large requests (they are batches already).
- A request with `explain` is not merged either: explaining a recipient costs about a millisecond, a merged
  call of them would hold the event loop for a quarter of a second; the service decides it in a worker
  thread.
- A merged call that fails is decided again request by request, so that a request that breaks the engine
  fails alone (a 500 for that client) and the others are answered.
- Exploration draws and decision ids are per recipient, so a merged decision is one the request could have got
  alone; each merged call appends the decision log once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from serving.schemas import DecideRequest

logger = logging.getLogger(__name__)

MAX_MERGED_RECIPIENTS = 256
"""A request with more recipients than this is decided on its own, and merged calls stop growing here."""
GATHER_YIELDS = 3
"""Turns of the event loop before a merged call: a request read from its socket takes a few awaits through the
middlewares to reach the queue (measured: 3 gave the largest calls and the lowest p99; 0 halved the rate)."""

Payload = dict[str, Any]


def mergeable(request: DecideRequest, max_recipients: int = MAX_MERGED_RECIPIENTS) -> bool:
    """A small request whose rules are all per recipient, and that asks for no explanations."""
    small = len(request.recipients) <= max_recipients
    per_recipient = request.constraints is None or request.constraints.max_share_per_hour is None
    return small and per_recipient and not request.explain


def question(request: DecideRequest) -> str:
    """What a request asks, its recipients aside: requests merge only when this is equal."""
    return request.model_dump_json(exclude={"recipients"})


@dataclass
class _Waiting:
    request: DecideRequest
    question: str
    answer: asyncio.Future[bytes] = field(repr=False)


class DecideCoalescer:
    """Decides small requests in merged calls of `decide_payload`, on the event loop.

    `decide_payload(request)` answers a request as plain data in the shape of `DecideResponse`: a dict with
    `model_versions`, `status` and one decision per recipient, in order (`Engine.decide_payload`).
    """

    def __init__(
        self,
        decide_payload: Callable[[DecideRequest], Payload],
        max_recipients: int = MAX_MERGED_RECIPIENTS,
    ) -> None:
        self._decide_payload = decide_payload
        self._max_recipients = max_recipients
        self._waiting: list[_Waiting] = []
        self._draining: asyncio.Task[None] | None = None

    def takes(self, request: DecideRequest) -> bool:
        """Whether `request` may be merged with others (any request is answered; others are decided alone)."""
        return mergeable(request, self._max_recipients)

    async def decide(self, request: DecideRequest) -> bytes:
        """The encoded answer to `request`, decided with whatever asks the same and waits with it."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(request, question(request), loop.create_future())
        self._waiting.append(waiting)
        if self._draining is None or self._draining.done():
            self._draining = loop.create_task(self._drain())
        return await waiting.answer

    async def _drain(self) -> None:
        try:
            while self._waiting:
                for _ in range(GATHER_YIELDS):  # let the requests already received reach the queue
                    await asyncio.sleep(0)
                self._answer(self._take_group())
        except asyncio.CancelledError:  # the server stops: so do the clients waiting
            for waiting in self._waiting:
                waiting.answer.cancel()
            raise

    def _answer(self, group: list[_Waiting]) -> None:
        try:
            answers = self._decide_group(group)
        except Exception as error:  # noqa: BLE001 - a single request's failure (merged ones fail alone): its 500
            answers = [error] * len(group)
        for waiting, answer in zip(group, answers, strict=True):
            if waiting.answer.done():  # the client went away
                continue
            if isinstance(answer, Exception):
                waiting.answer.set_exception(answer)
            else:
                waiting.answer.set_result(answer)

    def _take_group(self) -> list[_Waiting]:
        """The oldest waiting request, and every later one that asks the same, up to `max_recipients`."""
        first = self._waiting[0]
        group: list[_Waiting] = []
        rest: list[_Waiting] = []
        size = 0
        for waiting in self._waiting:
            fits = size + len(waiting.request.recipients) <= self._max_recipients or not group
            if waiting.question == first.question and fits and self.takes(waiting.request):
                group.append(waiting)
                size += len(waiting.request.recipients)
            else:
                rest.append(waiting)
        if not self.takes(first.request):  # only ever alone
            group, rest = [first], self._waiting[1:]
        self._waiting = rest
        return group

    def _decide_group(self, group: list[_Waiting]) -> list[bytes | Exception]:
        """One call for the whole group, or one per request if that one fails."""
        requests = [w.request for w in group]
        if len(requests) == 1:
            return [orjson.dumps(self._decide_payload(requests[0]))]
        merged = requests[0].model_copy(update={"recipients": [r for q in requests for r in q.recipients]})
        try:
            payload = self._decide_payload(merged)
        except Exception:
            logger.exception("a merged decide of %d requests failed; deciding them one by one", len(requests))
            return [self._answer_alone(q) for q in requests]
        decisions = payload["decisions"]
        answers: list[bytes | Exception] = []
        at = 0
        for q in requests:
            part = decisions[at : at + len(q.recipients)]
            at += len(q.recipients)
            answers.append(orjson.dumps({**payload, "decisions": part}))
        return answers

    def _answer_alone(self, request: DecideRequest) -> bytes | Exception:
        try:
            return orjson.dumps(self._decide_payload(request))
        except Exception as error:  # noqa: BLE001 - this client's 500, the others are answered
            return error
