"""JSON in and out of the gateway: orjson, with the standard library where orjson stops.

orjson reads and writes a 135 KB upstream answer in about 0.4 ms where the standard
library takes 2.2 ms, and a small one in about 1 µs instead of 9 (measured on the
benchmark machine).

Three readers, by where the JSON comes from:
- `loads_input`, for what a caller sends (bodies of calls, waitpoints and completions):
  orjson alone, so a lone surrogate escape ("\\ud800", which no UTF-8 text can hold) or
  a number past a double's range is refused, and nesting deeper than MAX_DEPTH is refused
  too. orjson reads an integer past 64 bits as a float; a param typed integer then refuses
  it (params.py).
- `loads`, for an upstream's answer: the standard library where orjson refuses, so an
  answer is passed on as the upstream wrote it.
- `loads_stored`, for JSON this gateway stored, by any version: what an older version let
  in (a lone surrogate) reads back as U+FFFD instead of breaking every later read.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from starlette.responses import JSONResponse

# Deep enough for any API body; shallow enough that every recursive reader after this one
# (jsonschema, the standard library's encoder, the database driver) stays far from Python's limit.
MAX_DEPTH = 64
# A surrogate escape in JSON text: the only way a lone surrogate gets into stored JSON.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads_input(data: bytes | bytearray | str) -> Any:
    """A caller's JSON; ValueError names what is wrong (not JSON, a lone surrogate, too deep)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            raise ValueError(f"it is nested deeper than {MAX_DEPTH} levels") from None
        raise ValueError(str(exc)) from None
    # Nesting needs an opening bracket per level: most bodies have too few to need the walk.
    brackets = data.count(b"[") + data.count(b"{") if not isinstance(data, str) else data.count("[") + data.count("{")
    if brackets > MAX_DEPTH and depth(value) > MAX_DEPTH:
        raise ValueError(f"it is nested deeper than {MAX_DEPTH} levels")
    return value


def depth(value: Any) -> int:
    """How many arrays and objects deep a parsed value goes (0 for a scalar)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def loads(data: bytes | bytearray | str) -> Any:
    """JSON from elsewhere (an upstream); raises ValueError for what is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return json.loads(data)
        except RecursionError:
            raise ValueError("the JSON is nested too deeply to read") from None


def loads_stored(text: str | bytes) -> Any:
    """JSON the gateway stored; a lone surrogate in it reads as U+FFFD."""
    value = json.loads(text)
    if _SURROGATE_ESCAPE.search(text if isinstance(text, str) else text.decode("utf-8", "replace")):
        return scrub(value)
    return value


def has_lone_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def scrub(value: Any) -> Any:
    """The value with every lone surrogate, in keys and strings, replaced by U+FFFD."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if has_lone_surrogate(value) else value
    if isinstance(value, list):
        return [scrub(item) for item in value]
    if isinstance(value, dict):
        return {scrub(key): scrub(item) for key, item in value.items()}
    return value


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, as Starlette's JSONResponse writes it."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError: an integer past 64 bits, a lone surrogate, a non-string key
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        try:
            return text.encode()
        except UnicodeEncodeError:
            # A lone surrogate an upstream sent: escaped, it goes back out as the upstream wrote it.
            return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()


class JSONAnswer(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content)
