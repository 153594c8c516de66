"""What a benchmark run measures and how often: the full sizes, or a quick run's smaller ones."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

SECTIONS = ("inprocess", "http", "memory", "explain", "soak", "redis", "scale")
"""`inprocess` is benchmarks 1 and 2 (decisions per second and the model floor), `http` is 3, `memory` is 4,
`explain` is 5 (explanations per recipient), `soak` is 6 (half the throughput held for minutes), `redis` is 7
(3 and 4 with the online features in Redis, beside the in-memory figures of the same run), `scale` is 8 (the
pipeline stage by stage at growing numbers of customers)."""
DEFAULT_SECTIONS = SECTIONS[:-1]
"""What a run without `--only` measures: the scale benchmark builds worlds of its own, up to a million
customers (hours), and runs only when asked for."""
HOME_SECTIONS = SECTIONS[:-1]
"""The sections that run on the cached benchmark home (`bench.world.prepare_home`)."""

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
    scale_sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    """Customers of each world the scale benchmark runs the pipeline on."""
    scale_days: int = 90
    scale_simulate_max: int = 100_000
    """The largest world the scale benchmark simulates; larger sizes that are a multiple of it are copies of it
    (the simulator holds a whole world in memory: about 7 GB at 100,000 customers × 90 days)."""
    scale_memory_limit: float = 16e9
    """Bytes resident past which the scale benchmark stops a stage's process (the machine is shared)."""
    scale_time_limit: float = 90 * 60.0
    """Seconds past which the scale benchmark stops one size's pipeline."""
    sections: tuple[str, ...] = DEFAULT_SECTIONS
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
            scale_sizes=(10_000, 100_000),
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
