"""The notebooks: committed without outputs, and executed (nbclient, a real kernel) on copies of the small
world's home, with Jupyter's and IPython's files in that home rather than the user's."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from mlflow import MlflowClient
from nbclient import NotebookClient

from features.store import open_store
from sendwise.settings import Settings
from tests.conftest import REPO_ROOT
from training import explore
from training.registry import PREVIOUS_CHAMPION, ROLLED_BACK, alias_version

NOTEBOOKS = REPO_ROOT / "notebooks"
NOTEBOOK_NAMES = ["retrain.ipynb", "explore.ipynb"]
USER_DIRS = [Path.home() / ".jupyter", Path.home() / ".ipython", Path.home() / ".local" / "share" / "jupyter"]


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebooks_are_committed_without_outputs(name: str) -> None:
    for cell in read(name).cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a cell has outputs: {cell.source[:60]!r}"
            assert cell.execution_count is None, f"{name}: a cell has an execution count: {cell.source[:60]!r}"


@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebooks_take_their_inputs_first_and_define_nothing(name: str) -> None:
    """The first code cell is the parameters, read from the environment; no cell defines a function or a
    class (what the notebooks do lives in the packages)."""
    cells = [cell for cell in read(name).cells if cell.cell_type == "code"]
    assert "parameters" in cells[0].metadata.get("tags", [])
    assert 'HOME = Path(os.environ.get("SENDWISE_HOME", REPO))' in cells[0].source
    for cell in cells:
        lines = cell.source.splitlines()
        assert not [line for line in lines if line.lstrip().startswith(("def ", "class ", "lambda"))], cell.source


def execute(name: str, settings: Settings, monkeypatch: pytest.MonkeyPatch, **inputs: str) -> nbformat.NotebookNode:
    """Run a notebook in a real kernel on `settings`' home, as a person's Jupyter would; the executed notebook.

    Jupyter's runtime files (the kernel's connection file) are written by this process, the rest by the kernel:
    both get the home's environment.
    """
    for key, value in settings.library_environment().items():
        monkeypatch.setenv(key, value)
    book = read(name)
    client = NotebookClient(book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env={**os.environ, "OMP_NUM_THREADS": "1", **inputs})
    return book


def outputs(cell: nbformat.NotebookNode, kind: str) -> str:
    """Everything a cell showed of one MIME type (or its printed text, for "stream")."""
    if kind == "stream":
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    return "".join(o.get("data", {}).get(kind, "") for o in cell.outputs)


def cell_with(book: nbformat.NotebookNode, source: str) -> nbformat.NotebookNode:
    (found,) = [cell for cell in book.cells if cell.cell_type == "code" and source in cell.source]
    return found


def copy_home(pipeline_home, home: Path) -> Settings:  # type: ignore[no-untyped-def]
    shutil.copytree(pipeline_home.settings.home, home, ignore=shutil.ignore_patterns("decisions"))
    return Settings(home=home)


@pytest.mark.integration
def test_retrain_notebook_trains_compares_promotes_and_rolls_back(
    pipeline_home,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = copy_home(pipeline_home, tmp_path / "home")
    user_dirs = {path: path.exists() for path in USER_DIRS}
    book = execute(
        "retrain.ipynb",
        settings,
        monkeypatch,
        DATA_DIR=str(pipeline_home.world),
        MODEL="open",
        TUNE_TRIALS="2",
        TUNE_TIMEOUT_S="300",
        ROLL_BACK="true",
    )
    assert {path: path.exists() for path in USER_DIRS} == user_dirs  # nothing written in the user's home
    assert (settings.home / ".ipython").is_dir()

    trained = outputs(cell_with(book, "jobs.train(settings, options"), "stream")
    assert "tuned open_propensity: 2 trials" in trained
    summary = outputs(cell_with(book, "compare.summary("), "text/html")
    assert "challenger wins" in summary and "open_propensity" in summary
    assert "image/png" in json.dumps([o.get("data", {}) for o in cell_with(book, "plot_comparison").outputs])

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    version = client.get_model_version("open_propensity", "2")
    assert version.run_id is not None
    kept = json.loads(
        Path(
            client.download_artifacts(version.run_id, "comparisons/open_propensity_v2_vs_v1.json", str(tmp_path))
        ).read_text()
    )
    # the comparison the notebook showed is the decision training made on that window, figure for figure
    (decided,) = json.loads(
        Path(client.download_artifacts(version.run_id, "promotion.json", str(tmp_path))).read_text()
    )["promotions"]
    assert kept["versions"]["challenger"]["AUC"] == pytest.approx(decided["challenger_score"], abs=1e-12)
    assert kept["versions"]["champion"]["AUC"] == pytest.approx(decided["champion_score"], abs=1e-12)
    assert kept["challenger_wins"] == decided["wins"]
    assert f"{kept['versions']['challenger']['AUC']:.6f}" in summary  # pandas shows six decimals
    if kept["challenger_wins"]:  # promoted, then rolled back (ROLL_BACK=true): v1 serves again
        assert version.tags[PREVIOUS_CHAMPION] == "1"
        assert "v1 is champion again in place of v2" in version.tags[ROLLED_BACK]
    else:  # kept as challenger, nothing to roll back
        assert PREVIOUS_CHAMPION not in version.tags and ROLLED_BACK not in version.tags
        assert alias_version(client, "open_propensity", "challenger") == "2"
    assert alias_version(client, "open_propensity", "champion") == "1"
    assert version.tags["promotion"] == kept["verdict"]
    for untouched in ("send_time", "next_best_offer"):  # MODEL=open trains the open model alone
        assert alias_version(client, untouched, "champion") == "1"
        assert len(client.search_model_versions(f"name='{untouched}'")) == 1


@pytest.mark.integration
def test_explore_notebook_shows_features_drivers_and_segments(
    pipeline_home,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = copy_home(pipeline_home, tmp_path / "home")
    book = execute("explore.ipynb", settings, monkeypatch, MODEL_NAME="open_propensity", SEGMENT_BY="open_rate")
    catalog = explore.feature_catalog(open_store(settings))
    shown = outputs(cell_with(book, "explore.feature_catalog(store)"), "text/html")
    assert f"{len(catalog)} rows × 5 columns" in shown and "next_best_offer_v1" in shown
    top = explore.champion_drivers(settings, "open_propensity").table()["reads as"].iloc[0]
    assert top in outputs(cell_with(book, "drivers.table()"), "text/html")
    segments = outputs(cell_with(book, "explore.segments("), "text/html")
    assert "open_rate SHAP (log-odds)" in segments and "also sets it apart" in segments
    for source in ("explore.plot_distributions(latest)", "explore.plot_drivers(drivers)"):
        assert outputs(cell_with(book, source), "image/png"), f"{source} showed no figure"
