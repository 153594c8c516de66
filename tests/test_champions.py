"""How a service finds its champions without MLflow in its process (`sendwise.champions`): what it says when the
registry cannot be read, and when it asks a child process. The real registries are read by
tests/test_champion_swap.py (the home's SQLite store) and tests/test_tracking_server.py (a real server)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from sendwise import champions
from sendwise.champions import ChampionAliases, RegistryUnreadable, load_champions_apart, shown_uri


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql://mlflow:s3cret@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        ("http://mlflow:5000", "http://mlflow:5000"),
        ("sqlite:////srv/home/mlruns/mlflow.db", "sqlite:////srv/home/mlruns/mlflow.db"),
    ],
)
def test_messages_show_a_tracking_uri_without_its_password(uri: str, shown: str) -> None:
    assert shown_uri(uri) == shown


def test_a_registry_that_cannot_be_read_is_named_without_its_password() -> None:
    """The child process fails (no MySQL driver is installed); the error says what failed where and why, and the
    password, which went to the child by environment, never on its command line, is not in it."""
    with pytest.raises(RegistryUnreadable) as failed:
        load_champions_apart("mysql://mlflow:s3cret@127.0.0.1:9/mlflow")
    said = str(failed.value)
    assert said.startswith("export from the model registry at mysql://mlflow:***@127.0.0.1:9/mlflow failed: ")
    assert "No module named" in said and "s3cret" not in said


class _Registry(BaseHTTPRequestHandler):
    """MLflow's alias route as a tracking server answers it: a version, no such alias (400), or a failure."""

    answers: ClassVar[dict[str, tuple[int, dict[str, object]]]] = {}

    def do_GET(self) -> None:  # the name http.server calls
        name = self.path.split("name=")[1].split("&")[0]
        status, body = self.answers[name]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def registry_server() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_the_aliases_come_from_the_servers_rest_api(registry_server: str) -> None:
    no_alias: dict[str, object] = {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "Registered model alias champion not found.",
    }
    _Registry.answers = {
        "open_propensity": (200, {"model_version": {"name": "open_propensity", "version": "4"}}),
        "send_time": (400, no_alias),
        "next_best_offer": (404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such model"}),
    }
    assert ChampionAliases(registry_server).versions() == {"open_propensity": "4"}
    _Registry.answers["send_time"] = (500, {"error_code": "INTERNAL_ERROR", "message": "database is locked"})
    with pytest.raises(RegistryUnreadable, match=r"answered 500 for send_time's champion: .*database is locked"):
        ChampionAliases(registry_server).versions()


class _CountedChild:
    """Stands in for the child process: counts the times it is asked."""

    asked = 0

    def __init__(self, arguments: list[str], tracking_uri: str) -> None:
        assert arguments == ["versions"]
        type(self).asked += 1

    def output(self) -> str:
        return json.dumps({"open_propensity": str(type(self).asked)})


def test_a_sqlite_store_is_asked_again_only_when_its_file_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "mlflow.db"
    database.write_bytes(b"one")
    monkeypatch.setattr(champions, "_RegistryChild", _CountedChild)
    _CountedChild.asked = 0
    aliases = ChampionAliases(f"sqlite:///{database}")
    assert aliases.versions() == aliases.versions() == {"open_propensity": "1"}
    database.write_bytes(b"changed")
    assert aliases.versions() == {"open_propensity": "2"}
    assert _CountedChild.asked == 2
