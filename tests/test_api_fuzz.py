"""The HTTP API fuzzed from its own OpenAPI document by schemathesis, on the real `bentoml serve`.

The served home is a copy of the small world's pipeline home with a decision log of its own. schemathesis
reads `/docs.json` (with the token) and runs its coverage phase (boundary values of every field) and its
fuzzing phase (random requests, valid and invalid) on every route, with every check but one:

- no 5xx, and an answer within `REQUEST_TIMEOUT` seconds (no hang);
- every status code, content type and answer body as the document says;
- every request the document allows is accepted (no 4xx but 401 and 404);
- a route with security answers 401 without the token.

`negative_data_rejection` (a request the document does not allow must be refused) is left out on purpose:
the service reads JSON as pydantic's lax mode does (`"24"` for 24, any offset for a whole hour), and the
document promises the narrower form, which is what generators need.
The run is bounded: `MAX_EXAMPLES` per route in a test, `REQUEST_TIMEOUT` seconds per request (a request
without an answer by then is a failure), and `MAX_SECONDS` in all (schemathesis' `--max-time`: the fuzzing
phase goes on until then), so it takes about a minute and a half after the service is up. The service logs
every request it answers (decide too), which is how the routes' answers are counted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO_ROOT, PipelineHome, home_with_own_decision_log
from tests.served import bentoml_serve

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]
TOKEN = "fuzz-token"
MAX_EXAMPLES = 30
MAX_SECONDS = 90
REQUEST_TIMEOUT = 60
SEED = 20261126
ROUTES = [
    "GET /healthz",
    "GET /livez",
    "GET /readyz",
    "GET /metrics",
    "POST /v1/decide",
    "POST /v1/render",
    "POST /v1/explain",
    "POST /v1/events",
    "GET /v1/models",
]


@dataclass
class Served:
    url: str
    log: Path


@pytest.fixture(scope="module")
def service(pipeline_home: PipelineHome, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The service on a home of its own, access-logging `/v1/decide` too (the log is what counts requests)."""
    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path_factory.mktemp("fuzz") / "home")
    with bentoml_serve(settings, TOKEN, SENDWISE_TRACE_DECIDE="true") as url:
        yield Served(url, settings.home / "serve.log")


def answered(log: Path) -> Counter[tuple[str, int]]:
    """How many requests the service answered, by route and status, from its access log."""
    pattern = re.compile(r"method=(\w+),path=([^,]+),.*?\(status=(\d+)")
    return Counter((f"{m[1]} {m[2]}", int(m[3])) for m in pattern.finditer(log.read_text(errors="replace")))


@pytest.fixture(scope="module")
def fuzz_report(service: Served, customers: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """schemathesis' JSON report of one bounded run over the service (its output on failure)."""
    workdir = tmp_path_factory.mktemp("schemathesis")  # it keeps a cache in the directory it runs in
    report = workdir / "report.json"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks",
        "SENDWISE_FUZZ_CUSTOMERS": ",".join(customers["customer_id"].astype(str).head(50)),
    }
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{service.url}/docs.json",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--phases",
        "examples,coverage,fuzzing",
        "--checks",
        "all",
        "--exclude-checks",
        "negative_data_rejection",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--max-time",
        str(MAX_SECONDS),
        "--request-timeout",
        str(REQUEST_TIMEOUT),
        "--seed",
        str(SEED),
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    run = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=MAX_SECONDS + 120)
    answer: dict = json.loads(report.read_text()) if report.exists() else {}
    answer["output"] = run.stdout[-20_000:] + run.stderr[-4_000:]
    answer["returncode"] = run.returncode
    answer["answered"] = answered(service.log)
    return answer


def test_fuzzing_finds_no_failure(fuzz_report: dict) -> None:
    assert fuzz_report["returncode"] == 0, fuzz_report["output"]
    assert fuzz_report["failures"] == [] and fuzz_report["errors"] == [], fuzz_report["output"]


def test_every_route_is_fuzzed_with_hundreds_of_requests(fuzz_report: dict) -> None:
    assert fuzz_report["operations"]["tested"] == len(ROUTES), fuzz_report["output"]
    assert sorted(fuzz_report["valid_rates"]) == sorted(ROUTES)
    assert fuzz_report["test_cases"]["generated"] >= 500
    assert fuzz_report["warnings"]["unsupported_regex"] == []
    assert fuzz_report["warnings"]["unresolvable_reference"] == []


def test_fuzzing_reaches_every_route_with_requests_it_answers(fuzz_report: dict) -> None:
    """Every /v1 route answers dozens of fuzzed requests, some of them 200: explain with a known customer
    (tests/fuzz_hooks.py), render and decide with any, events with rows the document allows (202); and a 401
    where the token is left out."""
    answered: Counter[tuple[str, int]] = fuzz_report["answered"]
    for route, ok in [
        ("POST /v1/decide", 200),
        ("POST /v1/render", 200),
        ("POST /v1/explain", 200),
        ("POST /v1/events", 202),
        ("GET /v1/models", 200),
    ]:
        by_status = {status: n for (seen, status), n in answered.items() if seen == route}
        assert by_status.get(ok, 0) > 0 and by_status.get(401, 0) > 0, (route, by_status)
        assert not any(status >= 500 for status in by_status), (route, by_status)
    for route in ["POST /v1/decide", "POST /v1/render", "POST /v1/explain"]:
        # How schemathesis shares its time budget among the routes varies from run to run (2,511 decides and 46
        # renders in one run, 38 decides and 409 renders in another): the run as a whole is held to hundreds.
        assert sum(n for (seen, _), n in answered.items() if seen == route) >= 25, answered
