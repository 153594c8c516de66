"""schemathesis hooks for `tests/test_api_fuzz.py` (loaded by the schemathesis CLI through SCHEMATHESIS_HOOKS).

Random customer ids are all unknown, and `/v1/explain` answers an unknown customer 404 before it reaches a
model: half the explain requests get a customer of the served home instead (SENDWISE_FUZZ_CUSTOMERS, comma
separated), so that fuzzing reaches the explanations too.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

import schemathesis


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    known = [c for c in os.environ.get("SENDWISE_FUZZ_CUSTOMERS", "").split(",") if c]
    operation = context.operation
    if not known or operation is None or operation.path != "/v1/explain" or not isinstance(body, dict):
        return body
    drawn = str(body.get("customer_id", ""))
    pick = zlib.crc32(drawn.encode())
    if pick % 2:
        return {**body, "customer_id": known[pick // 2 % len(known)]}
    return body
