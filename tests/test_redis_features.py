"""Online features in Redis (`SENDWISE_ONLINE_STORE=redis`): Feast materializes into the URL's db."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
import yaml

from features.store import feature_store_yaml, redis_connection_string
from sendwise.raw import load_table
from sendwise.settings import Settings
from tests.conftest import REDIS_DB

pytestmark = [pytest.mark.integration]
START = datetime(2026, 12, 5, 3, tzinfo=UTC)


def test_the_url_gives_feast_its_db_password_and_tls() -> None:
    assert redis_connection_string("redis://:s3cret@cache.internal:6380/5") == (
        "cache.internal:6380,db=5,password=s3cret,socket_connect_timeout=2,socket_timeout=10"
    )
    assert redis_connection_string("rediss://app:pw@cache:6379") == (
        "cache:6379,db=0,username=app,password=pw,ssl=true,socket_connect_timeout=2,socket_timeout=10"
    )
    settings = Settings(home=Path("/tmp/nowhere"), online_store="redis", redis_url="redis://10.0.0.7:6379/3")
    online = yaml.safe_load(feature_store_yaml(settings))["online_store"]
    assert online == {"type": "redis", "connection_string": redis_connection_string("redis://10.0.0.7:6379/3")}
    assert online["connection_string"].startswith("10.0.0.7:6379,db=3,")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://cache:6379/0", "expected redis://host:port/db"),
        ("redis://cache:6379/cache", "the db number after the port must be a whole number, not 'cache'"),
        ("redis://cache:port/1", "the port is not a number"),
        ("redis://:a,b@cache:6379/1", "cannot carry a ',' in the user name or password"),
    ],
)
def test_a_bad_redis_url_is_refused_naming_the_setting(url: str, expected: str) -> None:
    with pytest.raises(ValueError, match="SENDWISE_REDIS_URL") as error:
        redis_connection_string(url)
    assert expected in str(error.value)


def test_materialize_writes_into_the_db_of_the_url(redis_home: Settings, redis_url: str) -> None:
    customers = load_table(redis_home, "customers")
    offers = load_table(redis_home, "offers")
    assert customers is not None and offers is not None
    in_db = redis.Redis.from_url(f"{redis_url}/{REDIS_DB}").dbsize()
    assert in_db == customers["customer_id"].nunique() + offers["offer_id"].nunique()  # one hash per entity
    assert redis.Redis.from_url(f"{redis_url}/0").dbsize() == 0
