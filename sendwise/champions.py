"""The champions a service serves, found without MLflow in its process.

MLflow's client costs a process about 70 MB resident (its import, its SQL store, its flavour loaders), a
seventh of what a Redis replica may use. So the service asks MLflow in a short child process (`python -m
sendwise.champions`, which runs `sendwise.registry`'s `child` commands) that writes each champion's booster
into a folder the service reads. Its watcher reads the champion aliases without MLflow: from a tracking server
through its REST API (`GET /api/2.0/mlflow/registered-models/alias`, one call a model); from a database store
by asking a child process again, and from the home's SQLite file only when the file changed since the last
answer. Training, notebooks and evaluations load champions in their own process (`sendwise.registry`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx

if TYPE_CHECKING:
    import lightgbm as lgb

MODEL_NAMES = ("open_propensity", "send_time", "next_best_offer")
ALIAS = "champion"
CHILD_TIMEOUT_SECONDS = 300
REST_TIMEOUT_SECONDS = 10


@dataclass
class LoadedModel:
    """A champion as it serves: its registered version and its booster."""

    version: str
    booster: lgb.Booster


def import_lightgbm_without_sklearn() -> None:
    """Import LightGBM without its scikit-learn estimators, unless it (or scikit-learn) is already imported.

    LightGBM imports scikit-learn whenever it is installed (training uses it), for its `LGBMClassifier` family,
    which the service never uses: it loads boosters. That is about 60 MB resident in every worker. LightGBM
    takes scikit-learn as missing when importing it fails, so it is made to fail for that one import; anything
    imported later may still import scikit-learn itself.
    """
    if "lightgbm" in sys.modules or "sklearn" in sys.modules:
        return
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # `import sklearn` raises ImportError
    try:
        import lightgbm  # noqa: F401
    finally:
        del sys.modules["sklearn"]


def shown_uri(uri: str) -> str:
    """A tracking URI as messages show it: without the password a database URI may carry."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


class RegistryUnreadable(RuntimeError):
    """The model registry could not be read (the message says where and why)."""


class _RegistryChild:
    """`python -m sendwise.champions ARGUMENTS` against a tracking URI, started now; `output()` waits for its
    answer (the last line it prints) and turns a failure into `RegistryUnreadable`, saying what it printed."""

    def __init__(self, arguments: list[str], tracking_uri: str) -> None:
        self.what = f"{arguments[0]} from the model registry at {shown_uri(tracking_uri)}"
        self._process = subprocess.Popen(  # the URI goes by environment: a database's may hold its password
            [sys.executable, "-m", "sendwise.champions", *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_DISABLE_TELEMETRY": "true"},
        )

    def output(self) -> str:
        try:
            out, err = self._process.communicate(timeout=CHILD_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()
            raise RegistryUnreadable(f"{self.what}: no answer in {CHILD_TIMEOUT_SECONDS} s") from None
        if self._process.returncode != 0:
            said = err.strip().splitlines()[-3:] or [f"exit status {self._process.returncode}"]
            raise RegistryUnreadable(f"{self.what} failed: {' | '.join(said)}")
        lines = out.strip().splitlines()
        return lines[-1] if lines else "{}"


class PendingChampions:
    """Champions being exported by a child process: `result()` waits for them and loads their boosters.

    Started before the rest of a service's load, so that MLflow's start-up in the child overlaps it."""

    def __init__(self, tracking_uri: str, versions: dict[str, str] | None = None) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="sendwise-champions-")
        pinned = [f"{name}={version}" for name, version in (versions or {}).items()]
        self._child = _RegistryChild(["export", self._folder.name, *pinned], tracking_uri)

    def result(self) -> dict[str, LoadedModel]:
        """Every exported champion by name (those pinned, else each of `MODEL_NAMES` with a champion)."""
        import_lightgbm_without_sklearn()
        import lightgbm as lgb

        with self._folder as folder:
            exported: dict[str, str] = json.loads(self._child.output())
            return {
                name: LoadedModel(version, lgb.Booster(model_file=str(Path(folder) / f"{name}.txt")))
                for name, version in exported.items()
            }


def load_champions_apart(tracking_uri: str, versions: dict[str, str] | None = None) -> dict[str, LoadedModel]:
    """The champions (or the `versions` given, by name), loaded without MLflow in this process."""
    return PendingChampions(tracking_uri, versions).result()


class ChampionAliases:
    """The version each model's champion alias points at, read without MLflow in this process."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        scheme = urlsplit(tracking_uri).scheme
        self.server = scheme in ("http", "https")
        self.database_file = Path(tracking_uri.removeprefix("sqlite:///")) if scheme == "sqlite" else None
        self._stamp: tuple[int, ...] | None = None
        self._known: dict[str, str] = {}

    def versions(self) -> dict[str, str]:
        """Each model of `MODEL_NAMES` that has a champion, by name."""
        if self.server:
            return self._from_server()
        stamp = self._file_stamp()
        if stamp is None or stamp != self._stamp:
            self._known = json.loads(_RegistryChild(["versions"], self.tracking_uri).output())
            self._stamp = stamp
        return dict(self._known)

    def _file_stamp(self) -> tuple[int, ...] | None:
        """When and how much the SQLite file (and its journal) last changed; None for other databases."""
        if self.database_file is None:
            return None
        stamp: list[int] = []
        for path in (self.database_file, self.database_file.with_name(self.database_file.name + "-wal")):
            found = path.stat() if path.exists() else None
            stamp += [found.st_mtime_ns, found.st_size] if found else [0, 0]
        return tuple(stamp)

    def _from_server(self) -> dict[str, str]:
        url = f"{self.tracking_uri.rstrip('/')}/api/2.0/mlflow/registered-models/alias"
        server = f"the tracking server at {shown_uri(self.tracking_uri)}"
        found: dict[str, str] = {}
        with httpx.Client(timeout=REST_TIMEOUT_SECONDS, auth=_server_auth(), headers=_server_headers()) as http:
            for name in MODEL_NAMES:
                try:
                    answer = http.get(url, params={"name": name, "alias": ALIAS})
                except httpx.HTTPError as error:
                    raise RegistryUnreadable(f"{server}: {error}") from None
                if _no_champion(answer):
                    continue
                if answer.status_code != 200:
                    raise RegistryUnreadable(
                        f"{server} answered {answer.status_code} for {name}'s champion: {answer.text[:200]}"
                    )
                found[name] = str(answer.json()["model_version"]["version"])
        return found


NO_CHAMPION_ERRORS = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
"""MLflow's error codes for a model not registered (404) and for an alias it does not have (400)."""


def _no_champion(answer: httpx.Response) -> bool:
    if answer.status_code not in (400, 404):
        return False
    try:
        return str(answer.json().get("error_code")) in NO_CHAMPION_ERRORS
    except ValueError:
        return False


def _server_auth() -> tuple[str, str] | None:
    """MLflow's own variables for a server behind basic auth, as its client reads them."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    return (user, password) if user and password else None


def _server_headers() -> dict[str, str]:
    """MLflow's own variable for a server behind a bearer token."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


if __name__ == "__main__":  # the child: MLflow's registry read in a process of its own (`sendwise.registry`)
    import_lightgbm_without_sklearn()  # scikit-learn's import is a third of the child's start-up
    from sendwise.registry import child

    child()
