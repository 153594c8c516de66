"""A realistic world through the real pipeline: proxied recipients found, their opens never taken for theirs.

The world is a corner of the realistic ranges (60% of recipients behind Apple's proxy, which also carries
their own opens; an ESP that flags only half of the proxy's opens; most fetches hours after delivery;
scanners that click), with the held-out rhythm families. Small, so the bars are looser than the
10,000-customer targets `sendwise evaluate --suite realistic` prints; each would fail on the models that
took every unflagged open for a person's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sendwise.settings import Settings
from sendwise.simulator import simulate, simulation_options
from tests.conftest import run_pipeline
from training.evaluate import SESSIONS_KERNEL, Evaluation, detector_quality, evaluate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CUSTOMERS, DAYS, SEED = 2500, 42, 4242


@pytest.fixture(scope="module")
def realistic_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Settings]:
    world = tmp_path_factory.mktemp("realistic-world")
    rates, realism = simulation_options(
        realistic=True,
        mpp_share=0.6,
        esp_flag_share=0.5,
        prefetch_fast_share=0.4,
        prefetch_median_hours=6,
        # the detector's bars hold on worlds without the recent-activity effect; with it, people who open
        # nearly every email after a visit are taken for machines (precision 0.975 on this world: docs/quality.md)
        recent_activity=False,
    )
    simulate(world, customers=CUSTOMERS, days=DAYS, seed=SEED, progress=False, rates=rates, realism=realism)
    settings, _ = run_pipeline(world, tmp_path_factory.mktemp("realistic-home"))
    return world, settings


@pytest.fixture(scope="module")
def evaluation(realistic_home: tuple[Path, Settings]) -> Evaluation:
    world, settings = realistic_home
    return evaluate(settings, world, progress=False)


def test_detector_finds_proxied_recipients_and_machine_opens_and_clicks(
    realistic_home: tuple[Path, Settings],
) -> None:
    from sendwise.simulator.truth import World

    world, settings = realistic_home
    figures = detector_quality(settings, World.load(world))
    assert figures["proxied share (truth)"] == pytest.approx(0.6, abs=0.05)
    assert figures["proxied-recipient detector precision"] >= 0.98
    assert figures["proxied-recipient detector recall"] >= 0.97
    # Among the others, every machine open and click is found, and nothing a person did is taken for one.
    assert figures["machine-open detector precision"] >= 0.99
    assert figures["machine-open detector recall"] >= 0.99
    assert figures["ESP flag alone recall"] < 0.7  # the ESP flags half: a false flag is no proof of a person
    assert figures["machine-click detector precision"] >= 0.99
    assert figures["machine-click detector recall"] >= 0.99


def test_proxied_recipients_are_predicted_from_what_transfers(evaluation: Evaluation) -> None:
    """Their opens are the proxy's: taking them for theirs overpredicts (1.36 and worse on such worlds)."""
    proxied = evaluation.proxied
    assert proxied["proxied: customers"] > 1000
    assert proxied["proxied: mean predicted / mean true"] == pytest.approx(1.0, abs=0.12)
    assert evaluation.open_model["mean predicted / mean true"] == pytest.approx(1.0, abs=0.08)
    assert evaluation.open_model["AUC ratio"] > 0.9
    assert proxied["proxied: AUC ratio"] > 0.88


def test_send_times_beat_the_kernel_heuristics_on_unseen_rhythms(evaluation: Evaluation) -> None:
    st = evaluation.send_time
    assert st["sendwise"] > st[SESSIONS_KERNEL] + 0.02
    assert st["sendwise"] > st["kernel-smoothed engagement histogram, weekends apart"] + 0.02
    assert evaluation.proxied["proxied: send-time efficiency"] > st[SESSIONS_KERNEL]
    assert evaluation.offer["sendwise"] > evaluation.offer["best single offer"] + 0.2


def test_the_realistic_targets_are_judged(evaluation: Evaluation) -> None:
    assert evaluation.realistic
    names = [t.name for t in evaluation.targets]
    assert "the same, proxied recipients" in names and "send time over the sessions-only kernel" in names
    for target in evaluation.targets:
        assert target.met == _meets(target.value, target.bar), target


def _meets(value: float, bar: str) -> bool:
    if bar.startswith(">= +"):
        return value >= float(bar[4:])
    if bar.startswith(">= "):
        return value >= float(bar[3:])
    width = float(bar.removeprefix("within ±").removesuffix("%")) / 100
    return abs(value - 1) <= width
