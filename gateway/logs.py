"""Logging: plain or JSON lines, each carrying the request id of the request it belongs to, and no secret.

`config()` is the one logging configuration of every process (`gateway serve` hands it to uvicorn, so its
access log and its workers use it too): one handler on the root logger, whose formatter redacts every line
by the rules below. A new kind of secret is one entry in one of them.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import logging
import logging.config
import re
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

REDACTED = "[redacted]"
# Query, form and JSON fields whose value is a secret, wherever they appear (`code=…`, `"access_token": "…"`).
SECRET_FIELDS = (
    "code",
    "state",
    "code_verifier",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "client_assertion",
    "api_key",
    "apikey",
    "key",
    "secret",
    "password",
    "signature",
    "sig",
    "publicAccessToken",
)
# Path segments that are secrets: a literal every such path holds, and what precedes the segment (a regex).
SECRET_PATH_SEGMENTS = {"/callback/": r"/v1/waitpoints/[^/\s]+/callback/"}
# Tokens recognisable by their prefix: ours (API keys, waitpoint public tokens) and common providers'.
TOKEN_PREFIXES = (
    "sk_",
    "cs_",
    "wpt_",
    "gho_",
    "ghp_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "xoxb-",
    "xoxp-",
    "xoxe-",
)
# Authorization header schemes whose credentials follow them.
AUTH_SCHEMES = ("Bearer", "Basic")

_VALUE = r"(?:(?!%26)[^&\s\"'#<>,;])+"
_TOKEN = r"[A-Za-z0-9_\-.~+/=]"


@dataclasses.dataclass(frozen=True)
class Rule:
    # Lower-case substrings, one of which a line must hold for the pattern to run: most lines hold none,
    # and a substring test costs far less than a scan by the pattern.
    triggers: tuple[str, ...]
    pattern: re.Pattern[str]
    replacement: str


def _rules() -> tuple[Rule, ...]:
    fields = "|".join(re.escape(name) for name in SECRET_FIELDS)
    field_names = tuple(name.lower() for name in SECRET_FIELDS)
    prefixes = "|".join(map(re.escape, TOKEN_PREFIXES))
    return (
        # name=value in a URL or a form (also percent-encoded inside another URL)
        Rule(
            field_names,
            re.compile(rf"(?:(?<![\w-])|(?<=%3F)|(?<=%26))((?:{fields})(?:=|%3D)){_VALUE}", re.I),
            rf"\1{REDACTED}",
        ),
        # "name": "value" in JSON or a Python repr
        Rule(field_names, re.compile(rf"""(["'](?:{fields})["']\s*:\s*["'])[^"']*""", re.I), rf"\1{REDACTED}"),
        *[
            Rule((literal,), re.compile(rf"({segment})[^/\s?#\"'<>]+"), rf"\1{REDACTED}")
            for literal, segment in SECRET_PATH_SEGMENTS.items()
        ],
        Rule(
            tuple(p.lower() for p in TOKEN_PREFIXES),
            re.compile(rf"(?<![\w-])({prefixes}){_TOKEN}{{8,}}"),
            rf"\1{REDACTED}",
        ),
        Rule(
            tuple(s.lower() for s in AUTH_SCHEMES),
            re.compile(rf"\b({'|'.join(AUTH_SCHEMES)}) +{_TOKEN}+", re.I),
            rf"\1 {REDACTED}",
        ),
        # the password of a URL's user info (a database URL, a proxy)
        Rule(("@",), re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^:/@\s]*:)[^@\s/]+@", re.I), rf"\1{REDACTED}@"),
    )


RULES = _rules()
# Every trigger in one pattern: the common line holds none and is returned after one search.
TRIGGERS = re.compile("|".join(sorted({re.escape(t) for rule in RULES for t in rule.triggers})))


def redact(text: str) -> str:
    lowered = text.lower()
    if TRIGGERS.search(lowered) is None:
        return text
    for rule in RULES:
        if any(trigger in lowered for trigger in rule.triggers):
            text = rule.pattern.sub(rule.replacement, text)
    return text


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        return True


class PlainFormatter(logging.Formatter):
    """`time level logger [request id] message`, with the traceback if any, redacted as a whole."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or "-"
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; the message and the traceback are redacted before they are encoded."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "request_id": getattr(record, "request_id", None) or request_id_var.get() or "-",
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry)


# Our loggers and uvicorn's run at the configured level; other libraries only reach the root's WARNING.
LOGGERS = ("gateway", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def config(level: str = "INFO", json_lines: bool = False) -> dict[str, Any]:
    """A `logging.config.dictConfig` dictionary (also uvicorn's `log_config`)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"gateway": {"()": JsonFormatter if json_lines else PlainFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "gateway",
                "filters": ["request_id"],
            }
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            **{name: {"level": level, "handlers": [], "propagate": True} for name in LOGGERS},
            # httpx logs every request URL at INFO; an api_key integration may carry its secret in the query.
            "httpx": {"level": "WARNING"},
            "httpx2": {"level": "WARNING"},
        },
    }


def configure(level: str = "INFO", json_lines: bool = False) -> None:
    logging.config.dictConfig(config(level, json_lines))


def configured() -> bool:
    """Whether this process already logs through `config()` (uvicorn applies it in each worker it starts)."""
    return any(isinstance(h.formatter, PlainFormatter | JsonFormatter) for h in logging.getLogger().handlers)
