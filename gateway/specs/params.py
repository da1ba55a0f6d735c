"""Checking a call's params against its endpoint's spec.

Two checks with one answer. A check compiled from each endpoint's params (`compile_check`)
accepts the common well-formed call in about a microsecond; jsonschema, about 20 µs a
call, explains every problem when there is one. The compiled check is conservative: it
says yes only where jsonschema would (tests/test_params.py holds the two to that across
the catalogue), and anything it is unsure of goes to jsonschema.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.protocols import Validator

from gateway.errors import BadRequest

if TYPE_CHECKING:
    from gateway.specs.spec import CompiledEndpoint, Endpoint, Param

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Characters that are never accepted in a path param: they would re-shape the
# path or make its decoding ambiguous. '%' is refused so that '%2e%2e' cannot
# become '..' at a server that decodes twice.
PATH_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f/\\%?#]")

Check = Callable[[Any], bool]

# An integer param takes a whole number in 64 bits (signed): no API takes more, and orjson has
# already read anything longer as a float, its last digits lost. A number param takes a finite one.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INTEGER_RANGE = f"from {INT64_MIN} to {INT64_MAX}"


def is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    return isinstance(value, float) and value.is_integer() and INT64_MIN <= value <= INT64_MAX


def is_number(value: Any) -> bool:
    return not isinstance(value, bool) and (
        isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    )


# The formats a spec may declare, each enforced here: a declared format nobody checks would be a
# promise the gateway does not keep.
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_DATE_TIME = re.compile(
    r"^([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}:[0-9]{2}):([0-9]{2})(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})?$"
)


def _date(value: str) -> bool:
    return parse_date(value) is not None


def parse_date(value: str) -> dt.date | None:
    """A YYYY-MM-DD date, or None."""
    try:
        return dt.date.fromisoformat(value) if _DATE.fullmatch(value) else None
    except ValueError:
        return None


def parse_date_time(value: str, *, offset_required: bool = True) -> dt.datetime | None:
    """An RFC 3339 date-time (a leap second's :60 read as :59), or None; without an offset it is UTC."""
    match = _DATE_TIME.fullmatch(value)
    if match is None:
        return None
    day, minutes, seconds, fraction, offset = match.groups()
    if seconds > "60" or (offset is None and offset_required):
        return None
    offset = "+00:00" if offset in (None, "Z", "z") else offset
    try:
        return dt.datetime.fromisoformat(f"{day}T{minutes}:{min(seconds, '59')}{(fraction or '')[:7]}{offset}")
    except ValueError:
        return None


FORMATS: dict[str, Callable[[str], bool]] = {
    "email": lambda value: _EMAIL.fullmatch(value) is not None,
    "date": _date,
    "date-time": lambda value: parse_date_time(value) is not None,
}
FORMAT_CHECKER = FormatChecker(formats=())
for _name, _test in FORMATS.items():
    # A format applies to strings only: null or a number is the type check's business.
    FORMAT_CHECKER.checks(_name)(lambda value, test=_test: not isinstance(value, str) or test(value))

_Validator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"integer": lambda _, value: is_integer(value), "number": lambda _, value: is_number(value)}
    ),
)


def validator_for(schema: dict[str, Any]) -> Validator:
    """JSON Schema 2020-12 as params are checked: 64-bit integers, finite numbers, FORMATS enforced."""
    return _Validator(schema, format_checker=FORMAT_CHECKER)


# Exact types only: jsonschema's "integer" also takes 1.0 and bool is an int in Python,
# so those cases go to jsonschema rather than being guessed here.
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def _value_check(param: Param) -> Check:
    types = _TYPES[param.type]
    tests: list[Check] = []
    if param.enum is not None:
        scalars = all(type(e) in (str, int, float) for e in param.enum)
        choices = list(param.enum)
        # Anything but plain strings and numbers (bools, lists...) is left to jsonschema's equality.
        tests.append((lambda v: type(v) in (str, int, float) and v in choices) if scalars else (lambda v: False))
    if param.pattern is not None and not param.multi_segment:
        pattern = re.compile(param.pattern)
        tests.append(lambda v: type(v) is not str or pattern.search(v) is not None)
    if param.min_length is not None:
        shortest = param.min_length
        tests.append(lambda v: type(v) is not str or len(v) >= shortest)
    if param.max_length is not None:
        longest = param.max_length
        tests.append(lambda v: type(v) is not str or len(v) <= longest)
    if param.minimum is not None:
        low = param.minimum
        tests.append(lambda v: type(v) not in (int, float) or v >= low)
    if param.maximum is not None:
        high = param.maximum
        tests.append(lambda v: type(v) not in (int, float) or v <= high)
    if param.type == "integer":
        tests.append(lambda v: INT64_MIN <= v <= INT64_MAX)
    if param.type == "number":
        tests.append(lambda v: type(v) is int or math.isfinite(v))
    if param.format is not None:
        conforms = FORMATS[param.format]
        tests.append(lambda v: type(v) is not str or conforms(v))
    if param.items is not None or param.properties is not None:
        nested = validator_for(param.json_schema())
        tests.append(nested.is_valid)

    def check(value: Any) -> bool:
        return type(value) in types and all(test(value) for test in tests)

    return check


def compile_check(spec: Endpoint) -> Check:
    """True only for params that jsonschema would accept as they are."""
    known = frozenset(spec.params)
    required = frozenset(name for name, p in spec.params.items() if p.required)
    checks = {name: _value_check(param) for name, param in spec.params.items()}

    def check(params: Any) -> bool:
        keys = params.keys()
        if not (required <= keys and keys <= known):
            return False
        return all(checks[name](value) for name, value in params.items())

    return check


def validate(endpoint: CompiledEndpoint, params: Any) -> dict[str, Any]:
    """The params with defaults applied, or a BadRequest listing every problem, per field."""
    if not isinstance(params, dict):
        raise BadRequest(
            "'params' must be a JSON object.", details=[{"field": "params", "message": "must be an object"}]
        )
    problems = _value_problems(endpoint, params)
    if not endpoint.check(params) or problems:
        problems += _schema_problems(endpoint, params)
    if problems:
        unique = list({(p["field"], p["message"]): p for p in problems}.values())
        raise BadRequest(
            f"The params do not match {endpoint.integration.name}/{endpoint.name}.",
            details=sorted(unique, key=lambda p: p["field"]),
        )
    resolved = dict(params)
    for name, default in endpoint.defaults.items():
        resolved.setdefault(name, default)
    return resolved


def _schema_problems(endpoint: CompiledEndpoint, params: dict[str, Any]) -> list[dict[str, str]]:
    problems: list[dict[str, str]] = []
    for error in endpoint.validator.iter_errors(params):
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else ""
            problems.append({"field": missing, "message": "is required"})
        elif error.validator == "additionalProperties":
            for extra in sorted(set(params) - set(endpoint.spec.params)):
                problems.append({"field": extra, "message": "is not a param of this endpoint"})
        else:
            field = ".".join(str(p) for p in error.absolute_path) or "params"
            message = error.message
            if error.validator == "type" and error.validator_value == "integer" and is_number(error.instance):
                message = f"must be a whole number {INTEGER_RANGE}"
            problems.append({"field": field, "message": message})
    return problems


def _value_problems(endpoint: CompiledEndpoint, params: dict[str, Any]) -> list[dict[str, str]]:
    """What the schema cannot say: path values that would re-shape the path, headers with control characters."""
    problems: list[dict[str, str]] = []
    for name, location in endpoint.checked_locations:
        if name not in params:
            continue
        if location == "path":
            problems.extend(_path_value_problems(endpoint, name, params[name]))
        elif CONTROL.search(str(params[name])):
            problems.append({"field": name, "message": "must not contain control characters"})
    return problems


def _path_value_problems(endpoint: CompiledEndpoint, name: str, value: Any) -> list[dict[str, str]]:
    param = endpoint.spec.params[name]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return []  # the type error is already reported by the schema
    text = str(value)
    parts = text.split("/") if param.multi_segment else [text]
    if param.max_segments is not None and not param.segments <= len(parts) <= param.max_segments:
        return [
            {"field": name, "message": f"must be {param.segments} to {param.max_segments} segments separated by '/'"}
        ]
    if param.max_segments is None and len(parts) != param.segments:
        return [{"field": name, "message": f"must be {param.segments} segments separated by '/'"}]
    pattern = endpoint.segment_patterns.get(name)
    for part in parts:
        if part in ("", ".", ".."):
            return [{"field": name, "message": "must not be empty, '.' or '..'"}]
        if PATH_FORBIDDEN.search(part):
            return [{"field": name, "message": "must not contain '/', '\\', '%', '?', '#' or control characters"}]
        if pattern is not None and not pattern.search(part):
            return [{"field": name, "message": f"does not match {pattern.pattern}"}]
    return []
