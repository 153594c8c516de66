"""What keeping past decisions in Redis adds to a 10,000-recipient decide (`serving.history_store`), on a local
`redis-server` of its own: logging a batch with and without writing it to Redis, and the reads a frequency cap
and a no-repeat rule make for the batch's customers. Prints the medians; asserts nothing.

    uv run --no-sync python -m bench.shared_history [--customers 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

from sendwise.settings import Settings
from serving.decision_log import DecisionLog, new_decision_ids
from serving.history_store import SharedHistory

FACTS = {"template": "promotional", "modules": ["hero_offer", "category_picks"], "open_probability": 0.3}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _median_ms(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(customers: int, repeats: int, url: str, home: Path) -> dict[str, float]:
    settings = Settings(home=home, online_store="redis", redis_url=url)
    shared = SharedHistory(settings)
    start = datetime(2026, 11, 2, 7, tzinfo=UTC)
    ids = [f"c-{i:06d}" for i in range(customers)]
    send_at = start.strftime("%Y-%m-%dT%H:%M:%SZ")
    times = {send_at: start.isoformat()}

    def batch() -> list[dict[str, object]]:
        return [
            {"decision_id": d, "customer_id": c, "send": True, "send_at": send_at, "explore": False,
             "propensity": 1.0, "holdout": False, "reasons": []}
            for d, c in zip(new_decision_ids(customers), ids, strict=True)
        ]  # fmt: skip

    offers = [["of-1", "of-2", "of-3"]] * customers
    facts = [FACTS] * customers

    def log_only() -> None:
        log = DecisionLog(per_process=True, indexed=False)
        log.append(settings.decisions_dir, batch(), offers, offers, {}, {}, times, facts)

    def log_and_redis() -> None:
        log = DecisionLog(per_process=True, indexed=False)
        log.append(settings.decisions_dir, batch(), offers, offers, {}, {}, times, facts, sink=shared.record)

    found = {
        "log a batch (ms)": _median_ms(log_only, repeats),
        "log a batch and write it to Redis (ms)": _median_ms(log_and_redis, repeats),
    }
    later = start + timedelta(days=3)
    found["frequency-cap reads for the batch (ms)"] = _median_ms(lambda: shared.sends_before(ids, later, 7), repeats)
    found["no-repeat reads for the batch (ms)"] = _median_ms(
        lambda: shared.offers_shown_before(ids, later, 14), repeats
    )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (make redis installs Debian's package)")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="sendwise-bench-redis-") as folder:
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder],
            stdout=subprocess.DEVNULL,
        )
        try:
            url = f"redis://127.0.0.1:{port}/0"
            for _ in range(200):
                try:
                    redis.Redis.from_url(url).ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            found = measure(args.customers, args.repeats, url, Path(folder) / "home")
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(f"{args.customers:,} recipients, median of {args.repeats}:")
    for name, value in found.items():
        print(f"  {name:<45} {value:8.1f}")


if __name__ == "__main__":
    main()
