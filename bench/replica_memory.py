"""`python -m bench.replica_memory HOME REDIS_URL`: where a Redis replica's memory goes, step by step.

One process does what the service's worker does, in order (the libraries imported, LightGBM without its
scikit-learn estimators as the worker imports it, the champions exported by a child process and their boosters
loaded, as the worker keeps MLflow out of its process, numba's compiled walk where
the settings compile the trees (not on Redis unless `SENDWISE_COMPILED_TREES=on`), Feast's
store opened online-only, the offers' features read, `Engine.load`, then two decides
of 10,000 customers drawn from the home's customers table), and prints its resident set after each step and its
peak (`VmHWM`) at the end. HOME is a home whose online store is materialized in the Redis at REDIS_URL (e.g.
benchmark 7's replica, or a copy of the benchmark's home materialized with `SENDWISE_ONLINE_STORE=redis`).
Nothing here is a test: figures are printed. Each step is imported here, not at the module's top, so that its
memory is counted where it is loaded.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False)


def _status(field: str) -> float:
    """A `/proc/self/status` figure in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _step(name: str) -> None:
    print(f"{name:<48} {_status('VmRSS'):7.0f} MB", flush=True)


@app.command()
def main(
    home: Annotated[Path, typer.Argument(help="a home whose online store is materialized in Redis")],
    redis_url: Annotated[str, typer.Argument(help="redis://host:port/db it was materialized into")],
    window_start: Annotated[
        datetime, typer.Option(help="the decides' window start, UTC (default: this hour)", formats=["%Y-%m-%dT%H:%M"])
    ]
    | None = None,
    seed: int = 0,
) -> None:
    _step("python")
    import serving.service  # noqa: F401
    from sendwise.champions import import_lightgbm_without_sklearn

    _step("+ the service module (bentoml)")
    import_lightgbm_without_sklearn()
    import numpy as np
    import pandas  # noqa: F401

    _step("+ lightgbm (no scikit-learn), numpy, pandas")
    import feast  # noqa: F401
    import lightgbm  # noqa: F401
    import pyarrow  # noqa: F401

    _step("+ pyarrow, feast")
    from sendwise.champions import load_champions_apart
    from sendwise.raw import load_table
    from sendwise.settings import Settings

    settings = Settings(home=home, online_store="redis", redis_url=redis_url)
    settings.activate()
    models = load_champions_apart(settings.tracking_uri)
    _step("+ the champions (exported by a child process)")
    from serving.curves import use_compiled_trees

    use_compiled_trees(settings.uses_compiled_trees)
    _step("+ numba's compiled walk" if settings.uses_compiled_trees else "+ no compiled walk (LightGBM predicts)")
    from features.store import open_store

    store = open_store(settings, online_only=True)
    _step("+ Feast's store opened (online only)")
    from serving.offers import read_offer_features

    offers = load_table(settings, "offers")
    read_offer_features(store, offers)
    _step("+ the offers' features (get_online_features)")
    del models, store
    from bench.inprocess import decide_request
    from serving.engine import Engine

    engine = Engine.load(settings, log_decisions=False, champions=lambda: load_champions_apart(settings.tracking_uri))
    _step("+ Engine.load (its own champions and store)")
    customers = load_table(settings, "customers")
    if customers is None:
        raise typer.BadParameter(f"{home} has no customers table", param_hint="HOME")
    ids = customers["customer_id"].astype(str).to_numpy()
    start = (window_start or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0, tzinfo=UTC)
    rng = np.random.default_rng(seed)
    for k in range(2):
        engine.decide_chunks(decide_request(rng.choice(ids, min(10_000, len(ids)), replace=False).tolist(), start))
        _step(f"+ decide {k + 1} of 10,000")
    print(f"{'peak (VmHWM)':<48} {_status('VmHWM'):7.0f} MB")


if __name__ == "__main__":
    app()
