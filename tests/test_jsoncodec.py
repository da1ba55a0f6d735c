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


# What a caller sends: orjson alone, and a depth limit.


@pytest.mark.parametrize(
    "hostile",
    [b'"\\ud800"', b'{"\\udc00": 1}', b'["a\\ud800b"]', b'"\\ud800\\u0041"', b'"\xed\xa0\x80"', b"NaN", b"1e400"],
)
def test_caller_json_refuses_what_no_utf8_text_or_json_number_holds(hostile: bytes) -> None:
    with pytest.raises(ValueError):
        jsoncodec.loads_input(hostile)


def test_caller_json_refuses_nesting_past_the_limit_at_any_size() -> None:
    fits = b"[" * jsoncodec.MAX_DEPTH + b"]" * jsoncodec.MAX_DEPTH
    assert jsoncodec.depth(jsoncodec.loads_input(fits)) == jsoncodec.MAX_DEPTH
    for levels in (jsoncodec.MAX_DEPTH + 1, 1025, 100_000):
        with pytest.raises(ValueError, match="nested deeper than"):
            jsoncodec.loads_input(b'{"a":' * levels + b"1" + b"}" * levels)
    # Brackets inside strings are not nesting.
    assert jsoncodec.loads_input(b'["' + b"[" * 500 + b'"]') == ["[" * 500]
    assert jsoncodec.loads_input(b'{"\\ud83d\\ude00": "\\ud83d\\ude00"}') == {"😀": "😀"}


def test_an_upstream_answer_too_deep_for_the_standard_library_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        jsoncodec.loads(b"[" * 100_000 + b"]" * 100_000)


def test_a_lone_surrogate_from_an_upstream_goes_back_out_escaped() -> None:
    upstream = jsoncodec.loads(b'{"a": "x\\ud800", "b": "caf\\u00e9"}')
    assert jsoncodec.dumps(upstream) == b'{"a":"x\\ud800","b":"caf\\u00e9"}'
    assert jsoncodec.loads(jsoncodec.dumps(upstream)) == upstream


def test_stored_json_reads_a_lone_surrogate_as_a_replacement_character() -> None:
    stored = json.dumps({"a\ud800": ["x\udc00", 1], "ok": "😀"})
    assert jsoncodec.loads_stored(stored) == {"a\ufffd": ["x\ufffd", 1], "ok": "😀"}
    assert jsoncodec.loads_stored('{"id": 1180591620717411303424}') == {"id": 2**70}
