"""The real `bentoml serve` of the service on a home, for tests that call it over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from sendwise.settings import Settings
from tests.conftest import REPO_ROOT

START_SECONDS = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def bentoml_serve(
    settings: Settings,
    token: str,
    target: str = "serving.service:Sendwise",
    cwd: Path = REPO_ROOT,
    **environment: str,
) -> Iterator[str]:
    """`bentoml serve TARGET` (the repository's service, or a built bento's tag) from `cwd` on `settings`' home
    with `token` (and `environment` on top), on a free loopback port; its URL once it answers `/v1/models` (the
    engine loads in the worker: readiness alone is not enough). Its log is the home's `serve.log`; it is
    stopped, with its workers, on exit."""
    port = free_port()
    env = {**os.environ, **settings.library_environment(), "SENDWISE_API_TOKEN": token, **environment}
    command = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1"]
    log_path = settings.home / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_until_answering(process, url, token, log_path)
            yield url
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _wait_until_answering(process: subprocess.Popen[bytes], url: str, token: str, log_path: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    auth = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(log_path.read_text()[-4000:])
        try:
            ready = httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            if ready and httpx.get(f"{url}/v1/models", headers=auth, timeout=30).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"bentoml serve did not answer in {START_SECONDS} s")
