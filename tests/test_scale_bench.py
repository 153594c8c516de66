"""The scale benchmark (bench/scale.py): its growth figures, its table, the world copies it builds, and one real
run of every stage on the smallest world."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from bench import scale
from bench.plan import Plan
from bench.stages import check_order, reset_peak, resident_peak


def test_growth_per_tenfold_is_the_factor_per_ten_times_the_customers() -> None:
    assert scale.growth_per_tenfold(10_000, 100_000, 2.0, 20.0) == pytest.approx(10.0)
    assert scale.growth_per_tenfold(10_000, 1_000_000, 3.0, 300.0) == pytest.approx(10.0)
    # Four times the customers and twice the time: 2^(1 / log10 4) per tenfold.
    assert scale.growth_per_tenfold(1_000, 4_000, 5.0, 10.0) == pytest.approx(2 ** (1 / math.log10(4)))
    with pytest.raises(ValueError, match="positive values"):
        scale.growth_per_tenfold(1_000, 10_000, 0.0, 1.0)
    with pytest.raises(ValueError, match="customers"):
        scale.growth_per_tenfold(10_000, 10_000, 1.0, 1.0)


def _size(customers: int, seconds: float, peak: int, redis_bytes: int | None = 1_000_000) -> scale.SizeRun:
    run = scale.SizeRun(customers, 90, redis_used_memory=redis_bytes, redis_keys=customers, load_average=(1.0, 2.0))
    for name in scale.STAGES:
        run.stages[name] = scale.Stage(name, customers, seconds, peak)
    return run


def test_table_has_every_stage_at_every_size_and_the_growth_between_sizes() -> None:
    small, large = _size(10_000, 2.0, 1_000_000_000), _size(100_000, 30.0, 4_000_000_000, 9_000_000)
    header, rows = scale.table_rows([small, large])
    assert header == ["stage", "10,000 × 90 d", "100,000 × 90 d", "growth per 10×, 10,000 → 100,000"]
    by_stage = {row[0]: row[1:] for row in rows}
    assert list(by_stage)[: len(scale.STAGES)] == list(scale.STAGES)
    assert by_stage["train"] == ["2.0 s · 1.00 GB", "30.0 s · 4.00 GB", "×15.0 time, ×4.0 memory"]
    # Five pipeline stages, ingest to materialize (SQLite): their seconds added, the largest peak.
    pipeline = ["10.0 s · 1.00 GB", "150.0 s · 4.00 GB", "×15.0 time, ×4.0 memory"]
    assert by_stage["pipeline (ingest to materialize)"] == pipeline
    assert by_stage["Redis used_memory after materializing"] == ["0.00 GB", "0.01 GB", "×9.0 memory"]
    assert large.pipeline_seconds() == pytest.approx(150.0)
    assert scale.markdown([small, large]).splitlines()[1] == "|---|---|---|---|"


def test_a_stage_that_did_not_finish_says_why_and_the_pipeline_has_no_figure() -> None:
    run = _size(1_000_000, 60.0, 2_000_000_000, None)
    why = "stopped at 16.20 GB resident, past the limit of 16.00 GB"
    run.stages["train"] = scale.Stage("train", 1_000_000, note=why)
    _, rows = scale.table_rows([run])
    by_stage = {row[0]: row[1:] for row in rows}
    assert by_stage["train"] == [why]
    assert by_stage["pipeline (ingest to materialize)"] == [why]
    summary = scale.summary_rows([run])
    assert [row.verdict for row in summary] == ["ERROR", "ERROR"]
    assert summary[0].note == why


def test_the_bars_are_judged_only_at_a_million_customers_over_90_days() -> None:
    rows = scale.summary_rows([_size(100_000, 60.0, 2_000_000_000), _size(1_000_000, 700.0, 17_000_000_000)])
    verdicts = {row.benchmark: row.verdict for row in rows}
    assert verdicts["pipeline time, 100,000 customers × 90 days"] == "n/a"
    assert verdicts["pipeline time, 1,000,000 customers × 90 days"] == "PASS"  # 5 × 700 s = 58 min
    assert verdicts["pipeline peak memory, 1,000,000 customers × 90 days"] == "MISS"


def test_stages_refuse_an_order_that_loses_what_a_stage_needs() -> None:
    check_order(["ingest", "features", "train", "promote"])
    with pytest.raises(Exception, match="'promote' needs 'train'"):
        check_order(["features", "promote"])
    with pytest.raises(Exception, match="'fit' is not a stage"):
        check_order(["fit"])


def test_the_peak_is_reset_between_stages() -> None:
    ballast = bytearray(200_000_000)
    ballast[::4096] = b"x" * len(ballast[::4096])  # touch every page: resident
    high = resident_peak()
    del ballast
    assert high is not None and reset_peak()
    low = resident_peak()
    assert low is not None and low < high - 150_000_000


def test_copies_of_a_world_rename_customers_and_events_and_share_the_catalog(tmp_path: Path) -> None:
    source = tmp_path / "world"
    (source / "truth").mkdir(parents=True)
    (source / "truth" / "world.json").write_text("{}")
    (source / "offers.csv").write_text("offer_id;kind\nof-1;discount\n")
    (source / "customers.csv").write_text('customer_id,timezone,interests\nc-1,,"a|b"\n,UTC,\n')
    events = pd.DataFrame({"event_id": ["e-1"], "customer_id": ["c-1"], "message_id": [None], "value": [1.5]})
    (source / "email_events").mkdir()
    events.to_parquet(source / "email_events" / "part-1.parquet")
    scale.replicate_world(source, tmp_path / "copies", 3)
    copies = tmp_path / "copies"
    assert (copies / "offers.csv").read_text() == "offer_id;kind\nof-1;discount\n"
    customers = pd.concat(pd.read_csv(p, dtype=str) for p in sorted((copies / "customers").iterdir()))
    assert customers["customer_id"].fillna("").tolist() == ["c-1", "", "k01-c-1", "", "k02-c-1", ""]
    assert customers["interests"].tolist()[0] == "a|b"
    parts = sorted((copies / "email_events").iterdir())
    assert [p.name for p in parts] == ["part-1.k00.parquet", "part-1.k01.parquet", "part-1.k02.parquet"]
    last = pd.read_parquet(parts[2])
    assert last[["event_id", "customer_id"]].iloc[0].tolist() == ["k02-e-1", "k02-c-1"]
    assert last["message_id"].isna().all() and last["value"].tolist() == [1.5]


@pytest.mark.slow
@pytest.mark.integration
def test_one_small_world_through_every_stage(tmp_path: Path) -> None:
    """The real section on 2,000 customers × 30 days: every stage measured, Redis filled, the rows there."""
    plan = Plan(cache=tmp_path, scale_sizes=(2_000,), scale_days=30, sections=("scale",))
    (run,) = scale.measure(plan, Console(quiet=True))
    rows = scale.summary_rows([run])
    assert set(run.stages) == set(scale.STAGES), run.stages
    for stage in run.stages.values():
        assert stage.seconds is not None and stage.seconds > 0, stage
        assert stage.peak_rss is not None and stage.peak_rss > 50_000_000, stage
    assert run.redis_used_memory is not None and run.redis_used_memory > 1_000_000
    assert run.redis_keys is not None and run.redis_keys >= 2_000  # one hash per customer, and the offers
    assert [row.benchmark for row in rows] == [
        "pipeline time, 2,000 customers × 30 days",
        "pipeline peak memory, 2,000 customers × 30 days",
        "Redis used_memory, 2,000 customers × 30 days",
    ]
    assert [row.verdict for row in rows] == ["n/a", "n/a", ""]
    assert rows[0].value == pytest.approx(run.pipeline_seconds() / 60)
