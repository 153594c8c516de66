"""Small decide requests that arrive together are decided in one engine call, and answered each their own."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import orjson
import pytest

from serving.coalesce import DecideCoalescer, mergeable
from serving.schemas import Constraints, DecideRequest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class SlowEngine:
    """`decide_payload` that takes a while, as the engine does, and records each call's recipients."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def decide_payload(self, request: DecideRequest) -> dict[str, Any]:
        ids = [r.customer_id for r in request.recipients]
        with self.lock:
            self.calls.append(ids)
        time.sleep(self.seconds)
        if "breaks-the-engine" in ids:
            raise RuntimeError("the engine failed on purpose")
        topic = request.campaign.topic
        return {
            "model_versions": {"open_propensity": "3"},
            "status": "ok",
            "decisions": [{"customer_id": i, "topic": topic, "position": k} for k, i in enumerate(ids)],
        }


def _request(*ids: str, topic: str = "outdoor", **extra: Any) -> DecideRequest:
    return DecideRequest.model_validate(
        {"recipients": [{"customer_id": i} for i in ids], "campaign": {"topic": topic}, **extra}
    )


async def _decide_all(coalescer: DecideCoalescer, requests: list[DecideRequest]) -> list[Any]:
    """The first request, then, while the engine decides it, all the others at once, as concurrent clients
    send them; each answer decoded, or the exception raised."""
    first = asyncio.ensure_future(coalescer.decide(requests[0]))
    await asyncio.sleep(0.01)  # the engine is busy with the first
    answers = await asyncio.gather(first, *(coalescer.decide(r) for r in requests[1:]), return_exceptions=True)
    return [a if isinstance(a, BaseException) else orjson.loads(a) for a in answers]


async def test_requests_that_arrive_together_are_decided_in_one_call_each_answered_its_own() -> None:
    engine = SlowEngine()
    coalescer = DecideCoalescer(engine.decide_payload)
    requests = [_request(f"c-{k}a", f"c-{k}b") for k in range(10)]

    answers = await _decide_all(coalescer, requests)

    # the first is decided at once; the nine that arrived meanwhile wait for it, then go in one call
    assert engine.calls == [["c-0a", "c-0b"], [f"c-{k}{s}" for k in range(1, 10) for s in "ab"]]
    for k, answer in enumerate(answers):
        assert answer["model_versions"] == {"open_propensity": "3"} and answer["status"] == "ok"
        assert [d["customer_id"] for d in answer["decisions"]] == [f"c-{k}a", f"c-{k}b"]
    assert answers[3]["decisions"][1]["position"] == 5  # its place in the merged call


async def test_only_requests_that_ask_the_same_are_merged() -> None:
    engine = SlowEngine()
    coalescer = DecideCoalescer(engine.decide_payload)
    requests = [_request("first"), *(_request(f"c-{k}", topic="outdoor" if k % 2 else "books") for k in range(6))]

    answers = await _decide_all(coalescer, requests)

    assert engine.calls == [["first"], ["c-0", "c-2", "c-4"], ["c-1", "c-3", "c-5"]]
    assert [a["decisions"][0]["topic"] for a in answers[1:]] == ["books", "outdoor"] * 3


async def test_a_batch_rule_or_a_large_request_is_decided_alone() -> None:
    engine = SlowEngine()
    coalescer = DecideCoalescer(engine.decide_payload, max_recipients=4)
    spread = _request("spread", constraints={"max_share_per_hour": 0.5})
    large = _request(*(f"big-{k}" for k in range(5)))
    capped = _request("capped", constraints={"frequency_cap": {"emails": 2, "days": 7}})
    requests = [_request("first"), spread, _request("a"), large, _request("b"), capped, _request("c")]

    answers = await _decide_all(coalescer, requests)

    assert not coalescer.takes(spread) and not coalescer.takes(large) and coalescer.takes(capped)
    assert engine.calls == [["first"], ["spread"], ["a", "b", "c"], [f"big-{k}" for k in range(5)], ["capped"]]
    assert [d["customer_id"] for d in answers[3]["decisions"]] == [f"big-{k}" for k in range(5)]


async def test_merged_calls_stop_growing_at_the_limit() -> None:
    engine = SlowEngine()
    coalescer = DecideCoalescer(engine.decide_payload, max_recipients=5)
    requests = [_request("first"), *(_request(f"c-{k}a", f"c-{k}b") for k in range(5))]

    await _decide_all(coalescer, requests)

    assert [len(ids) for ids in engine.calls] == [1, 4, 4, 2]


async def test_a_request_that_breaks_the_engine_fails_alone() -> None:
    engine = SlowEngine(seconds=0.02)
    coalescer = DecideCoalescer(engine.decide_payload)
    requests = [_request("first"), _request("a"), _request("breaks-the-engine"), _request("b")]

    answers = await _decide_all(coalescer, requests)

    assert isinstance(answers[2], RuntimeError) and str(answers[2]) == "the engine failed on purpose"
    assert [a["decisions"][0]["customer_id"] for a in (answers[0], answers[1], answers[3])] == ["first", "a", "b"]
    # the merged call failed, then each of its requests was decided alone
    assert engine.calls[1] == ["a", "breaks-the-engine", "b"]
    assert engine.calls[2:] == [["a"], ["breaks-the-engine"], ["b"]]


async def test_the_coalescer_keeps_answering_after_a_failure() -> None:
    engine = SlowEngine(seconds=0.0)
    coalescer = DecideCoalescer(engine.decide_payload)

    with pytest.raises(RuntimeError, match="failed on purpose"):
        await coalescer.decide(_request("breaks-the-engine"))
    answer = orjson.loads(await coalescer.decide(_request("after")))

    assert answer["decisions"][0]["customer_id"] == "after"


def test_constraints_per_recipient_keep_a_request_mergeable() -> None:
    rules = Constraints.model_validate(
        {"quiet_hours": {"start": 22, "end": 7}, "frequency_cap": {"emails": 2, "days": 7}, "no_repeat_offer_days": 14}
    )

    assert mergeable(_request("a", constraints=rules.model_dump(exclude_none=True)))
    assert not mergeable(_request("a", constraints={**rules.model_dump(exclude_none=True), "max_share_per_hour": 0.2}))


def test_a_request_with_explain_is_decided_alone() -> None:
    """Its explanations cost about a millisecond a recipient: merged calls run on the event loop."""
    assert mergeable(_request("a")) and not mergeable(_request("a", explain=True))
