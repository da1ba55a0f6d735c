"""A 50 MB upstream answer must cost the gateway its cap at most, not 50 MB.

The gateway reads an upstream answer up to GATEWAY_UPSTREAM_MAX_RESPONSE_BYTES
(10 MiB by default) and then answers `upstream_response_too_large`. Two kinds of
answer: one that declares its 50 MB in Content-Length (refused before its body is
read) and a chunked one that says nothing up front (read to the cap, then cut off).
The gateway's RSS before and after shows what it kept.
"""

from __future__ import annotations

import collections
from typing import Any

import httpx

from .processes import Child

DEFAULT_CAP = 10 * 1024 * 1024


def big_responses(gateway: Child, secret: str, calls: int = 5, size: int = 50 * 1024 * 1024) -> dict[str, Any]:
    before = gateway.memory()
    answers: collections.Counter[str] = collections.Counter()
    with httpx.Client(base_url=gateway.url or "", timeout=60, trust_env=False) as client:
        for chunked in (False, True):
            for _ in range(calls):
                response = client.post(
                    "/v1/bench/big",
                    json={"params": {"bytes": size, "chunked": chunked}},
                    headers={"Authorization": f"Bearer {secret}"},
                )
                code = response.json().get("error") if response.status_code >= 400 else "ok"
                answers[f"{'chunked' if chunked else 'declared'}: {response.status_code} {code}"] += 1
    after = gateway.memory()
    return {
        "calls": calls * 2,
        "bytes": size,
        "cap_bytes": DEFAULT_CAP,
        "answers": dict(answers),
        "before": before,
        "after": after,
        "capped": all(answer.endswith("502 upstream_response_too_large") for answer in answers),
        "grew_kib": after.get("VmRSS", 0) - before.get("VmRSS", 0),
        "peak_grew_kib": after.get("VmHWM", 0) - before.get("VmHWM", 0),
    }
