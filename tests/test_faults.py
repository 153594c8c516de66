"""Faults the service survives: the online features unreadable (a feature table renamed away or corrupted, from
the start or during a refresh) keep the answers coming from the last features read, marked degraded in the
answers and in the metrics, until the files are readable again."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sendwise.raw import load_table
from sendwise.settings import Settings
from serving.http_app import status_metrics
from serving.schemas import DecideRequest, DecideResponse, Recipient

pytestmark = [pytest.mark.integration]
START = datetime(2026, 12, 5, 3, tzinfo=UTC)
TABLE = "customer_features.parquet"


@pytest.fixture(scope="module")
def consenting(pipeline_home) -> list[str]:  # type: ignore[no-untyped-def]
    frame = load_table(pipeline_home.settings, "customers")
    assert frame is not None
    return frame.loc[frame["consent_email"], "customer_id"].head(100).tolist()


def _copied_home(pipeline_home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:  # type: ignore[no-untyped-def]
    """A copy of the pipeline's home (modification times kept), the environment pointed at it, and the engine
    looking for changed files at every decide."""
    import serving.online as online_module

    home = tmp_path / "home"
    shutil.copytree(pipeline_home.settings.home, home)
    for key, value in Settings(home=home).library_environment().items():
        monkeypatch.setenv(key, value)
    settings = Settings(home=home)
    settings.activate()
    monkeypatch.setattr(online_module, "SNAPSHOT_CHECK_SECONDS", 0.0)
    return settings


def _decide(engine, ids: list[str]) -> DecideResponse:  # type: ignore[no-untyped-def]
    return engine.decide(DecideRequest(recipients=[Recipient(customer_id=c) for c in ids], window_start=START))


def _answers(answer: DecideResponse) -> dict[str, tuple[bool, object, bool]]:
    return {d.customer_id: (d.send, d.send_at, d.cold_start) for d in answer.decisions}


def test_a_table_renamed_away_during_a_refresh_keeps_the_last_features_until_it_is_back(  # type: ignore[no-untyped-def]
    pipeline_home, consenting, tmp_path, monkeypatch
) -> None:
    from serving.engine import Engine

    settings = _copied_home(pipeline_home, tmp_path, monkeypatch)
    engine = Engine.load(settings)
    healthy = _decide(engine, consenting)
    assert healthy.status == "ok" and healthy.reasons == []
    assert not any(d.cold_start for d in healthy.decisions)

    table = settings.feature_tables_dir / TABLE
    away = table.with_name("moved-away.bin")
    table.rename(away)  # the signature changes: the next decide reads the tables again, and fails
    degraded = _decide(engine, consenting)
    assert degraded.status == "degraded"
    (reason,) = degraded.reasons
    assert reason.startswith("online features unavailable: FileNotFoundError:") and TABLE in reason
    assert _answers(degraded) == _answers(healthy)  # the same decisions, from the features read before
    assert engine.status()["status"] == "degraded" and engine.status()["reasons"] == [reason]
    metrics = status_metrics(engine.status(), engine.model_versions()).splitlines()
    assert "sendwise_degraded 1" in metrics
    assert f"sendwise_degraded_decisions_total {len(consenting)}" in metrics
    assert _decide(engine, consenting).status == "degraded"  # not read again until the files change

    away.rename(table)  # back as it was read: the snapshot in memory is its own again
    recovered = _decide(engine, consenting)
    assert recovered.status == "ok" and recovered.reasons == []
    assert engine.status()["status"] == "ok"
    metrics = status_metrics(engine.status(), engine.model_versions()).splitlines()
    assert "sendwise_degraded 0" in metrics
    assert f"sendwise_degraded_decisions_total {2 * len(consenting)}" in metrics  # a counter: it never goes down


def test_a_corrupted_table_is_read_again_once_a_good_one_replaces_it(  # type: ignore[no-untyped-def]
    pipeline_home, consenting, tmp_path, monkeypatch
) -> None:
    from serving.engine import Engine

    settings = _copied_home(pipeline_home, tmp_path, monkeypatch)
    engine = Engine.load(settings)
    first = engine.online.state
    table = settings.feature_tables_dir / TABLE
    good = table.read_bytes()
    table.write_bytes(good[: len(good) // 2])  # a write cut short
    answer = _decide(engine, consenting)
    assert answer.status == "degraded" and TABLE in answer.reasons[0]
    assert engine.online.state is first
    assert sum(d.send for d in answer.decisions) == sum(d.send for d in _decide(engine, consenting).decisions) > 50

    table.write_bytes(good)  # a new modification time: read again
    assert _decide(engine, consenting).status == "ok"
    assert engine.online.state is not first
    assert engine.status()["reasons"] == []


def test_without_any_features_read_the_answers_come_from_population_priors(  # type: ignore[no-untyped-def]
    pipeline_home, consenting, tmp_path, monkeypatch
) -> None:
    """Started while a table is unreadable: the service starts, every customer is decided as a newcomer with
    the population's priors and the request's context, and the answers say so."""
    from serving.engine import Engine

    settings = _copied_home(pipeline_home, tmp_path, monkeypatch)
    table = settings.feature_tables_dir / TABLE
    good = table.read_bytes()
    table.write_bytes(b"not parquet")
    engine = Engine.load(settings)
    answer = engine.decide(
        DecideRequest(
            recipients=[Recipient(customer_id=c, timezone="Asia/Tokyo") for c in consenting[:20]],
            window_start=START,
        )
    )
    assert answer.status == "degraded" and TABLE in answer.reasons[0]
    assert all(d.cold_start and d.send for d in answer.decisions)
    sent_at = {d.send_at for d in answer.decisions}
    assert len(sent_at) == 1  # one prior for one time zone, nobody's own history
    assert all(0.0 < (d.open_probability or 0.0) < 1.0 for d in answer.decisions)

    table.write_bytes(good)
    recovered = _decide(engine, consenting[:20])
    assert recovered.status == "ok" and not any(d.cold_start for d in recovered.decisions)
