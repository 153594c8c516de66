"""End to end, on the real `bentoml serve` answering a client in a loop: a champion promoted is served without a
restart and without a failed request; a feature table gone makes the answers degraded, never failed, until it
is back. In process: the watcher and the engine it swaps in."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from sendwise.raw import load_table
from sendwise.settings import Settings
from tests.conftest import home_with_own_decision_log
from tests.served import bentoml_serve

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]
TOKEN = "swap-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


@dataclass
class Served:
    url: str
    settings: Settings


@pytest.fixture(scope="module")
def service(pipeline_home, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    """`bentoml serve` on a copy of the pipeline's home, looking at the champion aliases every second."""
    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path_factory.mktemp("served") / "home")
    with bentoml_serve(settings, TOKEN, SENDWISE_CHAMPION_POLL_SECONDS="1") as url:
        yield Served(url, settings)


@dataclass
class Client:
    """Sends decides in a loop (single recipients and small batches, in turn) until stopped."""

    url: str
    ids: list[str]
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers=AUTH, timeout=60) as http:
            while not self.stop.is_set():
                size = 1 if self.sent % 2 else 20
                at = (self.sent * 7) % (len(self.ids) - size)
                body = {
                    "recipients": [{"customer_id": c} for c in self.ids[at : at + size]],
                    "window_start": START.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
                self.sent += 1
                try:
                    answer = http.post("/v1/decide", json=body)
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                    continue
                if answer.status_code != 200 or len(answer.json()["decisions"]) != size:
                    self.failures.append(f"{answer.status_code}: {answer.text[:200]}")
                    continue
                self.versions[str(answer.json()["model_versions"]["open_propensity"])] += 1


def test_a_promoted_champion_is_served_without_a_restart_or_a_failed_request(service: Served) -> None:
    from mlflow import MlflowClient

    from training.registry import alias_version, make_champion

    customers = load_table(service.settings, "customers")
    assert customers is not None
    client = Client(service.url, customers.loc[customers["consent_email"], "customer_id"].head(500).tolist())
    loop = threading.Thread(target=client.run, daemon=True)
    loop.start()

    uri = service.settings.tracking_uri
    registry = MlflowClient(tracking_uri=uri, registry_uri=uri)
    old = alias_version(registry, "open_propensity", "champion")
    assert old is not None
    while client.sent < 20:  # the loop is answering before the promotion
        time.sleep(0.1)
    new = registry.copy_model_version(f"models:/open_propensity/{old}", "open_propensity").version
    make_champion(registry, "open_propensity", str(new), "a copy of the champion, promoted by the swap test")

    deadline = time.monotonic() + 120
    while client.versions[str(new)] < 20 and time.monotonic() < deadline and loop.is_alive():
        time.sleep(0.2)
    client.stop.set()
    loop.join(60)

    assert client.failures == []
    assert client.versions[str(old)] > 0 and client.versions[str(new)] >= 20, client.versions
    served = httpx.get(f"{service.url}/v1/models", headers=AUTH, timeout=30).json()
    assert served["model_versions"]["open_propensity"] == str(new)
    assert served["model_versions"]["send_time"] == alias_version(registry, "send_time", "champion")
    assert served["status"] == "ok"


def _decide(http: httpx.Client, ids: list[str]) -> dict[str, object]:
    body = {"recipients": [{"customer_id": c} for c in ids], "window_start": START.strftime("%Y-%m-%dT%H:%M:%SZ")}
    answer = http.post("/v1/decide", json=body)
    assert answer.status_code == 200, answer.text
    found: dict[str, object] = answer.json()
    return found


def _until(http: httpx.Client, ids: list[str], status: str) -> dict[str, object]:
    """Decides until an answer has `status` (the service reads changed tables in the background, every 10 s)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        answer = _decide(http, ids)
        if answer["status"] == status:
            return answer
        time.sleep(0.5)
    raise AssertionError(f"no answer was {status} in 90 s")


def test_a_feature_table_gone_degrades_the_answers_and_metrics_and_leaves_the_service_ready(
    service: Served,
) -> None:
    customers = load_table(service.settings, "customers")
    assert customers is not None
    ids = customers.loc[customers["consent_email"], "customer_id"].head(30).tolist()
    table = service.settings.feature_tables_dir / "customer_features.parquet"
    away = table.with_name("customer_features.moved")
    with httpx.Client(base_url=service.url, headers=AUTH, timeout=60) as http:
        healthy = _decide(http, ids)
        assert healthy["status"] == "ok" and healthy["reasons"] == []
        table.rename(away)
        try:
            degraded = _until(http, ids, "degraded")
            reasons = degraded["reasons"]
            assert isinstance(reasons, list) and len(reasons) == 1 and "customer_features.parquet" in reasons[0]
            sends = [(d["customer_id"], d["send"], d["cold_start"]) for d in degraded["decisions"]]  # type: ignore[attr-defined]
            assert sends == [(d["customer_id"], d["send"], d["cold_start"]) for d in healthy["decisions"]]  # type: ignore[attr-defined]
            assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200
            models = http.get("/v1/models").json()
            assert models["status"] == "degraded" and models["reasons"] == reasons
            metrics = httpx.get(f"{service.url}/metrics", timeout=10).text.splitlines()
            assert "sendwise_degraded 1" in metrics
            (counted,) = [line for line in metrics if line.startswith("sendwise_degraded_decisions_total ")]
            assert int(float(counted.split()[1])) >= len(ids)
        finally:
            away.rename(table)
        _until(http, ids, "ok")
        assert http.get("/v1/models").json()["reasons"] == []
        assert "sendwise_degraded 0" in httpx.get(f"{service.url}/metrics", timeout=10).text.splitlines()


def test_the_watcher_swaps_in_a_new_offer_champion_and_keeps_serving_when_one_cannot_load(  # type: ignore[no-untyped-def]
    pipeline_home, tmp_path, monkeypatch
) -> None:
    """In process: a new next_best_offer champion (a copy of the booster) gives an engine whose offers were scored
    again by it, with the same answers; a champion that cannot be loaded leaves the engine served as it was."""
    from mlflow import MlflowClient

    from serving.champions import ChampionWatcher
    from serving.engine import Engine
    from serving.schemas import DecideRequest, Recipient
    from training.registry import alias_version, make_champion

    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path / "home")
    for key, value in settings.library_environment().items():
        monkeypatch.setenv(key, value)
    engine = Engine.load(settings)
    served = [engine]
    watcher = ChampionWatcher(settings, lambda: served[-1], served.append)
    assert not watcher.check()  # nothing promoted: nothing loaded

    uri = settings.tracking_uri
    registry = MlflowClient(tracking_uri=uri, registry_uri=uri)
    old = alias_version(registry, "next_best_offer", "champion")
    new = str(registry.copy_model_version(f"models:/next_best_offer/{old}", "next_best_offer").version)
    make_champion(registry, "next_best_offer", new, "a copy, promoted by the swap test")
    assert watcher.check()
    swapped = served[-1]
    assert swapped.model_versions() == {**engine.model_versions(), "next_best_offer": new}
    assert engine.model_versions()["next_best_offer"] == old  # the old engine is left whole for running requests
    assert swapped.models["open_propensity"] is engine.models["open_propensity"]  # unchanged champions kept
    assert swapped.online.state is not engine.online.state  # offers scored again by the new champion
    assert swapped.online.state.snapshot is engine.online.state.snapshot  # the features were not read again
    customers = load_table(settings, "customers")
    assert customers is not None
    ids = customers.loc[customers["consent_email"], "customer_id"].head(50).tolist()
    request = DecideRequest(recipients=[Recipient(customer_id=c) for c in ids], window_start=START, k_offers=3)
    offers = [
        [(o.offer_id, round(o.conversion_probability, 9)) for o in d.offers] for d in engine.decide(request).decisions
    ]
    again = [
        [(o.offer_id, round(o.conversion_probability, 9)) for o in d.offers] for d in swapped.decide(request).decisions
    ]
    assert again == offers and sum(map(len, offers)) > 50

    broken = str(registry.copy_model_version(f"models:/next_best_offer/{new}", "next_best_offer").version)
    make_champion(registry, "next_best_offer", broken, "a version that cannot be loaded")
    monkeypatch.setattr("serving.champions.load_champions_apart", _gone)
    with pytest.raises(OSError, match="gone"):
        watcher.check()
    assert served[-1] is swapped and swapped.model_versions()["next_best_offer"] == new


def _gone(tracking_uri: str, versions: dict[str, str]) -> None:
    raise OSError(f"the files of {versions} are gone from {tracking_uri}")
