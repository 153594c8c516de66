"""What a benchmark run measures and how often: the full sizes, or a quick run's smaller ones."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

SECTIONS = ("inprocess", "http", "memory", "explain", "soak", "redis")
"""`inprocess` is benchmarks 1 and 2 (decisions per second and the model floor), `http` is 3, `memory` is 4,
`explain` is 5 (explanations per recipient), `soak` is 6 (half the throughput held for minutes), `redis` is 7
(3 and 4 with the online features in Redis, beside the in-memory figures of the same run)."""

ISSUE_WORLD_CUSTOMERS = 100_000
ISSUE_ONLINE_CUSTOMERS = 1_000_000
DEFAULT_CACHE = Path("/tmp/sendwise-bench")


@dataclass(frozen=True)
class Plan:
    """Sizes and repetitions of one run.

    The world is simulated over `days` only: decide-time cost depends on how many customers there are and how
    many offers each is scored on, hardly on how much history built their features, and a shorter history
    keeps a cold build of the 100,000-customer home within minutes.
    """

    cache: Path = DEFAULT_CACHE
    customers: int = ISSUE_WORLD_CUSTOMERS
    days: int = 30
    seed: int = 0
    min_offers: int = 12
    online_customers: int = ISSUE_ONLINE_CUSTOMERS
    batch_sizes: tuple[int, ...] = (1, 100, 10_000)
    repeats: tuple[int, ...] = (50, 20, 9)
    """Timed decide calls per batch size (the median is reported)."""
    floor_repeats: int = 5
    bulk_recipients: int = 100_000
    """How many of the home's emailable customers the bulk path (`sendwise decide`) decides, file to file."""
    http_batch_calls: int = 10
    single_seconds: float = 20.0
    """How long each single-recipient load runs (after a short warm-up)."""
    concurrencies: tuple[int, ...] = (1, 8)
    explain_calls: int = 300
    """Timed `Engine.explain` calls per model (the median is reported)."""
    explain_batches: int = 7
    """Pairs of 1,000-recipient decides, with and without `explain` (the medians are compared)."""
    soak_probe_seconds: float = 10.0
    """How long the soak's throughput is measured (closed loop) before it is held at half of it."""
    soak_warmup_seconds: float = 30.0
    soak_seconds: float = 600.0
    """How long the soak holds half the throughput (after its warm-up)."""
    sections: tuple[str, ...] = SECTIONS
    rebuild: bool = False
    stale_ok: bool = False
    """Reuse a cached home even when the code that builds homes changed since (faster, maybe wrong)."""
    quick: bool = False

    @classmethod
    def quick_run(cls, **overrides: object) -> Plan:
        """A smaller world, a smaller online store and fewer repetitions: minutes, for trying a change."""
        quick = cls(
            customers=20_000,
            online_customers=200_000,
            repeats=(10, 3, 3),
            floor_repeats=2,
            bulk_recipients=20_000,
            http_batch_calls=3,
            single_seconds=5.0,
            explain_calls=100,
            explain_batches=3,
            soak_probe_seconds=5.0,
            soak_warmup_seconds=10.0,
            soak_seconds=60.0,
            quick=True,
        )
        return replace(quick, **overrides)  # type: ignore[arg-type]

    @property
    def floor_recipients(self) -> int:
        """The floor is measured on the largest batch, so that the ratio compares like with like."""
        return max(self.batch_sizes)

    def repeats_for(self, batch_size: int) -> int:
        return self.repeats[self.batch_sizes.index(batch_size)]

    @property
    def world_name(self) -> str:
        return f"{self.customers}c-{self.days}d-s{self.seed}-o{self.min_offers}"
