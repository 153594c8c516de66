"""`sendwise serve`: it refuses to listen beyond this machine without a token, and starts `bentoml serve` otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import sendwise.cli as cli
from sendwise.settings import Settings


@pytest.fixture
def started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The commands `serve` would run (none is run); the home and environment are this test's own."""
    for key, value in Settings(home=tmp_path / "home").library_environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SENDWISE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SENDWISE_API_TOKEN", raising=False)
    commands: list[list[str]] = []

    def call(command: list[str], **_: object) -> int:
        commands.append(command)
        return 0

    monkeypatch.setattr(cli.subprocess, "call", call)
    return commands


def said(output: str) -> str:
    """What the command printed, as one line (rich wraps at the terminal's width)."""
    return " ".join(output.split())


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "sendwise.example.com"])
def test_serve_refuses_an_address_beyond_loopback_without_a_token(host: str, started: list[list[str]]) -> None:
    result = CliRunner().invoke(cli.app, ["serve", "--host", host])

    assert result.exit_code == 2
    assert f"refusing to serve on {host} without SENDWISE_API_TOKEN" in said(result.output)
    assert "Set SENDWISE_API_TOKEN" in said(result.output) and "serve on 127.0.0.1" in said(result.output)
    assert started == []


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_serve_starts_on_loopback_without_a_token_and_warns(host: str, started: list[list[str]]) -> None:
    result = CliRunner().invoke(cli.app, ["serve", "--host", host, "--port", "3999"])

    assert result.exit_code == 0, result.output
    assert "answers this machine without authentication" in said(result.output)
    (command,) = started
    assert command[-5:] == ["serving.service:Sendwise", "--host", host, "--port", "3999"]


def test_serve_starts_on_any_address_with_a_token(started: list[list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENDWISE_API_TOKEN", "a-token")

    result = CliRunner().invoke(cli.app, ["serve", "--host", "0.0.0.0"])

    assert result.exit_code == 0, result.output
    assert "without authentication" not in said(result.output) and "refusing" not in said(result.output)
    (command,) = started
    assert command[-4:] == ["--host", "0.0.0.0", "--port", "3000"]
