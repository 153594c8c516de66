"""`python -m bench.redis_read HOME REDIS_URL`: how a batch's online features are best read from Feast's Redis
store, timed on a home already materialized there (`SENDWISE_ONLINE_STORE=redis`, e.g. benchmark 7's replica).

Three ways, the same customers (drawn at random from the home's customers table, afresh for every call),
median of `--repeats` calls per batch size:
- `serving.redis_features.read_views`: one HMGET per customer of the fields decisions read from every view
  (the email-state view's stop flags included), pipelined, decoded column by column (what the service runs),
  and the arrays and the stopped customers built from them;
- Feast's `RedisOnlineStore.online_read`, once per view, on the same features (one HMGET per customer and view,
  each value parsed into a `ValueProto`);
- Feast's `get_online_features` on the `open_propensity_v1` feature service (every feature of it).
Nothing here is a test: figures are printed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from features.store import open_store, redis_client
from sendwise.raw import load_table
from sendwise.settings import Settings
from serving.realtime import EMAIL_STATE_VIEW
from serving.redis_features import read_views, redis_layout, stopped_customers
from serving.snapshot import SERVICE, FeatureSnapshot

app = typer.Typer(add_completion=False, help=__doc__)


def _median_seconds(call: Callable[[list[str]], None], batches: list[list[str]]) -> float:
    times = []
    for batch in batches:
        began = time.perf_counter()
        call(batch)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


@app.command()
def main(
    home: Annotated[Path, typer.Argument(help="a home whose online store is materialized in Redis")],
    redis_url: Annotated[str, typer.Argument(help="redis://host:port/db it was materialized into")],
    repeats: Annotated[int, typer.Option(min=1, help="calls per batch size and way")] = 5,
    seed: int = 0,
) -> None:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    settings = Settings(home=home, online_store="redis", redis_url=redis_url)
    settings.activate()
    store = open_store(settings)
    customers = load_table(settings, "customers")
    if customers is None:
        raise typer.BadParameter(f"{home} has no customers table", param_hint="HOME")
    ids = customers["customer_id"].astype(str).to_numpy()
    client = redis_client(redis_url)
    layout = redis_layout(store)
    project, version = store.config.project, store.config.entity_key_serialization_version
    online = store._get_provider().online_store
    views = [(store.get_feature_view(v.view), list(v.features)) for v in layout]
    service = store.get_feature_service(SERVICE)
    rng = np.random.default_rng(seed)

    def ours(batch: list[str]) -> None:
        views = read_views(client, layout, batch, project, version)
        stopped_customers(views.pop(EMAIL_STATE_VIEW, None))
        FeatureSnapshot.from_columns(views)

    def feast_online_read(batch: list[str]) -> None:
        keys = [EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=c)]) for c in batch]
        for view, features in views:
            online.online_read(store.config, view, keys, features)

    def feast_service(batch: list[str]) -> None:
        store.get_online_features(features=service, entity_rows=[{"customer_id": c} for c in batch])

    ways = {"read_views + arrays": ours, "Feast online_read": feast_online_read, "get_online_features": feast_service}
    for size in (1, 100, 10_000):
        batches = [rng.choice(ids, size, replace=False).tolist() for _ in range(repeats)]
        ours(batches[0])  # warm: the client's connection, the layout
        shown = "; ".join(f"{name} {_median_seconds(call, batches) * 1e3:,.1f} ms" for name, call in ways.items())
        print(f"{size:>6,} customers: {shown}", flush=True)


if __name__ == "__main__":
    app()
