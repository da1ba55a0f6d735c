"""The `gateway` command: serve, operate accounts and keys, validate specs, migrate."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select

from . import db, keys, logs, plans, specs, users
from . import settings as settings_module
from .models import ApiKey, User


def _print(data: Any, as_json: bool, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if as_json else text)


def _engine(settings: settings_module.Settings):  # type: ignore[no-untyped-def]
    engine = db.make_engine(settings.database_url)
    if settings.migrate_on_start:
        db.upgrade(engine)
    return engine


def cmd_serve(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    import uvicorn

    logs.configure(settings.log_level, settings.log_json)
    # Load and validate the specs before binding the port: a bad spec stops start-up with its file and field.
    specs.registry_for(settings)
    # uvicorn formats each access-log line's arguments even when its level hides the line (~5 µs a call).
    access_log = logging.getLevelName(settings.log_level) <= logging.INFO
    if args.workers > 1:
        # Migrate once here so the workers do not race to do it.
        if settings.migrate_on_start:
            db.upgrade(db.make_engine(settings.database_url))
        uvicorn.run(
            "gateway.asgi:app",
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=settings.log_level.lower(),
            access_log=access_log,
            server_header=False,
            proxy_headers=args.proxy_headers,
        )
    else:
        from .app import create_app

        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_level=settings.log_level.lower(),
            access_log=access_log,
            server_header=False,
            proxy_headers=args.proxy_headers,
        )
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

    from .services import Services, clients
    from .worker import Worker

    logs.configure(settings.log_level, settings.log_json)

    async def run() -> None:
        engine = _engine(settings)
        registry = specs.registry_for(settings)
        async with clients(settings) as upstream:
            services = Services.build(settings, engine, registry, upstream)
            worker = Worker(services, args.concurrency or settings.worker_concurrency)
            await worker.start()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            await worker.stop()
            services.batcher.close()
        engine.dispose()

    # The event loop `gateway serve` runs on (uvicorn picks uvloop when it is installed).
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(run())
    return 0


def cmd_users_create(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    password = args.password
    if password is None:
        import getpass

        password = getpass.getpass("Password: ")
    try:
        user = users.create(_engine(settings), args.email, password, plan=args.plan or settings.default_plan)
    except users.UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _print(
        {"id": user.id, "email": user.email, "plan": user.plan}, args.json, f"created user {user.email} (id {user.id})"
    )
    return 0


def cmd_users_set_plan(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    from sqlalchemy import update

    available = plans.load(settings.plans_file)
    if args.plan not in available:
        print(f"error: unknown plan '{args.plan}'; plans: {', '.join(sorted(available))}", file=sys.stderr)
        return 1
    engine = _engine(settings)
    with engine.begin() as c:
        changed = c.execute(
            update(User).where(User.email == users.normalise_email(args.email)).values(plan=args.plan)
        ).rowcount
    if not changed:
        print(f"error: no user with email {args.email}", file=sys.stderr)
        return 1
    plan = available[args.plan]
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


def _user_or_fail(engine, email: str) -> User | None:  # type: ignore[no-untyped-def]
    user = users.by_email(engine, email)
    if user is None:
        print(f"error: no user with email {email}", file=sys.stderr)
    return user


def cmd_keys_create(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    engine = _engine(settings)
    user = _user_or_fail(engine, args.user)
    if user is None:
        return 1
    allowed = [i.strip() for i in args.integrations.split(",") if i.strip()] if args.integrations else None
    if allowed:
        registry = specs.registry_for(settings)
        unknown = [name for name in allowed if registry.get(name) is None]
        if unknown:
            print(f"error: unknown integrations: {', '.join(unknown)}", file=sys.stderr)
            return 1
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
        print(f"error: no active key with id {args.id}", file=sys.stderr)
        return 1
    _print({"id": args.id, "revoked": True}, args.json, f"revoked key {args.id}")
    return 0


def cmd_integrations_list(args: argparse.Namespace, settings: settings_module.Settings) -> int:
    try:
        registry = specs.registry_for(settings)
    except specs.SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
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
        print(f"error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 1
    errors: list[str] = []
    valid: list[dict[str, Any]] = []
    for path in specs.spec_files(paths):
        try:
            integration = specs.load_file(path)
        except specs.SpecError as exc:
            errors.append(str(exc))
        else:
            valid.append({"file": str(path), "name": integration.name, "endpoints": len(integration.endpoints)})
    if not errors:
        # Files that are each valid may still clash together (names, tool names).
        try:
            specs.load_registry(paths)
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
    engine = db.make_engine(settings.database_url)
    db.upgrade(engine)
    _print({"revision": db.current_revision(engine)}, args.json, f"database at revision {db.current_revision(engine)}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="gateway", description="A self-hostable integration gateway.")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(sub, name: str, func, help: str) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument("--json", action="store_true", help="print JSON for scripts")
        return p

    serve = add(commands, "serve", cmd_serve, "Start the gateway's HTTP server.")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="processes to start (use PostgreSQL beyond 1)")
    serve.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-* from a proxy")

    worker = add(commands, "worker", cmd_worker, "Run queued calls (no HTTP server); run as many as you like.")
    worker.add_argument("--concurrency", type=int, default=None, help="calls run at once (GATEWAY_WORKER_CONCURRENCY)")

    users_cmd = commands.add_parser("users", help="Manage local accounts.").add_subparsers(dest="sub", required=True)
    create_user = add(users_cmd, "create", cmd_users_create, "Create an account (for closed deployments).")
    create_user.add_argument("email")
    create_user.add_argument("--password", help="prompted for when omitted")
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
    create_key.add_argument("--daily-limit", type=int, default=None)
    create_key.add_argument(
        "--require-approval", action="store_true", help="hold calls to endpoints that are not read-only for approval"
    )
    list_keys = add(keys_cmd, "list", cmd_keys_list, "List API keys (prefixes only).")
    list_keys.add_argument("--user", help="only this owner's keys")
    revoke = add(keys_cmd, "revoke", cmd_keys_revoke, "Revoke an API key by id.")
    revoke.add_argument("id", type=int)

    integrations_cmd = commands.add_parser("integrations", help="Inspect integration specs.").add_subparsers(
        dest="sub", required=True
    )
    add(integrations_cmd, "list", cmd_integrations_list, "List the integrations this gateway serves.")
    validate = add(integrations_cmd, "validate", cmd_integrations_validate, "Validate spec files or folders.")
    validate.add_argument("paths", nargs="*", metavar="PATH")

    db_cmd = commands.add_parser("db", help="Database schema.").add_subparsers(dest="sub", required=True)
    add(db_cmd, "upgrade", cmd_db_upgrade, "Apply pending migrations.")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = settings_module.from_env()
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
