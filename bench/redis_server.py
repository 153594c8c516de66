"""A real `redis-server` (Debian's package, which `make test` and `make bench` install) on a free loopback port:
what the tests and the Redis benchmarks run against."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from bench.server import free_port

START_SECONDS = 20


@contextmanager
def redis_server(port: int | None = None) -> Iterator[str]:
    """A fresh `redis-server` with nothing saved to disk, on `port` (default: a free one); yields its URL
    (`redis://127.0.0.1:PORT`, no db: a test appends the db number it uses) and stops it on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: `make redis` installs Debian's redis-server package")
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="redis-") as folder:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        url = f"redis://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + START_SECONDS
            while True:
                try:
                    redis.Redis.from_url(url).ping()
                    break
                except redis.ConnectionError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"redis-server on port {port} did not start") from None
                    time.sleep(0.05)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=10)
