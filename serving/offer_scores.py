"""Offer scores kept in Redis beside each customer's features: what a replica reading Redis looks up instead of
scoring every customer's offers with every batch.

The in-memory mode scores every known customer's offers once per snapshot (`OfferCatalog.score_snapshot`: the
offer model reads no request context) and looks them up per decision. A Redis replica holds no snapshot, so the
scores live in Redis: one more field of the customer's hash (the hash Feast keeps every view of the customer
in), read by the same HMGET that reads the features. The field holds

    8 bytes   the scores' key: the offer champion's trees and the catalog's offers (`scores_key`)
    16 bytes  a digest of the customer's feature values the scores were computed from, their latest activity
              included (`customer_digest`)
    4 bytes   the cells of the days since the last visit and the last purchase the scores were computed at
              (`OfferCatalog.latest_cells`), two int16
    4 × m     the conversion probability of each catalog offer, float32

A score is used only where all three match what the batch just read and the time it decides at, so a new
champion, a new catalog, a customer's features materialized again, a pushed visit or purchase, or days passing
over one of the offer model's thresholds make it stale at once. The model sees the latest values only through
its thresholds (a tree sends `x <= threshold` left): two times in the same cell of every threshold give the same
trees, so the same scores. Stale and missing scores are scored with the batch, as before, and written back;
`Engine.keep_offer_scores` writes every customer's after a materialization.
"""

from __future__ import annotations

import hashlib
import logging
import marshal
from collections.abc import Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import redis

from features.transform import OfferMatrix

logger = logging.getLogger(__name__)

FIELD = b"sendwise:offer_scores"
"""The hash field of a customer's Redis key (Feast's) that holds their offer scores."""
KEY_BYTES = 8
DIGEST_BYTES = 16
CELL_BYTES = 4
HEAD = KEY_BYTES + DIGEST_BYTES + CELL_BYTES


def scores_key(booster: lgb.Booster, offers: OfferMatrix) -> bytes:
    """What the scores depend on besides the customer: the offer champion's trees and the catalog's offers in
    column order (their ids and features)."""
    digest = hashlib.blake2b(digest_size=KEY_BYTES)
    digest.update(booster.model_to_string().encode())
    digest.update(marshal.dumps([str(o) for o in offers.offer_id]))
    digest.update(marshal.dumps([str(k) for k in offers.kind]))
    digest.update(marshal.dumps([str(c) for c in offers.category]))
    for values in (offers.discount_pct, offers.price, offers.margin):
        digest.update(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return digest.digest()


def customer_digest(values: Sequence[bytes | None]) -> bytes:
    """A digest of one customer's feature values as Redis returned them (Feast's serialized values, None where
    missing): equal exactly when every value is."""
    return hashlib.blake2b(marshal.dumps(tuple(values)), digest_size=DIGEST_BYTES).digest()


def encoded(key: bytes, digest: bytes, cells: np.ndarray, scores: np.ndarray) -> bytes:
    """A customer's field value: the scores' key, the digest of their features, the latest values' cells, their
    scores as float32."""
    return (
        key
        + digest
        + np.ascontiguousarray(cells, dtype="<i2").tobytes()
        + np.ascontiguousarray(scores, dtype="<f4").tobytes()
    )


@dataclass
class KeptScores:
    """The offer scores a batch read from Redis with its features, one entry per distinct customer read, and
    where to write the ones scored with the batch."""

    client: redis.Redis
    keys: list[bytes]  # each customer's Redis key
    digests: list[bytes]  # of the feature values just read
    values: list[bytes | None]  # the field as read (None: none there)
    rows: np.ndarray  # each customer's row in the batch's snapshot

    def table(self, key: bytes, offers: int, snapshot_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """([snapshot rows, offers] float32 scores, [snapshot rows, 2] int16 cells they were computed at) where
        Redis keeps scores for `key` and the features just read; NaN scores and cells of -1 elsewhere (the
        snapshot's empty last row included)."""
        table = np.full((snapshot_rows, offers), np.nan, dtype=np.float32)
        cells = np.full((snapshot_rows, 2), -1, dtype=np.int16)
        size = HEAD + 4 * offers
        found, payloads = [], []
        for i, (value, digest) in enumerate(zip(self.values, self.digests, strict=True)):
            if (
                value
                and len(value) == size
                and value[:KEY_BYTES] == key
                and value[KEY_BYTES : KEY_BYTES + DIGEST_BYTES] == digest
            ):
                found.append(i)
                payloads.append(value[KEY_BYTES + DIGEST_BYTES :])
        if found:
            raw = np.frombuffer(b"".join(payloads), dtype=np.uint8).reshape(len(found), size - KEY_BYTES - DIGEST_BYTES)
            rows = self.rows[found]
            cells[rows] = raw[:, :CELL_BYTES].copy().view("<i2")
            if offers:
                table[rows] = raw[:, CELL_BYTES:].copy().view("<f4")
        return table, cells

    def write(self, customers: np.ndarray, key: bytes, cells: np.ndarray, scores: np.ndarray) -> None:
        """Keep `scores` [customers, offers] of the customers (positions in this read), computed at `cells`
        [customers, 2], in their hashes, one round trip; a Redis error is logged, not raised (the next batch
        scores them again)."""
        if not len(customers):
            return
        head = b"*4\r\n$4\r\nHSET\r\n"
        field = b"$%d\r\n%s\r\n" % (len(FIELD), FIELD)
        parts = []
        for position, at, row in zip(customers.tolist(), cells, scores, strict=True):
            name = self.keys[position]
            value = encoded(key, self.digests[position], at, row)
            parts.append(b"%s$%d\r\n%s\r\n%s$%d\r\n%s\r\n" % (head, len(name), name, field, len(value), value))
        pool = self.client.connection_pool
        try:
            connection = pool.get_connection()
        except (redis.RedisError, OSError):
            logger.warning("offer scores could not be kept in Redis", exc_info=True)
            return
        try:
            connection.send_packed_command([b"".join(parts)])
            for _ in parts:
                connection.read_response()
        except (redis.RedisError, OSError):
            connection.disconnect()  # replies may be left unread: the connection is not reused
            logger.warning("offer scores could not be kept in Redis", exc_info=True)
        finally:
            pool.release(connection)
