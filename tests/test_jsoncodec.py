"""orjson on the call path, the standard library where orjson stops: the same results either way."""

from __future__ import annotations

import json
import math

import pytest

from gateway import jsoncodec

SAMPLE = {"ok": True, "n": 12345, "pi": 3.25, "text": 'café ☕ "quoted" / \\', "list": [1, None, {"a": []}]}


def test_the_same_json_as_the_standard_library() -> None:
    assert jsoncodec.dumps(SAMPLE) == json.dumps(SAMPLE, ensure_ascii=False, separators=(",", ":")).encode()
    assert jsoncodec.loads(jsoncodec.dumps(SAMPLE)) == SAMPLE


def test_what_orjson_refuses_goes_through_the_standard_library() -> None:
    huge = 2**70
    assert jsoncodec.loads(b'{"id": 1180591620717411303424}') == {"id": huge}
    assert jsoncodec.dumps({"id": huge}) == b'{"id":1180591620717411303424}'
    assert math.isnan(jsoncodec.loads("NaN"))


@pytest.mark.parametrize("broken", [b"{nope", b"", b"[1,", "\ud800", b"\xff"])
def test_what_is_not_json_is_a_value_error(broken: bytes | str) -> None:
    with pytest.raises(ValueError):
        jsoncodec.loads(broken)
