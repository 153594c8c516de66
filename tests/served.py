"""The real `bentoml serve` of the service on a home, for tests that call it over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
def running(
    name: str, command: list[str], cwd: Path, env: dict[str, str], log_path: Path, ready: Callable[[], bool]
) -> Iterator[None]:
    """`command` started in a process group of its own, logging to `log_path`, until `ready()` (polled every
    half second; an HTTP error counts as not yet); stopped with everything it started on exit. A process that
    exits or never gets ready fails the test with the log's tail."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _wait_until_ready(name, process, ready, log_path)
            yield
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def answers(url: str, headers: dict[str, str] | None = None) -> bool:
    """True where a GET of `url` answers 200."""
    return httpx.get(url, headers=headers, timeout=30).status_code == 200


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
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **settings.library_environment(), "SENDWISE_API_TOKEN": token, **environment}
    command = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    auth = {"Authorization": f"Bearer {token}"}

    def ready() -> bool:
        return answers(f"{url}/readyz") and answers(f"{url}/v1/models", auth)

    with running("bentoml serve", command, cwd, env, settings.home / "serve.log", ready):
        yield url


def _wait_until_ready(name: str, process: subprocess.Popen[bytes], ready: Callable[[], bool], log_path: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{name} did not answer in {START_SECONDS} s:\n{log_path.read_text()[-4000:]}")
