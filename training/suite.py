"""The evaluation suites: worlds the models never saw, each run through the plain commands a user runs.

`sendwise evaluate --suite realistic` draws realistic worlds with the held-out rhythm families on seeds used
nowhere else, at the corners of the realistic ranges (few or many proxied recipients, an ESP that flags half
or most of the proxy's opens, proxy fetches sooner or later) and at their middle; `--suite classic` the
classic worlds of seeds 11 and 31. Each world gets a home of its own: `sendwise simulate`, then `sendwise
pipeline --data WORLD` and `sendwise evaluate --world WORLD --json` as separate processes, exactly as a user
would run them; the table at the end puts every world's targets side by side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sendwise.simulate import simulate, simulation_options


@dataclass(frozen=True)
class Scenario:
    """One world of a suite: its seed and the simulator's options (`sendwise simulate`'s flags)."""

    name: str
    seed: int
    options: dict[str, Any] = field(default_factory=dict)

    def flags(self) -> str:
        """The `sendwise simulate` flags that draw this world."""
        flags = [f"--seed {self.seed}"]
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            flags.append(flag if value is True else f"{flag} {value}")
        return " ".join(flags)


REALISTIC = (
    Scenario("middle", 2001, {"realistic": True}),
    Scenario(
        "30% proxied, ESP flags 50%, fetches soon",
        2002,
        {
            "realistic": True,
            "mpp_share": 0.3,
            "esp_flag_share": 0.5,
            "prefetch_fast_share": 0.6,
            "prefetch_median_hours": 2,
        },
    ),
    Scenario(
        "60% proxied, ESP flags 50%, fetches late",
        2003,
        {
            "realistic": True,
            "mpp_share": 0.6,
            "esp_flag_share": 0.5,
            "prefetch_fast_share": 0.4,
            "prefetch_median_hours": 8,
        },
    ),
    Scenario(
        "30% proxied, ESP flags 90%, fetches late",
        2004,
        {
            "realistic": True,
            "mpp_share": 0.3,
            "esp_flag_share": 0.9,
            "prefetch_fast_share": 0.4,
            "prefetch_median_hours": 8,
        },
    ),
    Scenario(
        "60% proxied, ESP flags 90%, fetches soon",
        2005,
        {
            "realistic": True,
            "mpp_share": 0.6,
            "esp_flag_share": 0.9,
            "prefetch_fast_share": 0.6,
            "prefetch_median_hours": 2,
        },
    ),
)
CLASSIC = (Scenario("classic, seed 11", 11), Scenario("classic, seed 31", 31))
SUITES: dict[str, tuple[Scenario, ...]] = {"realistic": REALISTIC, "classic": CLASSIC}


@dataclass
class WorldResult:
    """One world's evaluation (what `sendwise evaluate --json` wrote) and how long its steps took."""

    scenario: Scenario
    evaluation: dict[str, Any]
    seconds: dict[str, float]

    @property
    def targets(self) -> list[dict[str, Any]]:
        return list(self.evaluation.get("targets", []))

    @property
    def met(self) -> bool:
        return all(t["met"] for t in self.targets)


class SuiteError(RuntimeError):
    """A step of the suite failed: the message names the world, the command and its last output."""


def _run(command: list[str], home: Path, log: Path, what: str) -> float:
    """Run a `sendwise` command with its own home, its output to `log`; the seconds it took."""
    environment = {**os.environ, "SENDWISE_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    began = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(command, env=environment, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SuiteError(f"{what} failed (exit {code}); the full output is in {log}:\n{tail}")
    return time.perf_counter() - began


def run_world(scenario: Scenario, work_dir: Path, customers: int, days: int) -> WorldResult:
    """Simulate, run the pipeline and evaluate one world, each in a process of its own."""
    name = scenario.name.replace(" ", "-").replace(",", "").replace("%", "pct")
    world, home = work_dir / name / "world", work_dir / name / "home"
    home.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    rates, realism = simulation_options(**scenario.options)
    simulate(world, customers=customers, days=days, seed=scenario.seed, progress=False, rates=rates, realism=realism)
    seconds["simulate"] = time.perf_counter() - began
    command = [sys.executable, "-m", "sendwise.cli"]
    seconds["pipeline"] = _run(
        [*command, "pipeline", "--data", str(world)], home, home.parent / "pipeline.log", f"{scenario.name}: pipeline"
    )
    result = home.parent / "evaluation.json"
    seconds["evaluate"] = _run(
        [*command, "evaluate", "--world", str(world), "--json", str(result)],
        home,
        home.parent / "evaluate.log",
        f"{scenario.name}: evaluate",
    )
    return WorldResult(scenario, json.loads(result.read_text()), seconds)


def run_suite(
    name: str,
    work_dir: Path,
    customers: int = 10_000,
    days: int = 90,
    progress: Callable[[str], None] | None = None,
) -> list[WorldResult]:
    """Every world of the suite `name`, one after the other."""
    if name not in SUITES:
        raise SuiteError(f"no suite {name!r}: choose one of {', '.join(SUITES)}")
    results = []
    for scenario in SUITES[name]:
        if progress is not None:
            progress(f"{scenario.name} (sendwise simulate {scenario.flags()})")
        results.append(run_world(scenario, work_dir, customers, days))
    return results
