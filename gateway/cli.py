"""The `gateway` command: serve, operate accounts and keys, validate specs, migrate.

Whatever goes wrong reaches the person as one line naming the problem (and the setting or option to
change), never a traceback: commands raise `CommandError`, and `main` turns every error it knows into
one. With `--json` the result is JSON on stdout and an error is one JSON object on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, NoSuchModuleError

from gateway import logs
from gateway import settings as settings_module
from gateway.core import plans
from gateway.specs import registry as spec_registry
from gateway.specs import spec as specs
from gateway.storage import database as db
from gateway.storage import keys, users
from gateway.storage.models import ApiKey, User

logger = logging.getLogger(__name__)

# The `error` field of an error printed with --json, one per kind of problem.
USAGE = "usage"  # the command line itself (exit status 2)
SETTING = "setting"  # a GATEWAY_* variable
DATABASE = "database"  # GATEWAY_DATABASE_URL: unreachable, no driver, failing
NOT_FOUND = "not_found"  # no such user, key, file
INVALID = "invalid"  # a value the command refuses (an unknown plan, a short password)
LISTEN = "listen"  # `serve` cannot listen on --host/--port
SPEC = "spec"  # an integration spec does not validate
INTERRUPTED = "interrupted"  # Ctrl-C (exit status 130)
INTERNAL = "internal"  # a failure of the gateway itself
ERROR_CODES = (USAGE, SETTING, DATABASE, NOT_FOUND, INVALID, LISTEN, SPEC, INTERRUPTED, INTERNAL)
EXIT_STATUS = {USAGE: 2, INTERRUPTED: 130}


class CommandError(Exception):
    """What a command could not do, in one line, with a code for `--json`."""

    def __init__(self, message: str, code: str = INVALID) -> None:
        super().__init__(message)
        self.code = code


def _print(data: Any, as_json: bool, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if as_json else text)


def _engine(settings: settings_module.Settings, migrate: bool | None = None) -> Engine:
    """An engine on a database that answers (and is migrated, unless turned off)."""
    try:
        engine = db.make_engine(settings.database_url, settings.database_timeout)
        with engine.connect():
            pass
    except (ImportError, NoSuchModuleError) as exc:
        raise CommandError(
            f"GATEWAY_DATABASE_URL: the driver for {settings_module.describe_database(settings.database_url)} "
            f"is not installed ({exc})",
            DATABASE,
        ) from None
    except OSError as exc:
        raise CommandError(f"GATEWAY_DATABASE_URL: cannot create the database's folder: {exc}", DATABASE) from None
    if settings.migrate_on_start if migrate is None else migrate:
        db.upgrade(engine)
    return engine


def _plans(settings: settings_module.Settings) -> dict[str, plans.Plan]:
    available = plans.load(settings.plans_file)
    if settings.default_plan not in available:
        raise CommandError(
            f"GATEWAY_DEFAULT_PLAN={settings.default_plan!r} is not a plan; plans: {', '.join(sorted(available))}",
            SETTING,
        )
    return available


def _known_plan(settings: settings_module.Settings, name: str) -> plans.Plan:
    available = _plans(settings)
    if name not in available:
        raise CommandError(f"unknown plan '{name}'; plans: {', '.join(sorted(available))}")
    return available[name]


def _check_port(host: str, port: int) -> None:
    """Fails before start-up when the address cannot be listened on (uvicorn would only log it, later)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose another --port or --host)", LISTEN
        ) from None


def _start(settings: settings_module.Settings) -> spec_registry.Registry:
    """What `serve` and `worker` do first: check what they depend on."""
    # Load and validate the specs and plans before binding the port: a bad one stops start-up, named.
    registry = spec_registry.registry_for(settings)
    _plans(settings)
    return registry


def _announce(settings: settings_module.Settings) -> None:
    logger.info(
        "data directory %s (GATEWAY_HOME); database %s",
        settings.home,
        settings_module.describe_database(settings.database_url),
    )


def cmd_serve(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    import uvicorn

    registry = _start(settings)
    # Reachable and migrated here, once, before any worker process starts.
    _engine(settings).dispose()
    _check_port(args.host, args.port)
    _announce(settings)
    # uvicorn formats each access-log line's arguments even when its level hides the line (docs/benchmarks.md).
    access_log = logging.getLevelName(settings.log_level) <= logging.INFO
    options: dict[str, Any] = dict(
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        # uvicorn's loggers, its access log included, go through our handler and its redaction.
        log_config=logs.config(settings.log_level, settings.log_json),
        access_log=access_log,
        server_header=False,
        proxy_headers=args.proxy_headers,
    )
    if args.workers > 1:
        uvicorn.run("gateway.asgi:app", workers=args.workers, **options)
    else:
        from gateway.app import create_app

        uvicorn.run(create_app(settings, registry), **options)
    return 0


def _loop_factory():  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:  # pragma: no cover (uvicorn[standard] brings it)
        return None
    return uvloop.new_event_loop


def cmd_worker(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    import asyncio
    import signal

    from gateway.core.runtime import Services, clients
    from gateway.workers.queue import Worker

    registry = _start(settings)
    engine = _engine(settings)

    async def run() -> None:
        async with clients(settings) as upstream:
            services = Services.build(settings, engine, registry, upstream)
            worker = Worker(services, args.concurrency or settings.worker_concurrency)
            await worker.start()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            _announce(settings)
            await stop.wait()
            await worker.stop()
            await services.leases.close()
            await services.db.aclose()
        engine.dispose()

    # The event loop `gateway serve` runs on (uvicorn picks uvloop when it is installed).
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(run())
    return 0


def cmd_users_create(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    plan = args.plan or settings.default_plan
    _known_plan(settings, plan)
    password = args.password
    if password is None:
        if not sys.stdin.isatty():
            raise CommandError("no terminal to ask for the password on: pass --password")
        import getpass

        password = getpass.getpass("Password: ")
    try:
        user = users.create(_engine(settings), args.email, password, plan=plan)
    except users.UserError as exc:
        raise CommandError(str(exc)) from None
    _print(
        {"id": user.id, "email": user.email, "plan": user.plan}, args.json, f"created user {user.email} (id {user.id})"
    )
    return 0


def cmd_users_set_plan(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    from sqlalchemy import update

    plan = _known_plan(settings, args.plan)
    engine = _engine(settings)
    with engine.begin() as c:
        changed = c.execute(
            update(User).where(User.email == users.normalise_email(args.email)).values(plan=args.plan)
        ).rowcount
    if not changed:
        raise CommandError(f"no user with email {args.email}", NOT_FOUND)
    _print(
        {
            "email": args.email,
            "plan": args.plan,
            "max_connections": plan.max_connections,
            "daily_calls": plan.daily_calls,
        },
        args.json,
        f"{args.email} is now on the {args.plan} plan (takes effect within seconds)",
    )
    return 0


def cmd_users_list(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    engine = _engine(settings)
    with db.session(engine) as s:
        rows = s.execute(select(User).order_by(User.id)).scalars().all()
    data = [{"id": u.id, "email": u.email, "plan": u.plan, "created_at": u.created_at} for u in rows]
    _print(data, args.json, "\n".join(f"{d['id']:>5}  {d['email']:<40} {d['plan']}" for d in data) or "no users")
    return 0


def cmd_keys_create(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    engine = _engine(settings)
    user = users.by_email(engine, args.user)
    if user is None:
        raise CommandError(f"no user with email {args.user}", NOT_FOUND)
    allowed = [i.strip() for i in args.integrations.split(",") if i.strip()] if args.integrations else None
    if allowed:
        registry = spec_registry.registry_for(settings)
        unknown = [name for name in allowed if registry.get(name) is None]
        if unknown:
            raise CommandError(f"unknown integrations: {', '.join(unknown)}")
    key, secret = keys.create(engine, user.id or 0, args.name, allowed, args.daily_limit, args.require_approval)
    data = {"id": key.id, "name": key.name, "prefix": key.prefix, "key": secret, "integrations": allowed}
    _print(data, args.json, f"{secret}\n\nThis key is shown once. Store it now: only its hash is kept.")
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    engine = _engine(settings)
    statement = select(ApiKey, User.email).join(User, User.id == ApiKey.user_id).order_by(ApiKey.id)
    if args.user:
        statement = statement.where(User.email == users.normalise_email(args.user))
    with db.session(engine) as s:
        rows = s.exec(statement).all()
    data = [
        {
            "id": k.id,
            "user": email,
            "name": k.name,
            "prefix": k.prefix,
            "integrations": k.integrations,
            "daily_limit": k.daily_limit,
            "created_at": k.created_at,
            "last_used_at": k.last_used_at,
            "revoked": k.revoked_at is not None,
        }
        for k, email in rows
    ]
    lines = [
        f"{d['id']:>5}  {d['prefix']}…  {d['user']:<30} {d['name'] or '-':<20} "
        f"{'revoked' if d['revoked'] else 'active'}"
        for d in data
    ]
    _print(data, args.json, "\n".join(lines) or "no keys")
    return 0


def cmd_keys_revoke(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    if not keys.revoke(_engine(settings), args.id):
        raise CommandError(f"no active key with id {args.id}", NOT_FOUND)
    _print({"id": args.id, "revoked": True}, args.json, f"revoked key {args.id}")
    return 0


def cmd_integrations_list(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    registry = spec_registry.registry_for(settings)
    data = [
        {
            "name": i.name,
            "display_name": i.display_name,
            "auth": i.auth_type,
            "endpoints": len(i.endpoints),
            "source": str(i.source),
        }
        for i in registry
    ]
    lines = [f"{d['name']:<20} {d['display_name']:<24} {d['auth']:<8} {d['endpoints']:>3} endpoints" for d in data]
    _print(data, args.json, "\n".join(lines))
    return 0


def cmd_integrations_validate(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    paths = [Path(p) for p in args.paths] or [settings_module.BUILTIN_INTEGRATIONS, *settings.integrations_paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise CommandError(f"no such file or folder: {', '.join(missing)}", NOT_FOUND)
    errors: list[str] = []
    valid: list[dict[str, Any]] = []
    for path in spec_registry.spec_files(paths):
        try:
            integration = spec_registry.load_file(path)
        except specs.SpecError as exc:
            errors.append(str(exc))
        else:
            valid.append({"file": str(path), "name": integration.name, "endpoints": len(integration.endpoints)})
    if not errors:
        # Files that are each valid may still clash together (names, tool names).
        try:
            spec_registry.load_registry(paths)
        except specs.SpecError as exc:
            errors.append(str(exc))
    if args.json:
        print(json.dumps({"valid": valid, "errors": errors}, indent=2))
    else:
        for item in valid:
            print(f"ok     {item['file']} ({item['name']}, {item['endpoints']} endpoints)")
        for error in errors:
            print(f"error  {error}")
    return 1 if errors or not valid else 0


def cmd_db_upgrade(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    engine = _engine(settings, migrate=True)
    revision = db.current_revision(engine)
    _print({"revision": revision}, args.json, f"database at revision {revision}")
    return 0


def _number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in a range, refused with the range named."""

    def parse(text: str) -> int:
        span = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number {span}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected a whole number {span}, got {value}")
        return value

    return parse


class Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are a `CommandError` (one line) instead of usage text and an exit."""

    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{self.prog}: {message} (see {self.prog} --help)", USAGE)


def _version() -> str:
    try:
        return metadata.version("integration-gateway")
    except metadata.PackageNotFoundError:  # pragma: no cover (run from a source tree never installed)
        return "unknown"


def parser() -> argparse.ArgumentParser:
    root = Parser(prog="gateway", description="A self-hostable integration gateway.")
    root.add_argument("--version", action="version", version=f"gateway {_version()}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(sub, name: str, func, help: str) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument(
            "--json",
            action="store_true",
            help="print JSON for scripts (errors too, on stderr); serve and worker log JSON",
        )
        return p

    serve = add(commands, "serve", cmd_serve, "Start the gateway's HTTP server.")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_number(1, 65535), default=8000, help="1 to 65535")
    serve.add_argument(
        "--workers", type=_number(1, 1024), default=1, help="processes to start (use PostgreSQL beyond 1)"
    )
    serve.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-* from a proxy")

    worker = add(commands, "worker", cmd_worker, "Run queued calls (no HTTP server); run as many as you like.")
    worker.add_argument(
        "--concurrency", type=_number(1, 10_000), default=None, help="calls run at once (GATEWAY_WORKER_CONCURRENCY)"
    )

    users_cmd = commands.add_parser("users", help="Manage local accounts.").add_subparsers(dest="sub", required=True)
    create_user = add(users_cmd, "create", cmd_users_create, "Create an account (for closed deployments).")
    create_user.add_argument("email")
    create_user.add_argument("--password", help="prompted for when omitted (on a terminal)")
    create_user.add_argument("--plan", default=None, help="the plan (GATEWAY_DEFAULT_PLAN when omitted)")
    set_plan = add(users_cmd, "set-plan", cmd_users_set_plan, "Move an account to another plan.")
    set_plan.add_argument("email")
    set_plan.add_argument("plan")
    add(users_cmd, "list", cmd_users_list, "List accounts and their plans.")

    keys_cmd = commands.add_parser("keys", help="Manage API keys.").add_subparsers(dest="sub", required=True)
    create_key = add(keys_cmd, "create", cmd_keys_create, "Create an API key; it is printed once.")
    create_key.add_argument("--user", required=True, help="the owner's email")
    create_key.add_argument("--name", default="")
    create_key.add_argument("--integrations", help="comma-separated names; all when omitted")
    create_key.add_argument("--daily-limit", type=_number(1), default=None, help="calls per UTC day, at least 1")
    create_key.add_argument(
        "--require-approval", action="store_true", help="hold calls to endpoints that are not read-only for approval"
    )
    list_keys = add(keys_cmd, "list", cmd_keys_list, "List API keys (prefixes only).")
    list_keys.add_argument("--user", help="only this owner's keys")
    revoke = add(keys_cmd, "revoke", cmd_keys_revoke, "Revoke an API key by id.")
    revoke.add_argument("id", type=_number(1))

    integrations_cmd = commands.add_parser("integrations", help="Inspect integration specs.").add_subparsers(
        dest="sub", required=True
    )
    add(integrations_cmd, "list", cmd_integrations_list, "List the integrations this gateway serves.")
    validate = add(integrations_cmd, "validate", cmd_integrations_validate, "Validate spec files or folders.")
    validate.add_argument("paths", nargs="*", metavar="PATH")

    db_cmd = commands.add_parser("db", help="Database schema.").add_subparsers(dest="sub", required=True)
    add(db_cmd, "upgrade", cmd_db_upgrade, "Apply pending migrations.")
    return root


def _one_line(text: str) -> str:
    return logs.redact(" ".join(text.split()))


def _explain(exc: Exception, settings: settings_module.Settings | None) -> CommandError:
    """The one line a person sees for an error, whatever raised it."""
    if isinstance(exc, CommandError):
        return exc
    if isinstance(exc, settings_module.SettingError):
        return CommandError(str(exc), SETTING)
    if isinstance(exc, plans.PlanError):
        return CommandError(f"GATEWAY_PLANS_FILE: {exc}", SETTING)
    if isinstance(exc, specs.SpecError):
        return CommandError(str(exc), SPEC)
    if isinstance(exc, DBAPIError):
        where = settings_module.describe_database(settings.database_url) if settings else "the database"
        reason = str(exc.orig) if exc.orig is not None else type(exc).__name__
        return CommandError(f"GATEWAY_DATABASE_URL: the database {where} failed: {reason}", DATABASE)
    logger.debug("unexpected error", exc_info=exc)
    return CommandError(
        f"unexpected {type(exc).__name__}: {exc} (GATEWAY_LOG_LEVEL=DEBUG logs where it happened)", INTERNAL
    )


def _fail(error: CommandError, as_json: bool) -> int:
    message = _one_line(str(error))
    if as_json:
        print(json.dumps({"error": error.code, "message": message}), file=sys.stderr)
    else:
        print(f"error: {message}", file=sys.stderr)
    return EXIT_STATUS.get(error.code, 1)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    settings = None
    try:
        args = parser().parse_args(argv)
        # Before the settings are read, so that their own warnings go through the one handler too.
        logs.configure(json_lines=as_json)
        settings = settings_module.from_env()
        if as_json:
            settings = dataclasses.replace(settings, log_json=True)
        logs.configure(settings.log_level, settings.log_json)
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        return _fail(CommandError("interrupted", INTERRUPTED), as_json)
    except Exception as exc:
        return _fail(_explain(exc, settings), as_json)


if __name__ == "__main__":
    raise SystemExit(main())
