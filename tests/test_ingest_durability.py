"""An ingest killed at random moments and run again ends with every row of the export exactly once, the raw store
as an uninterrupted ingest leaves it, and no temporary or half-written file left behind.

`sendwise ingest` runs in processes forked from one helper that imported the CLI once (a fresh interpreter
spends seconds importing before the ingest starts, and a kill then would only ever hit the imports): each
attempt is a real process, killed with SIGKILL at a seeded random moment within an uninterrupted ingest's time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sendwise import contract
from sendwise.raw import load_table, writer_lock
from sendwise.settings import Settings
from sendwise.simulator import simulate

KILLS_PER_EXPORT = 12
MOST_ATTEMPTS = 40
HELPER = textwrap.dedent(
    """
    import os
    import signal
    import sys
    import time

    from sendwise.cli import app
    from training import jobs  # noqa: F401  (what `sendwise ingest` imports, once)

    print("ready", flush=True)
    for line in sys.stdin:
        home, data_dir, kill_after = line.rstrip("\\n").split("\\t")
        pid = os.fork()
        if pid == 0:
            os.environ["SENDWISE_HOME"] = home
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            code = 0
            try:
                app(["ingest", data_dir], prog_name="sendwise")
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else 1
            except BaseException:
                code = 1
            os._exit(code)
        if kill_after:
            time.sleep(float(kill_after))
            os.kill(pid, signal.SIGKILL)  # not reaped yet: a child already done is not killed twice
        _, status = os.waitpid(pid, 0)
        print(status, flush=True)
    """
)


class Ingests:
    """`sendwise ingest` runs, each in a process of its own."""

    def __init__(self) -> None:
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
        self.helper = subprocess.Popen(
            [sys.executable, "-c", HELPER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
            text=True,
        )
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.helper.stdout is not None
        return self.helper.stdout.readline().strip()

    def run(self, home: Path, data_dir: Path, kill_after: float | None = None) -> int:
        """One ingest of `data_dir` into `home`: its wait status (0: done), SIGKILLed after `kill_after` seconds
        if given."""
        assert self.helper.stdin is not None
        self.helper.stdin.write(f"{home}\t{data_dir}\t{'' if kill_after is None else kill_after}\n")
        self.helper.stdin.flush()
        return int(self._line())

    def close(self) -> None:
        assert self.helper.stdin is not None
        self.helper.stdin.close()
        self.helper.wait(timeout=30)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small world's export (B), and an earlier export of it (A: the first half of its events)."""
    full = tmp_path_factory.mktemp("world")
    simulate(full, customers=250, days=14, seed=21, progress=False)
    shutil.rmtree(full / "truth")
    first = tmp_path_factory.mktemp("first-half")
    for name in ("customers.csv", "campaigns.csv", "offers.csv"):
        shutil.copy(full / name, first / name)
    for name in ("email_events", "site_events", "offer_events"):
        source = full / name if (full / name).is_dir() else full / f"{name}.parquet"
        events = pd.read_parquet(source)
        cut = events["occurred_at"].quantile(0.5)
        events[events["occurred_at"] <= cut].to_parquet(first / f"{name}.parquet", index=False)
    return first, full


def _leftovers(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.name.endswith(".tmp") or "commit" in p.name)


def _timed(ingests: Ingests, home: Path, data_dir: Path) -> float:
    began = time.perf_counter()
    assert ingests.run(home, data_dir) == 0
    return time.perf_counter() - began


Tables = dict[str, pd.DataFrame | None]


def _tables(home: Path) -> Tables:
    settings = Settings(home=home)
    return {name: load_table(settings, name) for name in contract.TABLES}


def _same(a: Tables, b: Tables) -> bool:
    for name in contract.TABLES:
        x, y = a[name], b[name]
        if (x is None) != (y is None):
            return False
        if x is not None and y is not None:
            try:
                pd.testing.assert_frame_equal(x, y)
            except AssertionError:
                return False
    return True


def _killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _killed_then_done(
    ingests: Ingests, home: Path, data_dir: Path, seconds: float, before: Tables, after: Tables, seed: int
) -> int:
    """Ingests of `data_dir` killed at random moments (every other one in the second half of an ingest's time,
    where it writes) until `KILLS_PER_EXPORT` kills landed before the ingest was done, each leaving the store as
    it was or as the ingest makes it; then one run to the end. How many were killed. A kill that came after the
    ingest was done draws the next ones from an earlier span."""
    rng = np.random.default_rng(seed)
    killed = 0
    for k in range(MOST_ATTEMPTS):
        low = 0.0 if k % 2 == 0 else 0.5 * seconds
        landed = _killed(ingests.run(home, data_dir, kill_after=float(rng.uniform(low, seconds))))
        killed += landed
        if not landed:  # this ingest ran faster than the timed one (a quieter machine): aim earlier
            seconds *= 0.85
        with writer_lock(Settings(home=home)):  # what the next writer finds, once it holds the lock
            state = _tables(home)
        assert _same(state, before) or _same(state, after)
        if killed == KILLS_PER_EXPORT:
            break
    assert ingests.run(home, data_dir) == 0
    return killed


@pytest.mark.slow  # a few dozen real ingests, killed and run again: about 40 s
def test_an_ingest_killed_at_random_moments_ends_with_every_row_once(
    exports: tuple[Path, Path], tmp_path: Path
) -> None:
    first, full = exports
    reference_home, killed_home = tmp_path / "reference", tmp_path / "killed"
    ingests = Ingests()
    try:  # uninterrupted, what the store must end as and how long an ingest takes here; then killed and run again
        states, seconds = [_tables(reference_home)], []
        for data_dir in (first, full):
            seconds.append(_timed(ingests, reference_home, data_dir))
            states.append(_tables(reference_home))
        killed = [
            _killed_then_done(ingests, killed_home, data_dir, seconds[k], states[k], states[k + 1], k)
            for k, data_dir in enumerate((first, full))
        ]
    finally:
        ingests.close()
    assert killed == [KILLS_PER_EXPORT, KILLS_PER_EXPORT]  # 24 kills landed before their ingest was done

    expected, found = Settings(home=reference_home), Settings(home=killed_home)
    export = {
        name: pd.read_parquet(full / name if (full / name).is_dir() else full / f"{name}.parquet")
        for name in ("email_events", "site_events", "offer_events")
    }
    for name in contract.TABLES:
        table, want = load_table(found, name), load_table(expected, name)
        assert table is not None and want is not None, name
        key = contract.TABLES[name].key
        assert table[key].is_unique, name  # every row exactly once
        pd.testing.assert_frame_equal(table, want, check_like=False)
        if name in export:  # every event of the export is in the store, or quarantined as bad
            ids = set(export[name]["event_id"].dropna().astype(str))
            assert ids - set(table["event_id"].astype(str)) <= set(_quarantined(found, name))
    assert _leftovers(killed_home) == []


def _quarantined(settings: Settings, name: str) -> list[str]:
    path = settings.quarantine_dir / f"{name}.parquet"
    if not path.exists():
        return []
    return pd.read_parquet(path)["event_id"].dropna().astype(str).tolist()
