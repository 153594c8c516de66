"""Offer scores kept in Redis beside each customer's features (`serving.offer_scores`): a Redis batch looks them
up instead of scoring every customer's offers, decides exactly as scoring them does, and scores again (and
keeps) where the champion, the catalog, the customer's features or the cells of their latest values differ."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import redis

import serving.offers as offers_module
from sendwise.asof import resolve_as_of
from sendwise.raw import load_table
from sendwise.settings import Settings
from serving.offer_scores import FIELD, HEAD, KEY_BYTES, customer_digest
from serving.schemas import Campaign, DecideRequest, Recipient

pytestmark = [pytest.mark.integration]
START = datetime(2026, 12, 5, 3, tzinfo=UTC)


@pytest.fixture(scope="module")
def replica(redis_home: Settings):  # type: ignore[no-untyped-def]
    from serving.engine import Engine

    return Engine.load(redis_home, log_decisions=False)


def _ids(settings: Settings, n: int, seed: int) -> list[str]:
    customers = load_table(settings, "customers")
    assert customers is not None
    return [str(c) for c in customers["customer_id"].sample(n=n, random_state=seed)]


def _keys(replica, ids: list[str]) -> list[bytes]:  # type: ignore[no-untyped-def]
    from serving.redis_features import entity_keys

    config = replica.store.config
    return entity_keys(ids, config.project, config.entity_key_serialization_version)


def _client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


def _request(ids: list[str], start: datetime = START) -> DecideRequest:
    return DecideRequest(
        recipients=[Recipient(customer_id=c) for c in ids],
        campaign=Campaign(kind="promotional", topic="outdoor"),
        window_start=start,
        explore_share=0.0,
        k_offers=5,
    )


def _without_ids(payload: dict[str, object]) -> list[dict[str, object]]:
    decisions = payload["decisions"]
    assert isinstance(decisions, list)
    return [{k: v for k, v in d.items() if k != "decision_id"} for d in decisions]


@pytest.fixture
def scored_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many rows each call of the offer model scored."""
    calls: list[int] = []
    real = offers_module.offer_probabilities

    def counted(matrix, rows, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(rows))
        return real(matrix, rows, *args, **kwargs)

    monkeypatch.setattr(offers_module, "offer_probabilities", counted)
    return calls


def test_a_second_batch_looks_its_scores_up_and_decides_the_same(  # type: ignore[no-untyped-def]
    replica, engine, redis_home, scored_rows
) -> None:
    ids = _ids(redis_home, 300, seed=21)
    client = _client(redis_home)
    keys = _keys(replica, ids)
    client.hdel(keys[0], FIELD)  # one customer's scores gone (the others' may be kept by earlier tests)
    for key in keys[1:]:
        client.hset(key, FIELD, b"\x00" * 20)  # not a kept score: scored again
    request = _request([*ids, "nobody-1"])

    first = replica.decide_payload(request)
    assert scored_rows == [301]  # every known customer, and the unknown one
    assert all(len(client.hget(key, FIELD) or b"") > HEAD for key in keys)  # kept for every known customer

    scored_rows.clear()
    second = replica.decide_payload(request)
    assert scored_rows == [1]  # the unknown customer alone: the others were looked up
    assert _without_ids(second) == _without_ids(first)
    assert _without_ids(second) == _without_ids(engine.decide_payload(request))  # the snapshot's decisions
    assert sum(bool(d["offers"]) for d in _without_ids(second)) > 200


def test_a_kept_score_is_used_only_for_the_features_it_was_computed_from(replica, redis_home) -> None:  # type: ignore[no-untyped-def]
    decided = _without_ids(replica.decide_payload(_request(_ids(redis_home, 40, seed=22))))
    real = next(d for d in decided if d["send"] and any(o["kind"] != "control" for o in d["offers"]))
    customer = str(real["customer_id"])
    client = _client(redis_home)
    (key,) = _keys(replica, [customer])
    request = _request([customer])
    assert replica.decide_payload(request)["decisions"][0]["offers"] == real["offers"]
    kept = client.hget(key, FIELD)
    assert kept is not None
    catalog = replica.catalog.scored_catalog(replica.catalog.model)
    assert catalog is not None
    shown = [o for o in real["offers"] if o["kind"] != "control"]
    chosen = shown[-1]["offer_id"]  # the offer ranked last of those shown
    forged = np.zeros(len(catalog[0]), dtype="<f4")
    forged[catalog[2][chosen]] = 0.75
    client.hset(key, FIELD, kept[:HEAD] + forged.tobytes())
    looked_up = replica.decide_payload(request)["decisions"][0]
    assert looked_up["offers"][0]["offer_id"] == chosen  # the forged score was read
    assert looked_up["offers"][0]["conversion_probability"] == pytest.approx(0.75, abs=1e-4)

    other_features = kept[:KEY_BYTES] + bytes(16) + kept[KEY_BYTES + 16 : HEAD] + forged.tobytes()
    client.hset(key, FIELD, other_features)  # the same scores for another customer's digest: not used
    assert replica.decide_payload(request)["decisions"][0]["offers"] == real["offers"]
    assert client.hget(key, FIELD) == kept  # scored again and kept again


def test_equal_cells_of_the_latest_values_give_equal_scores(replica, redis_home) -> None:  # type: ignore[no-untyped-def]
    ids = _ids(redis_home, 400, seed=23)
    features = replica.online.for_recipients([Recipient(customer_id=c) for c in ids])
    model = replica.catalog.model
    catalog = replica.catalog.scored_catalog(model)
    assert catalog is not None and features.matrix.latest
    rows = np.arange(len(ids))
    start = resolve_as_of(redis_home).time.to_pydatetime() + timedelta(hours=1)  # where the data ends
    later = start + timedelta(days=6)
    here = replica.catalog.latest_cells(features.matrix, start, model)
    there = replica.catalog.latest_cells(features.matrix, later, model)
    same = (here == there).all(axis=1)
    assert 0 < same.sum() < len(ids)  # six days move some customers over a threshold, not everyone
    a = offers_module.offer_probabilities(features.matrix, rows, catalog[0], model, start)
    b = offers_module.offer_probabilities(features.matrix, rows, catalog[0], model, later)
    assert np.array_equal(a[same], b[same])
    assert not np.array_equal(a[~same], b[~same])


def test_keeping_every_customers_scores_leaves_a_batch_nothing_to_score(  # type: ignore[no-untyped-def]
    replica, redis_home, scored_rows
) -> None:
    from training.jobs import keep_offer_scores

    customers = load_table(redis_home, "customers")
    assert customers is not None
    ids = [str(c) for c in customers["customer_id"]]
    client = _client(redis_home)
    keys = _keys(replica, ids)
    for key in keys:
        client.hdel(key, FIELD)
    written = keep_offer_scores(redis_home, progress=False)  # the pipeline's step: for the next whole hour
    known = int(replica.online.for_recipients([Recipient(customer_id=c) for c in ids]).known.sum())
    assert 0 < written <= known  # loading the engine kept its population sample's already
    assert sum(len(client.hget(key, FIELD) or b"") > HEAD for key in keys) == known > 1000

    start = resolve_as_of(redis_home).time.to_pydatetime() + timedelta(hours=1)  # recent activity: other cells
    assert replica.keep_offer_scores(ids, at=start) > 0
    assert replica.keep_offer_scores(ids, at=start) == 0  # all kept already
    scored_rows.clear()
    replica.decide_payload(_request(ids[: len(ids) // 2], start))
    assert scored_rows == []


def test_the_digest_covers_the_latest_activity_and_not_the_email_state(replica) -> None:  # type: ignore[no-untyped-def]
    from serving.realtime import ACTIVITY_VIEW, EMAIL_STATE_VIEW
    from serving.redis_features import digested_fields

    layout = replica.online.layout()
    positions, at = set(digested_fields(layout)), 0
    seen = set()
    for view in layout:
        width = 1 + len(view.fields)
        inside = set(range(at, at + width)) <= positions
        assert inside == (view.view != EMAIL_STATE_VIEW), view.view
        seen.add(view.view)
        at += width
    assert {ACTIVITY_VIEW, EMAIL_STATE_VIEW} <= seen
    assert customer_digest((b"a", None)) != customer_digest((None, b"a"))
    assert customer_digest((b"ab", b"")) != customer_digest((b"a", b"b"))
