"""`python -m bench.stages HOME STAGE... [--data DIR] --out FILE`: pipeline stages in one process, each timed.

The scale benchmark (bench/scale.py) runs the pipeline's steps, the same `training.jobs` functions
`sendwise pipeline` calls, one process per group of stages. `features`, `train` and `promote` share one
process because each hands the next what it built in memory (the feature tables, the held-out windows), as
`sendwise pipeline` does; `ingest` and `materialize` need nothing but the home and run on their own.

After each stage one JSON line goes to `--out`: the stage, its wall-clock seconds, the CPU seconds of this
process and its finished children (what the stage costs whatever else the machine is doing), its start and end
(`time.time()`), and the process's peak resident set during that stage. The peak is Linux's `VmHWM`, which
the process resets before each stage by writing 5 to `/proc/self/clear_refs`; so the `train` peak is the
peak of the process while training, with the feature tables it holds as the pipeline holds them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

STAGES = ("ingest", "features", "train", "promote", "materialize")
NEEDS = {"train": "features", "promote": "train"}
"""A stage that needs what another built in memory runs in the same process, after it."""


def resident_peak() -> int | None:
    """This process's peak resident set since it started or since `reset_peak` (bytes; None off Linux)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def cpu_seconds() -> float:
    """CPU seconds of this process and of the child processes it has waited for (materializing's workers)."""
    spent = os.times()
    return spent.user + spent.system + spent.children_user + spent.children_system


def reset_peak() -> bool:
    """Start `VmHWM` again from the current resident set (Linux 4.0+); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class StageLog:
    """Appends one JSON line per stage to `path`."""

    path: Path
    records: list[dict[str, object]] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        reset = reset_peak()
        started_at, started, cpu = time.time(), time.perf_counter(), cpu_seconds()
        yield
        record: dict[str, object] = {
            "stage": name,
            "seconds": time.perf_counter() - started,
            "cpu_seconds": cpu_seconds() - cpu,
            "started_at": started_at,
            "ended_at": time.time(),
            "peak_rss": resident_peak(),
            "peak_since_start": not reset,
        }
        self.records.append(record)
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")


def check_order(stages: list[str]) -> None:
    """Raise a `typer.BadParameter` naming the stage that lacks the stage it needs before it."""
    for k, stage in enumerate(stages):
        if stage not in STAGES:
            raise typer.BadParameter(f"{stage!r} is not a stage: expected some of {', '.join(STAGES)}")
        needed = NEEDS.get(stage)
        if needed is not None and needed not in stages[:k]:
            raise typer.BadParameter(f"{stage!r} needs {needed!r} before it in the same process")


def run_stages(home: Path, stages: list[str], data: Path | None, log: StageLog) -> None:
    """The stages in order, on the home's settings (`SENDWISE_*` from the environment, home from `home`)."""
    from features.store import materialize, open_store
    from sendwise.asof import resolve_as_of
    from sendwise.registry import connect
    from sendwise.settings import Settings
    from training import jobs
    from training.compare import compare_versions, promote_if_better, training_windows
    from training.train import TrainResult, train_models

    settings = Settings(home=home)
    settings.activate()
    features: jobs.Features | None = None
    trained: TrainResult | None = None

    def ingest() -> None:
        if data is None:
            raise typer.BadParameter("the ingest stage needs --data")
        jobs.ingest(settings, data, progress=False)

    def build() -> None:
        nonlocal features
        features = jobs.build_features(settings, progress=False)

    def train() -> None:
        nonlocal trained
        assert features is not None
        # What `jobs.train` does before it materializes, with promotion left to the next stage.
        trained = train_models(settings, features.tables, features.store, progress=False, promote=False)

    def promote() -> None:
        assert trained is not None
        client = connect(settings)
        for window in training_windows(trained).values():
            promote_if_better(client, compare_versions(client, window))

    def materialize_online() -> None:
        as_of = resolve_as_of(settings).time.to_pydatetime()
        materialize(open_store(settings), as_of, settings.materialize_workers, True, settings.offline_memory_gb)

    steps: dict[str, Callable[[], None]] = {
        "ingest": ingest,
        "features": build,
        "train": train,
        "promote": promote,
        "materialize": materialize_online,
    }
    for stage in stages:
        with log.stage(stage):
            steps[stage]()


def main(
    home: Annotated[Path, typer.Argument(help="the home the stages run in")],
    stages: Annotated[list[str], typer.Argument(help=f"stages in order, among {', '.join(STAGES)}")],
    out: Annotated[Path, typer.Option(help="JSON lines, one per stage")],
    data: Annotated[Path | None, typer.Option(help="the export the ingest stage reads")] = None,
) -> None:
    """Run pipeline stages in this process, each timed and its peak memory measured."""
    check_order(stages)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    run_stages(home, stages, data, StageLog(out))


if __name__ == "__main__":
    typer.run(main)
