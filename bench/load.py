"""A closed-loop HTTP load generator: `concurrency` clients, each sending its next request when the last returns.

Run by the HTTP benchmark in a process of its own (`python -m bench.load SPEC.json` prints a JSON result), so
that the CPU time it reports (`resource.getrusage` of its own process) is the load generator's and nothing
else's: on two cores it competes with the service, and the table shows how much.

Built on httpx's asyncio client (already a locked dependency). A latency is the time from sending a request
to having read the whole answer; parsing the answer is not part of it. The first answer of each run is parsed
and checked (one decision per recipient); a wrong answer counts as an error, like a non-200 or a timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import orjson

DECIDE = "/v1/decide"


@dataclass(frozen=True)
class Spec:
    """What to send: request bodies (one JSON per line, used in turn), how many clients, for how long."""

    url: str
    token: str
    bodies: str
    concurrency: int
    seconds: float | None = None
    requests: int | None = None
    warmup_seconds: float = 0.0
    warmup_requests: int = 0
    timeout_s: float = 600.0


@dataclass
class Outcome:
    """What a load run measured; `window` is the measured phase in `time.time()` seconds."""

    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    window: tuple[float, float] = (0.0, 0.0)

    def fail(self, what: str) -> None:
        self.errors += 1
        if len(self.error_examples) < 3:
            self.error_examples.append(what[:300])


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Work:
    """The bodies in turn, and when to stop: after `requests` requests, or at `deadline` (perf_counter)."""

    def __init__(self, bodies: list[bytes], requests: int | None, deadline: float | None) -> None:
        self._bodies: Iterator[bytes] = itertools.cycle(bodies)
        self._left = requests
        self._deadline = deadline

    def next_body(self) -> bytes | None:
        if self._deadline is not None and time.perf_counter() >= self._deadline:
            return None
        if self._left is not None:
            if self._left <= 0:
                return None
            self._left -= 1
        return next(self._bodies)


def _check(body: bytes, answer: bytes) -> str | None:
    """None when the answer has one decision per recipient of the request, else what is wrong."""
    try:
        expected = len(orjson.loads(body)["recipients"])
        got = len(orjson.loads(answer)["decisions"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as error:
        return f"unreadable answer: {error}"
    return None if got == expected else f"{got} decisions for {expected} recipients"


async def _client_loop(client: httpx.AsyncClient, work: _Work, outcome: Outcome, check_first: list[bool]) -> None:
    while (body := work.next_body()) is not None:
        began = time.perf_counter()
        try:
            answer = await client.post(DECIDE, content=body)
            elapsed = time.perf_counter() - began
        except httpx.HTTPError as error:
            outcome.fail(f"{type(error).__name__}: {error}")
            continue
        outcome.latencies_s.append(elapsed)
        if answer.status_code != 200:
            outcome.fail(f"HTTP {answer.status_code}: {answer.text[:200]}")
        elif check_first and check_first.pop():
            wrong = _check(body, answer.content)
            if wrong is not None:
                outcome.fail(wrong)


async def _phase(
    client: httpx.AsyncClient, spec: Spec, bodies: list[bytes], seconds: float | None, requests: int | None
) -> Outcome:
    deadline = None if seconds is None else time.perf_counter() + seconds
    work = _Work(bodies, requests, deadline)
    outcome = Outcome()
    check_first = [True]
    cpu, wall, at = _own_cpu_seconds(), time.perf_counter(), time.time()
    await asyncio.gather(*(_client_loop(client, work, outcome, check_first) for _ in range(spec.concurrency)))
    outcome.wall_s = time.perf_counter() - wall
    outcome.cpu_s = _own_cpu_seconds() - cpu
    outcome.window = (at, time.time())
    return outcome


async def run(spec: Spec) -> Outcome:
    """The warm-up (not reported), then the measured phase."""
    bodies = [line for line in Path(spec.bodies).read_bytes().splitlines() if line.strip()]
    if not bodies:
        raise ValueError(f"{spec.bodies} has no request body (one JSON object per line expected)")
    limits = httpx.Limits(max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency)
    headers = {"Authorization": f"Bearer {spec.token}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=spec.url, headers=headers, timeout=spec.timeout_s, limits=limits) as client:
        if spec.warmup_seconds > 0 or spec.warmup_requests > 0:
            await _phase(client, spec, bodies, spec.warmup_seconds or None, spec.warmup_requests or None)
        return await _phase(client, spec, bodies, spec.seconds, spec.requests)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m bench.load SPEC.json")
    spec = Spec(**json.loads(Path(sys.argv[1]).read_text()))
    if (spec.seconds is None) == (spec.requests is None):
        raise SystemExit(f"{sys.argv[1]}: give exactly one of 'seconds' and 'requests'")
    outcome = asyncio.run(run(spec))
    sys.stdout.write(json.dumps(asdict(outcome)))


if __name__ == "__main__":
    main()
