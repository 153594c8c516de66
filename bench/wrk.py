"""wrk as the load generator for single-recipient calls: `concurrency` connections, closed loop.

The asyncio + httpx generator of `bench.load` needs about a millisecond of CPU per request: at a few hundred
requests a second it takes a whole core of the two, and against a service that answers at once it alone held
the p99 of 8 clients above 40 ms. wrk (C, one thread, Debian's `wrk`) costs a few percent of a core at the same
rate. `bench/wrk.lua` sends the bodies of a file in turn, checks every answer (a 200 with a decision in it) and
prints the counts and latency percentiles wrk measured. wrk's CPU is read from the kernel when it exits
(`RUSAGE_CHILDREN`), so that it shows beside the service's, as with the other load generator.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("wrk.lua")
PACED_SCRIPT = Path(__file__).with_name("wrk_paced.lua")
RESULT_PREFIX = "BENCH_RESULT "


@dataclass(frozen=True)
class WrkRun:
    """What one wrk run measured; `window` is the run in `time.time()` seconds."""

    requests: int
    p50_s: float
    p99_s: float
    errors: int
    error_example: str
    wall_s: float
    cpu_s: float
    window: tuple[float, float]


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: `apt-get install wrk` (`make bench` installs it)")
    return found


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(
    url: str, token: str, bodies: Path, path: str, concurrency: int, seconds: float, rate: float | None = None
) -> WrkRun:
    """`seconds` of POSTs to `url` + `path` from `concurrency` connections, each sending its next body when the
    last answer is read; with `rate`, on a fixed schedule of `rate` requests a second instead (at most one
    waiting per connection)."""
    command = [
        wrk_binary(),
        "--threads",
        "1",
        "--connections",
        str(concurrency),
        "--duration",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "--script",
        str(PACED_SCRIPT if rate else SCRIPT),
        url,
        "--",
        str(bodies),
        path,
        token,
        *([f"{rate:.3f}"] if rate else []),
    ]
    cpu, at = _children_cpu_s(), time.time()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    window = (at, time.time())
    cpu_s = _children_cpu_s() - cpu
    found = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if result.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({result.returncode}): {(result.stderr or result.stdout)[-2000:]}")
    measured = json.loads(found[-1].removeprefix(RESULT_PREFIX))
    return WrkRun(
        requests=int(measured["requests"]),
        p50_s=float(measured["p50_us"]) / 1e6,
        p99_s=float(measured["p99_us"]) / 1e6,
        errors=int(measured["socket_errors"]) + int(measured["bad_status"]) + int(measured["bad_body"]),
        error_example=str(measured["example"]),
        wall_s=float(measured["duration_us"]) / 1e6,
        cpu_s=cpu_s,
        window=window,
    )
