"""A real PostgreSQL (Debian's `postgresql` package, which `make test` installs) on a free loopback port, in a
throwaway data folder: the database an MLflow tracking server keeps its runs and registry in."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.served import free_port

DATABASE = "mlflow"
START_SECONDS = 60


def _binaries() -> Path:
    """The folder of `initdb`, `pg_ctl` and `createdb` (Debian keeps them outside PATH, one folder a version)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL is not installed: `make postgres` installs Debian's postgresql package")
    return Path(initdb).parent


def _as_owner(command: list[str]) -> list[str]:
    """`command` run as the `postgres` user where this process is root: PostgreSQL refuses to run as root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh PostgreSQL cluster with one database, `mlflow`, trusting local connections; yields its URL
    (`postgresql://postgres@127.0.0.1:PORT/mlflow`) and stops it, removing its folder, on exit."""
    binaries = _binaries()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="postgres-") as folder:
        data, log = Path(folder) / "data", Path(folder) / "server.log"
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")

        def run(*command: str) -> None:
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=folder, check=True)

        pg_ctl = _as_owner([str(binaries / "pg_ctl"), "-D", str(data)])
        run(*_as_owner([str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]))
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(*pg_ctl, "-l", str(log), "-o", options, "-w", "-t", str(START_SECONDS), "start")
        try:
            run(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", DATABASE)
            yield f"postgresql://postgres@127.0.0.1:{port}/{DATABASE}"
        finally:
            run(*pg_ctl, "-m", "immediate", "stop")
