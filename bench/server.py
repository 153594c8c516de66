"""The real `bentoml serve` on loopback, started as the end-to-end tests start it: a home, a token, a free port."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.world import REPO_ROOT, bench_environment
from sendwise.settings import Settings

READY_TIMEOUT_S = 600.0
"""Loading a big home (the raw store's send history, the champions, Feast) takes a while in the worker."""
STARTUP_FAILED = b"Application startup failed"
"""What BentoML logs when the service's `__init__` raises; it then restarts the worker, again and again."""


@dataclass(frozen=True)
class Server:
    url: str
    token: str
    pid: int
    """The supervisor's pid: its process tree is the service."""
    log: Path
    startup_s: float

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


def _wait_ready(process: subprocess.Popen[bytes], url: str, token: str, log: Path) -> None:
    """Until /readyz answers and /v1/models answers 200: the engine loads in the worker, after readiness."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}; end of {log}:\n{_log_tail(log)}")
        if STARTUP_FAILED in log.read_bytes():
            raise RuntimeError(f"the service failed to start (the engine raised); end of {log}:\n{_log_tail(log)}")
        try:
            if (
                httpx.get(f"{url}/readyz", timeout=2).status_code == 200
                and httpx.get(f"{url}/v1/models", headers=headers, timeout=60).status_code == 200
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"bentoml serve did not answer /v1/models in {READY_TIMEOUT_S:.0f} s; see {log}")


@contextmanager
def serve(settings: Settings, log: Path, environment: Mapping[str, str] | None = None) -> Iterator[Server]:
    """`bentoml serve serving.service:Sendwise` on the home of `settings` (and `environment` on top, e.g. the
    online store's settings), stopped (its whole group) on exit."""
    port = free_port()
    token = secrets.token_urlsafe(24)
    env = {**bench_environment(settings.home), **(environment or {}), "SENDWISE_API_TOKEN": token}
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:Sendwise"]
    began = time.perf_counter()
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(process, url, token, log)
            yield Server(url, token, process.pid, log, time.perf_counter() - began)
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's own process group (it was started in a new session), SIGKILL if it lingers."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
