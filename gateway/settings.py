"""Every setting the gateway reads, in one place.

Only this module reads the environment. Tests build `Settings` directly and
pass it to `create_app(settings)`. Each value is parsed strictly by `Env`: a
value that does not parse is a `SettingError` naming the variable and what it
expects, never a default in disguise.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

logger = logging.getLogger(__name__)

# Shipped inside the package, so an install from a wheel has them too.
BUILTIN_INTEGRATIONS = Path(__file__).resolve().parent / "integrations"
APP_NAME = "integration-gateway"
# Where the gateway kept its data before GATEWAY_HOME: relative to the folder it was started from.
LEGACY_DATA_DIR = Path(".gateway")
SECRET_FILE = "secret_key"
DATABASE_FILE = "gateway.db"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DAY = 86400.0

# Per-integration settings: GATEWAY_<NAME>_<FIELD>, where NAME is the spec's
# name upper-cased with '-' turned into '_'.
INTEGRATION_FIELDS = ("CLIENT_ID", "CLIENT_SECRET", "BASE_URL", "AUTHORIZE_URL", "TOKEN_URL", "REVOKE_URL")
INTEGRATION_URL_FIELDS = ("BASE_URL", "AUTHORIZE_URL", "TOKEN_URL", "REVOKE_URL")


class SettingError(ValueError):
    """A setting is missing, malformed or contradicts another; the message names the variable."""


@dataclasses.dataclass(frozen=True)
class IntegrationOverrides:
    client_id: str | None = None
    client_secret: str | None = None
    base_url: str | None = None
    authorize_url: str | None = None
    token_url: str | None = None
    revoke_url: str | None = None


NO_OVERRIDES = IntegrationOverrides()


@dataclasses.dataclass(frozen=True)
class Settings:
    secret_keys: tuple[str, ...]
    database_url: str = "sqlite:///.gateway/gateway.db"
    # The most a request waits on the database before answering 503 service_unavailable.
    database_timeout: float = 5.0
    public_url: str = "http://127.0.0.1:8000"
    integrations_paths: tuple[Path, ...] = ()
    integrations: Mapping[str, IntegrationOverrides] = dataclasses.field(default_factory=dict)
    upstream_timeout: float = 30.0
    upstream_connect_timeout: float = 10.0
    upstream_max_connections: int = 200
    upstream_max_connections_per_host: int = 100
    upstream_total_timeout: float = 120.0
    upstream_max_response_bytes: int = 10 * 1024 * 1024
    # The proxy streams its answers: its cap bounds a transfer, not the memory it takes.
    proxy_max_response_bytes: int = 100 * 1024 * 1024
    signup_open: bool = True
    log_json: bool = False
    log_level: str = "INFO"
    # Lets tests and private deployments talk to upstreams over plain http.
    allow_http_upstreams: bool = False
    # Networks (CIDRs) and host names the egress screen lets through although not public.
    egress_allow: tuple[str, ...] = ()
    https_proxy: str | None = None
    http_proxy: str | None = None
    no_proxy: str = ""
    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    migrate_on_start: bool = True
    # Queue workers run inside `gateway serve` unless turned off (then run `gateway worker`).
    worker_in_serve: bool = True
    worker_concurrency: int = 8
    worker_lease_seconds: float = 30.0
    approval_ttl_seconds: float = 86400.0
    # How long a connect session's token (cs_...) opens the hosted connect page.
    connect_session_ttl_seconds: float = 1800.0
    plans_file: Path | None = None
    default_plan: str = "free"
    metrics_token: str | None = None
    # The data directory (GATEWAY_HOME): the default SQLite database and the development secret.
    home: Path | None = None

    @property
    def secret_key(self) -> str:
        """The key used to sign and to encrypt new data (the first one)."""
        return self.secret_keys[0]

    @property
    def public_https(self) -> bool:
        return self.public_url.startswith("https://")

    def overrides(self, integration: str) -> IntegrationOverrides:
        return self.integrations.get(integration, NO_OVERRIDES)

    def action_url(self, path: str) -> str:
        return self.public_url.rstrip("/") + path


def env_name(integration: str, field: str) -> str:
    return f"GATEWAY_{integration.upper().replace('-', '_')}_{field}"


BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY}
DURATION_HELP = "seconds (30) or a number with a unit: 500ms, 30s, 2m, 1h, 1d"
# A GATEWAY_EGRESS_ALLOW host name or suffix: DNS labels, optionally led by "." or "*.".
HOST_ENTRY = re.compile(
    r"^(\*\.|\.)?[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?$"
)


def parse_duration(text: str) -> float | None:
    """Seconds from `30`, `30s`, `500ms`, `2m`, `1h` or `1d`; None when the text is none of those."""
    match = DURATION.match(text.strip().lower())
    if match is None:
        return None
    return float(match.group(1)) * DURATION_UNITS[match.group(2) or "s"]


def describe_database(url: str) -> str:
    """The database URL as it may be printed: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a database URL)"


@dataclasses.dataclass(frozen=True)
class Env:
    """Reads GATEWAY_* variables, each strictly: an empty variable counts as unset."""

    environ: Mapping[str, str]

    def get(self, name: str, default: str | None = None) -> str | None:
        """The text as set, for a setting that is free text (prefer a typed reader below)."""
        return self.environ.get(name, default)

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name, "").strip()
        return value or None

    def refuse(self, name: str, value: str, expected: str) -> SettingError:
        return SettingError(f"{name}={value!r} is not valid: expected {expected}")

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.raw(name)
        return default if value is None else value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() not in BOOLEANS:
            raise self.refuse(name, value, "true or false (also 1/0, yes/no, on/off)")
        return BOOLEANS[value.lower()]

    def integer(self, name: str, default: int, minimum: int = 1, maximum: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        span = f"from {minimum:,} to {maximum:,}" if maximum is not None else f"of at least {minimum:,}"
        try:
            number = int(value)
        except ValueError:
            raise self.refuse(name, value, f"a whole number {span}") from None
        if number < minimum or (maximum is not None and number > maximum):
            raise self.refuse(name, value, f"a whole number {span}")
        return number

    def duration(self, name: str, default: float, minimum: float, maximum: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        seconds = parse_duration(value)
        if seconds is None or not math.isfinite(seconds):
            raise self.refuse(name, value, DURATION_HELP)
        if not minimum <= seconds <= maximum:
            raise self.refuse(name, value, f"a duration from {minimum:g}s to {maximum:g}s")
        return seconds

    def choice(self, name: str, default: str, choices: Iterable[str]) -> str:
        value = self.raw(name)
        if value is None:
            return default
        allowed = tuple(choices)
        if value.upper() not in allowed:
            raise self.refuse(name, value, "one of " + ", ".join(allowed))
        return value.upper()

    def url(self, name: str, default: str | None = None) -> str | None:
        """An absolute http(s) URL with a host, without a query or fragment."""
        value = self.raw(name)
        if value is None:
            return default
        try:
            parts = urlsplit(value)
            host = parts.hostname
        except ValueError:
            host = None
        if host is None or parts.scheme not in ("http", "https") or parts.query or parts.fragment:
            raise self.refuse(
                name, value, "an http:// or https:// URL with a host, such as https://gateway.example.com"
            )
        return value.rstrip("/")

    def database_url(self, name: str, default: str) -> str:
        value = self.raw(name) or default
        try:
            url = make_url(value)
        except ArgumentError:
            # The value may hold a password: it is not repeated.
            raise SettingError(
                f"{name} is not a database URL: expected e.g. postgresql://user@host/db or sqlite:////path/gateway.db"
            ) from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise SettingError(f"{name} names {url.get_backend_name()!r}: the gateway supports postgresql and sqlite")
        return value

    def file(self, name: str) -> Path | None:
        value = self.raw(name)
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_file():
            raise self.refuse(name, value, "the path of an existing file")
        return path

    def proxy(self, name: str) -> str | None:
        """A proxy URL from HTTPS_PROXY/HTTP_PROXY/NO_PROXY, lower case first as curl reads them."""
        return self.raw(name.lower()) or self.raw(name)

    def egress_allow(self, name: str) -> tuple[str, ...]:
        """CIDRs, host names and .domain suffixes; a CIDR-looking entry that does not parse is refused."""
        entries = tuple(e.strip().lower() for e in (self.raw(name) or "").split(",") if e.strip())
        for entry in entries:
            if entry[:1].isdigit() or ":" in entry or "/" in entry:
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise self.refuse(
                        name, entry, "a CIDR such as 10.0.0.0/8, a host name or a .domain suffix"
                    ) from None
            elif not HOST_ENTRY.match(entry):
                raise self.refuse(name, entry, "a CIDR such as 10.0.0.0/8, a host name or a .domain suffix")
        return entries

    def paths(self, name: str) -> tuple[Path, ...]:
        return tuple(Path(p).expanduser() for p in (self.raw(name) or "").split(os.pathsep) if p.strip())


def _home(env: Env) -> Path:
    home = env.raw("GATEWAY_HOME")
    legacy = env.raw("GATEWAY_DATA_DIR")
    if home is not None:
        path = Path(home).expanduser()
        if not path.is_absolute():
            raise env.refuse("GATEWAY_HOME", home, "an absolute path (a relative one depends on the current folder)")
        if legacy is not None and Path(legacy).expanduser().resolve() != path.resolve():
            raise SettingError(
                "GATEWAY_HOME and GATEWAY_DATA_DIR (its deprecated name) name different folders: unset GATEWAY_DATA_DIR"
            )
        return path
    if legacy is not None:
        path = Path(legacy).expanduser().resolve()
        logger.warning("GATEWAY_DATA_DIR is deprecated: set GATEWAY_HOME=%s instead", path)
        return path
    return platformdirs.user_data_path(APP_NAME, appauthor=False)


def _sqlite_file(database_url: str) -> Path | None:
    url: URL = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _refuse_legacy_data(home: Path, needed: Iterable[str]) -> None:
    """Before GATEWAY_HOME the data lived in ./.gateway: starting elsewhere would silently begin afresh."""
    legacy = LEGACY_DATA_DIR.resolve()
    if legacy == home.resolve():
        return
    stranded = [name for name in needed if (legacy / name).exists() and not (home / name).exists()]
    if stranded:
        raise SettingError(
            f"found gateway data in {legacy} (the old default), but GATEWAY_HOME is {home}: "
            f"move it there (mkdir -p {home} && mv {legacy}/* {home}/) or set GATEWAY_HOME={legacy}"
        )


def _dev_secret(home: Path, database_url: str) -> str:
    path = home / SECRET_FILE
    if not path.exists():
        database = _sqlite_file(database_url)
        if database is None:
            # Every process on a server database must share one secret; a generated one is this host's alone.
            raise SettingError(
                f"GATEWAY_SECRET_KEY is not set and there is no {path}: a server database "
                "(GATEWAY_DATABASE_URL) needs GATEWAY_SECRET_KEY, the same in every process"
            )
        if database.exists() and database.stat().st_size > 0:
            raise SettingError(
                f"GATEWAY_SECRET_KEY is not set and {path} is missing, but the database {database} already holds "
                "data that only its secret decrypts: set GATEWAY_SECRET_KEY to that secret or restore the file"
            )
        home.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it a moment ago: use that one
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48) + "\n")
    key = path.read_text().strip()
    if not key:
        raise SettingError(f"GATEWAY_SECRET_KEY is not set and {path} is empty")
    logger.warning(
        "GATEWAY_SECRET_KEY is not set: using the development secret kept in %s. "
        "Set GATEWAY_SECRET_KEY in production; losing this file makes stored tokens unreadable.",
        path,
    )
    return key


def _integrations(env: Env) -> dict[str, IntegrationOverrides]:
    per_integration: dict[str, dict[str, str]] = {}
    for key in env.environ:
        if not key.startswith("GATEWAY_"):
            continue
        for field in INTEGRATION_FIELDS:
            suffix = "_" + field
            if key.endswith(suffix) and len(key) > len("GATEWAY_") + len(suffix):
                value = env.url(key) if field in INTEGRATION_URL_FIELDS else env.text(key)
                if value is not None:
                    name = key[len("GATEWAY_") : -len(suffix)].lower().replace("_", "-")
                    per_integration.setdefault(name, {})[field.lower()] = value
                break
    return {name: IntegrationOverrides(**fields) for name, fields in per_integration.items()}


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    env = Env(os.environ if environ is None else environ)
    home = _home(env)
    database_url = env.database_url("GATEWAY_DATABASE_URL", f"sqlite:///{home / DATABASE_FILE}")
    # Comma-separated for rotation: the first key encrypts, every key decrypts.
    keys = tuple(k.strip() for k in (env.raw("GATEWAY_SECRET_KEY") or "").split(",") if k.strip())
    if env.raw("GATEWAY_HOME") is None and env.raw("GATEWAY_DATA_DIR") is None:
        needed = ([] if keys else [SECRET_FILE]) + ([] if env.raw("GATEWAY_DATABASE_URL") else [DATABASE_FILE])
        _refuse_legacy_data(home, needed)
    keys = keys or (_dev_secret(home, database_url),)

    return Settings(
        secret_keys=keys,
        database_url=database_url,
        database_timeout=env.duration("GATEWAY_DATABASE_TIMEOUT", 5.0, minimum=0.1, maximum=300),
        public_url=env.url("GATEWAY_PUBLIC_URL", "http://127.0.0.1:8000"),  # type: ignore[arg-type]
        integrations_paths=env.paths("GATEWAY_INTEGRATIONS_PATH"),
        integrations=_integrations(env),
        upstream_timeout=env.duration("GATEWAY_UPSTREAM_TIMEOUT", 30.0, minimum=0.001, maximum=DAY),
        upstream_connect_timeout=env.duration("GATEWAY_UPSTREAM_CONNECT_TIMEOUT", 10.0, minimum=0.001, maximum=DAY),
        upstream_max_connections=env.integer("GATEWAY_UPSTREAM_MAX_CONNECTIONS", 200, maximum=100_000),
        upstream_max_connections_per_host=env.integer(
            "GATEWAY_UPSTREAM_MAX_CONNECTIONS_PER_HOST", 100, maximum=100_000
        ),
        upstream_total_timeout=env.duration("GATEWAY_UPSTREAM_TOTAL_TIMEOUT", 120.0, minimum=0.001, maximum=DAY),
        upstream_max_response_bytes=env.integer("GATEWAY_UPSTREAM_MAX_RESPONSE_BYTES", 10 * 1024 * 1024),
        proxy_max_response_bytes=env.integer("GATEWAY_PROXY_MAX_RESPONSE_BYTES", 100 * 1024 * 1024),
        signup_open=env.boolean("GATEWAY_SIGNUP_OPEN", True),
        log_json=env.boolean("GATEWAY_LOG_JSON", False),
        log_level=env.choice("GATEWAY_LOG_LEVEL", "INFO", LOG_LEVELS),
        allow_http_upstreams=env.boolean("GATEWAY_ALLOW_HTTP_UPSTREAMS", False),
        egress_allow=env.egress_allow("GATEWAY_EGRESS_ALLOW"),
        https_proxy=env.proxy("HTTPS_PROXY"),
        http_proxy=env.proxy("HTTP_PROXY"),
        no_proxy=env.proxy("NO_PROXY") or "",
        ca_bundle=env.file("GATEWAY_CA_BUNDLE"),
        client_cert=env.file("GATEWAY_CLIENT_CERT"),
        client_key=env.file("GATEWAY_CLIENT_KEY"),
        migrate_on_start=env.boolean("GATEWAY_MIGRATE_ON_START", True),
        worker_in_serve=env.boolean("GATEWAY_WORKER_IN_SERVE", True),
        worker_concurrency=env.integer("GATEWAY_WORKER_CONCURRENCY", 8, maximum=10_000),
        worker_lease_seconds=env.duration("GATEWAY_WORKER_LEASE_SECONDS", 30.0, minimum=1.0, maximum=DAY),
        approval_ttl_seconds=env.duration("GATEWAY_APPROVAL_TTL_SECONDS", DAY, minimum=1.0, maximum=365 * DAY),
        connect_session_ttl_seconds=env.duration(
            "GATEWAY_CONNECT_SESSION_TTL_SECONDS", 1800.0, minimum=60.0, maximum=DAY
        ),
        plans_file=env.file("GATEWAY_PLANS_FILE"),
        default_plan=env.text("GATEWAY_DEFAULT_PLAN", "free"),  # type: ignore[arg-type]
        metrics_token=env.text("GATEWAY_METRICS_TOKEN"),
        home=home,
    )
