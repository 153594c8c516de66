"""`simulate`: one world from a seed, written to a folder (`sendwise simulate OUT_DIR`).

The population, the offers and the campaigns are drawn first, then the run goes hour by hour, then the export
writes the data and the truth. Each part draws from a random stream of its own, spawned from the seed:

0. the customers; 1. the offers and the campaigns; 2. the run; 3. the sessions before any email;
4. nothing (spawned so that the streams after it stay what they were); 5. the dirt of the exports;
6. the rhythms of a world of other rhythm families; 7. what a realistic world adds to the run.

Streams 6 and 7 draw only what a realistic world adds, so a classic world stays the same draw for draw; the
same seed and options always give the same files.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sendwise.simulator.export import assemble, write
from sendwise.simulator.options import Rates, Realism
from sendwise.simulator.population import ZONES, make_customers
from sendwise.simulator.run import Run
from sendwise.simulator.sender import BLAST_HOUR_UTC, LoggedPolicy, make_campaigns, make_offers
from sendwise.simulator.truth import CATEGORIES, DAY, KINDS, Coefficients, World, to_timestamp, utc_seconds

DEFAULT_END = pd.Timestamp("2026-11-01T00:00:00Z")
GENERATED_BY = "sendwise.simulate"
"""The generator a world's `truth/world.json` names: the `sendwise simulate` command."""


@dataclass(frozen=True)
class SimulationSummary:
    """What `simulate` wrote: counts per table (data rows, dirt included) and how long it took."""

    out_dir: Path
    start: pd.Timestamp
    end: pd.Timestamp
    seed: int
    customers: int
    campaigns: int
    emails_sent: int
    human_opens: int
    machine_opens: int
    conversions: int
    rows: dict[str, int]
    seconds: float


def simulate(
    out_dir: Path,
    customers: int = 10_000,
    days: int = 90,
    seed: int = 0,
    end: pd.Timestamp | None = None,
    progress: bool = True,
    rates: Rates | None = None,
    realism: Realism | None = None,
) -> SimulationSummary:
    """Write a synthetic world in the data contract to `out_dir` and its ground truth to `out_dir/truth/`.

    The data covers [end - days, end); `end` must be a whole UTC hour (default 2026-11-01T00:00Z), so the
    same seed always gives the same world. `rates` and `realism` default to the classic world's.
    """
    began = time.perf_counter()
    if customers < 1 or days < 1:
        raise ValueError(f"customers and days must be at least 1, got customers={customers}, days={days}")
    end = DEFAULT_END if end is None else pd.Timestamp(end)
    if end.tzinfo is None:
        raise ValueError(f"end {end} has no time zone; give a UTC hour such as 2026-11-01T00:00Z")
    end = end.tz_convert("UTC")
    if end != end.floor("h"):
        raise ValueError(f"end {end} is not a whole hour")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    rates = rates or Rates()
    realism = realism or Realism()
    policy, coefficients = LoggedPolicy(), Coefficients()
    end_s = float(utc_seconds(end)[0])
    start_s = end_s - days * DAY
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)]
    n_hours = days * 24
    with tqdm(total=n_hours + 3, desc="simulating", unit="step", disable=not progress) as bar:
        bar.set_postfix_str("customers, offers, campaigns")
        params = make_customers(customers, streams[0], start_s, rates, realism, streams[6])
        offers = make_offers(start_s, end_s, days, streams[1])
        campaigns = make_campaigns(streams[1], start_s, days, rates)
        meta = {
            "generated_by": GENERATED_BY,
            "format_version": 1,
            "seed": seed,
            "start": to_timestamp(start_s).isoformat(),
            "days": days,
            "customers": customers,
            "blast_hour_utc": BLAST_HOUR_UTC,
            "categories": list(CATEGORIES),
            "kinds": list(KINDS),
            "zones": [{"timezone": z, "country": c, "share": s} for z, c, s in ZONES],
            "policy": asdict(policy),
            "rates": asdict(rates),
            "realism": asdict(realism),
        }
        world = World(end=end, coefficients=coefficients, customer_params=params, offer_params=offers, meta=meta)
        world.clock(start_s - 2 * DAY, end_s + 5 * DAY)
        run = Run(world, campaigns, policy, rates, streams[2], start_s, end_s, realism, streams[7])
        run.plan(streams[3])
        bar.update(1)
        bar.set_postfix_str("sending")
        for _ in run.hours():
            bar.update(1)
        world.set_end_state(run.sends_in_last_7_days(end_s), run.suppressed_at <= end_s, run.recent_at(end_s))
        meta["campaigns"] = len(campaigns)
        bar.set_postfix_str("assembling")
        tables = assemble(run, streams[5])
        bar.update(1)
        bar.set_postfix_str("writing")
        rows = write(out_dir, world, tables)
        bar.update(1)
    messages = tables.messages
    return SimulationSummary(
        out_dir=out_dir,
        start=to_timestamp(start_s),
        end=end,
        seed=seed,
        customers=customers,
        campaigns=int((campaigns["kind"] != "triggered").sum()),
        emails_sent=len(messages),
        human_opens=int((~tables.opens["is_machine"]).sum()),
        machine_opens=int(tables.opens["is_machine"].sum()),
        conversions=int(messages["converted_7d"].sum()),
        rows=rows,
        seconds=time.perf_counter() - began,
    )
