"""A user's script that starts sendwise's worker processes at its top level, without `if __name__ == "__main__":`.

Worker processes are spawned: each imports the main script, which then starts its work again inside the worker.
The tests run such a script twice: as it is, where sendwise must stop with an error that says so and names the
setting that keeps the work in one process, and with that setting at 1, where the work must succeed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_unguarded(script: Path, setting: str, error: str) -> str:
    """Run `script` with `setting` unset (several workers, the default): it must fail with `error` naming
    `setting`=1; then with `setting`=1, which must succeed. What that second run printed."""
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    environment["MLFLOW_DISABLE_TELEMETRY"] = "true"
    environment.pop(setting, None)
    unguarded = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=environment)
    assert unguarded.returncode != 0
    assert error in unguarded.stderr, unguarded.stderr[-2000:]
    assert f"{setting}=1" in unguarded.stderr
    in_process = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env={**environment, setting: "1"}
    )
    assert in_process.returncode == 0, in_process.stderr[-2000:]
    return in_process.stdout
