"""Every setting the gateway reads, in one place.

Only this module reads the environment. Tests build `Settings` directly and
pass it to `create_app(settings)`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger("gateway.settings")

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
BUILTIN_INTEGRATIONS = PACKAGE_ROOT / "integrations"
DEFAULT_DATA_DIR = Path(".gateway")

# Per-integration settings: GATEWAY_<NAME>_<FIELD>, where NAME is the spec's
# name upper-cased with '-' turned into '_'.
INTEGRATION_FIELDS = ("CLIENT_ID", "CLIENT_SECRET", "BASE_URL", "AUTHORIZE_URL", "TOKEN_URL", "REVOKE_URL")


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
    public_url: str = "http://127.0.0.1:8000"
    integrations_paths: tuple[Path, ...] = ()
    integrations: Mapping[str, IntegrationOverrides] = dataclasses.field(default_factory=dict)
    upstream_timeout: float = 30.0
    upstream_connect_timeout: float = 10.0
    upstream_max_connections: int = 200
    upstream_max_connections_per_host: int = 100
    upstream_total_timeout: float = 120.0
    upstream_max_response_bytes: int = 10 * 1024 * 1024
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
    plans_file: Path | None = None
    default_plan: str = "free"
    metrics_token: str | None = None

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


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _dev_secret(data_dir: Path) -> str:
    path = data_dir / "secret_key"
    if path.exists():
        key = path.read_text().strip()
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
    logger.warning(
        "GATEWAY_SECRET_KEY is not set: using the development secret kept in %s. "
        "Set GATEWAY_SECRET_KEY in production; losing this file makes stored tokens unreadable.",
        path,
    )
    return key


def from_env(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    data_dir = Path(env.get("GATEWAY_DATA_DIR", str(DEFAULT_DATA_DIR)))
    raw_keys = env.get("GATEWAY_SECRET_KEY", "")
    # Comma-separated for rotation: the first key encrypts, every key decrypts.
    keys = tuple(k.strip() for k in raw_keys.split(",") if k.strip()) or (_dev_secret(data_dir),)
    database_url = env.get("GATEWAY_DATABASE_URL") or f"sqlite:///{data_dir / 'gateway.db'}"
    paths = tuple(Path(p) for p in env.get("GATEWAY_INTEGRATIONS_PATH", "").split(os.pathsep) if p)

    per_integration: dict[str, dict[str, str]] = {}
    for key, value in env.items():
        if not key.startswith("GATEWAY_"):
            continue
        for field in INTEGRATION_FIELDS:
            suffix = "_" + field
            if key.endswith(suffix) and len(key) > len("GATEWAY_") + len(suffix):
                name = key[len("GATEWAY_") : -len(suffix)].lower().replace("_", "-")
                per_integration.setdefault(name, {})[field.lower()] = value
                break
    overrides = {name: IntegrationOverrides(**fields) for name, fields in per_integration.items()}

    def number(name: str, default: float) -> float:
        return float(env[name]) if env.get(name) else default

    def path(name: str) -> Path | None:
        return Path(env[name]) if env.get(name) else None

    def proxy(name: str) -> str | None:
        # Lower case first, as curl reads them.
        return env.get(name.lower()) or env.get(name) or None

    return Settings(
        secret_keys=keys,
        database_url=database_url,
        public_url=env.get("GATEWAY_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/"),
        integrations_paths=paths,
        integrations=overrides,
        upstream_timeout=number("GATEWAY_UPSTREAM_TIMEOUT", 30.0),
        upstream_connect_timeout=number("GATEWAY_UPSTREAM_CONNECT_TIMEOUT", 10.0),
        upstream_max_connections=int(number("GATEWAY_UPSTREAM_MAX_CONNECTIONS", 200)),
        upstream_max_connections_per_host=int(number("GATEWAY_UPSTREAM_MAX_CONNECTIONS_PER_HOST", 100)),
        upstream_total_timeout=number("GATEWAY_UPSTREAM_TOTAL_TIMEOUT", 120.0),
        upstream_max_response_bytes=int(number("GATEWAY_UPSTREAM_MAX_RESPONSE_BYTES", 10 * 1024 * 1024)),
        signup_open=_bool(env.get("GATEWAY_SIGNUP_OPEN", "true")),
        log_json=_bool(env.get("GATEWAY_LOG_JSON", "false")),
        log_level=env.get("GATEWAY_LOG_LEVEL", "INFO").upper(),
        allow_http_upstreams=_bool(env.get("GATEWAY_ALLOW_HTTP_UPSTREAMS", "false")),
        egress_allow=tuple(p.strip() for p in env.get("GATEWAY_EGRESS_ALLOW", "").split(",") if p.strip()),
        https_proxy=proxy("HTTPS_PROXY"),
        http_proxy=proxy("HTTP_PROXY"),
        no_proxy=proxy("NO_PROXY") or "",
        ca_bundle=path("GATEWAY_CA_BUNDLE"),
        client_cert=path("GATEWAY_CLIENT_CERT"),
        client_key=path("GATEWAY_CLIENT_KEY"),
        migrate_on_start=_bool(env.get("GATEWAY_MIGRATE_ON_START", "true")),
        worker_in_serve=_bool(env.get("GATEWAY_WORKER_IN_SERVE", "true")),
        worker_concurrency=int(number("GATEWAY_WORKER_CONCURRENCY", 8)),
        worker_lease_seconds=number("GATEWAY_WORKER_LEASE_SECONDS", 30.0),
        approval_ttl_seconds=number("GATEWAY_APPROVAL_TTL_SECONDS", 86400.0),
        plans_file=Path(env["GATEWAY_PLANS_FILE"]) if env.get("GATEWAY_PLANS_FILE") else None,
        default_plan=env.get("GATEWAY_DEFAULT_PLAN", "free"),
        metrics_token=env.get("GATEWAY_METRICS_TOKEN") or None,
    )
