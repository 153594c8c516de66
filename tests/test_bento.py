"""`bentoml build` from the repository, as it is: the bento holds the service, the packages it imports, the
built-in templates, the demo brand and the lock's requirements. The image itself (`bentoml containerize`)
needs Docker, which the suite does not assume: docs/deploy.md describes it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement

from sendwise.raw import load_table
from tests.conftest import REPO_ROOT, home_with_own_decision_log
from tests.served import bentoml_serve

REQUIREMENTS = REPO_ROOT / "requirements.txt"
EXPORT = ["export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "--format", "requirements-txt"]
PACKAGES = ("sendwise/", "features/", "training/", "serving/")
BUILD_SECONDS = 900
TOKEN = "bento-test-token"


def _pins(text: str) -> set[str]:
    """The requirements of a requirements file, written one way (BentoML quotes markers its own way)."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return {str(Requirement(line)) for line in lines if line}


def test_requirements_txt_is_the_lock_exported() -> None:
    uv = shutil.which("uv")
    assert uv is not None, "uv is not on PATH (`make install-dev` installs it)"
    exported = subprocess.run([uv, *EXPORT], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    command = f"uv {' '.join(EXPORT)} -o requirements.txt"
    assert _pins(REQUIREMENTS.read_text()) == _pins(exported), f"requirements.txt is not uv.lock's: run `{command}`"


def test_the_served_version_is_pyprojects_where_the_distribution_is_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata

    from serving.service import sendwise_version

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    expected = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert sendwise_version() == expected
    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert sendwise_version() == expected


@dataclass
class Bento:
    tag: str
    home: Path
    info: dict[str, object]
    listed: list[dict[str, object]]
    path: Path

    def files(self) -> set[str]:
        source = self.path / "src"
        return {str(p.relative_to(source)) for p in source.rglob("*") if p.is_file()}


def _bentoml(*args: str, home: Path) -> str:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [str(Path(sys.executable).parent / "bentoml"), *args]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=BUILD_SECONDS)
    assert done.returncode == 0, f"bentoml {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> Bento:
    """`bentoml build` in the repository, into a BentoML home of its own; the bento as `bentoml` lists it."""
    home = tmp_path_factory.mktemp("bentoml")
    built = _bentoml("build", "--output", "tag", home=home)
    tag = built.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    info = json.loads(_bentoml("get", tag, "-o", "json", home=home))
    listed = json.loads(_bentoml("list", "-o", "json", home=home))
    return Bento(tag, home, info, listed, home / "bentos" / name / version)


@pytest.mark.slow
@pytest.mark.integration
def test_bentoml_lists_the_bento_of_the_service(bento: Bento) -> None:
    assert bento.tag.startswith("sendwise:")
    assert [entry["tag"] for entry in bento.listed] == [bento.tag]
    assert bento.info["service"] == "serving.service:Sendwise" and bento.info["name"] == "sendwise"
    schema = bento.info["schema"]
    assert isinstance(schema, dict)
    routes = {route["route"] for route in schema["routes"]}
    assert routes == {"/v1/decide", "/v1/render", "/v1/explain", "/v1/forget", "/v1/events"}


@pytest.mark.slow
@pytest.mark.integration
def test_the_bento_holds_the_packages_the_templates_and_the_demo_brand(bento: Bento) -> None:
    files = bento.files()
    tracked = subprocess.run(
        ["git", "ls-files", *PACKAGES], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(tracked) > 100
    assert set(tracked) - files == set(), "files of the packages missing from the bento"
    templates = {f for f in tracked if f.startswith("serving/templates/")}
    assert {"serving/templates/promotional.html.j2", "serving/templates/modules/hero_offer.txt.j2"} <= templates
    assert {
        "features/repo/views.py",
        "features/repo/services.py",
        "serving/service.py",
        "sendwise/settings.py",
    } <= files
    assert {"examples/brand.yaml", "pyproject.toml", "bentofile.yaml"} <= files
    outside = {f for f in files if not f.startswith(PACKAGES)} - {"examples/brand.yaml", "pyproject.toml"}
    assert outside == {"bentofile.yaml"}  # no tests, benchmarks, notebooks or state
    assert not [f for f in files if f.endswith((".pyc", ".db", ".parquet")) or "__pycache__" in f]


@pytest.mark.slow
@pytest.mark.integration
def test_the_bento_installs_the_locks_requirements_on_python_311_with_openmp(bento: Bento) -> None:
    installed = _pins((bento.path / "env" / "python" / "requirements.txt").read_text())
    assert installed == _pins(REQUIREMENTS.read_text())  # BentoML's own pin is the lock's too
    names = {pin.split("==")[0] for pin in installed}
    assert {"lightgbm", "feast", "mlflow", "bentoml", "redis"} <= names
    dockerfile = (bento.path / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and "libgomp1" in dockerfile


@pytest.mark.e2e
@pytest.mark.slow
def test_the_bento_serves_the_champions_and_renders_with_its_templates(  # type: ignore[no-untyped-def]
    bento: Bento, pipeline_home, tmp_path: Path
) -> None:
    """`bentoml serve sendwise:<version>`: the bento's own source, started outside the repository, on a copy of
    the pipeline's home."""
    settings = home_with_own_decision_log(pipeline_home.settings, tmp_path / "home")
    brand = str(bento.path / "src" / "examples" / "brand.yaml")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    served = bentoml_serve(
        settings, TOKEN, bento.tag, tmp_path, SENDWISE_BRAND_FILE=brand, BENTOML_HOME=str(bento.home)
    )
    with served as url:
        models = httpx.get(f"{url}/v1/models", headers=auth, timeout=30).json()
        customers = load_table(settings, "customers")
        assert customers is not None
        known = str(customers.loc[customers["consent_email"], "customer_id"].iloc[3])
        body = {"customer_id": known, "template": "newsletter", "campaign": {"kind": "newsletter"}}
        rendered = httpx.post(f"{url}/v1/render", json=body, headers=auth, timeout=60)
        document = httpx.get(f"{url}/docs.json", headers=auth, timeout=30)
    assert set(models["model_versions"]) == {"open_propensity", "send_time", "next_best_offer"}
    assert all(models["model_versions"].values())
    assert rendered.status_code == 200, rendered.text
    email = rendered.json()
    assert email["send"] and email["subject"] and "unsubscribe" in email["text"].lower()
    assert "newsletter_digest" in [m["name"] for m in email["modules"]]
    assert "sendwise demo shop" in email["html"]  # the demo brand, read from the bento's copy
    expected = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert document.status_code == 200 and document.json()["info"]["version"] == expected
