"""Held-out AUC and wall time of the open and offer models fit in process and on a two-worker Dask LocalCluster,
on the same training sets of one simulated world (what tests/test_dask_training.py asserts, printed).

    uv run --no-sync python -m bench.dask_training [--customers 4000 --days 60 --seed 3 --dir DIR]

Not part of `python -m bench`: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from distributed import Client, LocalCluster
from rich.console import Console
from rich.table import Table

from sendwise.settings import Settings
from sendwise.simulator import simulate
from training import jobs
from training.cluster import DaskFitter
from training.datasets import TrainingSet, offer_training_set, open_training_set
from training.models import IN_PROCESS, FittedModel, Fitter, fit_binary
from training.train import OFFER_PARAMS


def _timed(
    fitter: Fitter, data: TrainingSet, params: dict[str, object], seed: int, recalibrate: bool
) -> tuple[FittedModel, float]:
    started = time.perf_counter()
    fitted = fit_binary(data, seed=seed, params=params, recalibrate=recalibrate, fitter=fitter)
    return fitted, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=4000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=3, help="the world's seed")
    parser.add_argument("--fit-seeds", type=int, nargs="+", default=[7, 8, 9], help="the models' seeds")
    parser.add_argument("--dir", type=Path, default=None, help="where the world and its home go (default: a temp dir)")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="sendwise-dask-"))
    world, home = root / "world", root / "home"
    if not world.exists():
        simulate(world, customers=args.customers, days=args.days, seed=args.seed, progress=False)
    settings = Settings(home=home)
    settings.activate()
    if not settings.raw_dir.exists():
        jobs.ingest(settings, world, progress=False)
    features = jobs.build_features(settings, progress=False)
    open_set = open_training_set(features.store, features.tables, settings.label_window_hours)
    offer = offer_training_set(features.store, features.tables, settings.conversion_window_days)
    if open_set is None or offer is None:
        raise SystemExit("the world is too small to train both models")
    one_thread: dict[str, object] = {"num_threads": 1}
    table = Table(
        "model", "rows (held out)", "AUC in process", "AUC on Dask", "difference", "s in process", "s on Dask"
    )
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, Client(cluster) as client:
        on_dask = DaskFitter(client, cluster.scheduler_address)
        for name, data, params, recalibrate in (
            ("open_propensity", open_set, one_thread, True),
            ("next_best_offer", offer[0], {**OFFER_PARAMS, **one_thread}, False),
        ):
            pairs = []
            for seed in args.fit_seeds:
                local, local_s = _timed(IN_PROCESS, data, params, seed, recalibrate)
                remote, remote_s = _timed(on_dask, data, params, seed, recalibrate)
                a, b = local.metrics["valid_auc"], remote.metrics["valid_auc"]
                pairs.append((a, b))
                rows = f"{len(data.label):,} ({int(data.valid.sum()):,})"
                table.add_row(
                    name, str(seed), rows, f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}", f"{local_s:.1f}", f"{remote_s:.1f}"
                )
            a, b = (sum(p[k] for p in pairs) / len(pairs) for k in (0, 1))
            table.add_row(name, "mean", "", f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}", "", "")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
