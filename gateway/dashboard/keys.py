"""API key pages: create (the secret is shown once), list, change which integrations a key may use, revoke."""

from __future__ import annotations

import dataclasses
import json

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.core import connect as oauth
from gateway.dashboard.web import action, field, page, redirect, render, services_of
from gateway.specs.spec import CompiledEndpoint
from gateway.storage import connections, history, keys
from gateway.storage.models import ApiKey, User

MAX_DAILY_LIMIT = 1_000_000_000


class FormProblem(ValueError):
    """A key form field that cannot be used; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Choices:
    name: str
    integrations: list[str] | None  # None: every integration
    daily_limit: int | None
    require_approval: bool


def _choices(request: Request, form: FormData) -> Choices:
    """What a key form asks for, checked."""
    registry = services_of(request).registry
    name = field(form, "name", 200).strip()
    allowed: list[str] | None = None
    if field(form, "access") != "all":
        picked = [v for v in form.getlist("integrations") if isinstance(v, str)]
        unknown = [v for v in picked if registry.get(v) is None]
        if unknown:
            raise FormProblem("Choose integrations from the list.")
        if not picked:
            raise FormProblem("Choose at least one integration, or allow all of them.")
        allowed = sorted(set(picked))
    raw_limit = field(form, "daily_limit", 20).strip()
    limit: int | None = None
    if raw_limit:
        if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= MAX_DAILY_LIMIT:
            raise FormProblem("The daily limit must be a whole number of calls, at least 1 (or empty for none).")
        limit = int(raw_limit)
    return Choices(name, allowed, limit, field(form, "require_approval") == "1")


def _list(request: Request, user: User, *, error: str | None = None, status: int = 200) -> Response:
    services = services_of(request)
    every = keys.for_user(services.engine, user.id or 0)
    context = {
        "active": [k for k in every if k.revoked_at is None],
        "revoked": [k for k in every if k.revoked_at is not None],
        "today": history.calls_today_by_key(services.engine, user.id or 0),
        "integrations": list(services.registry),
        "error": error,
        "done": request.query_params.get("done") == "revoked",
    }
    return render(request, "keys.html", context, status)


@page
def keys_page(request: Request, user: User) -> Response:
    return _list(request, user)


@action
def create_key(request: Request, user: User, form: FormData) -> Response:
    services = services_of(request)
    try:
        chosen = _choices(request, form)
    except FormProblem as exc:
        return _list(request, user, error=str(exc), status=400)
    key, secret = keys.create(
        services.engine,
        user.id or 0,
        chosen.name,
        chosen.integrations,
        chosen.daily_limit,
        require_approval=chosen.require_approval,
    )
    # Shown in this response only: the secret is in no URL, cookie or log, and the page is not cached.
    context = {"key": key, "secret": secret, "example": _example(request, user, key)}
    return render(request, "key_created.html", context, 201)


@dataclasses.dataclass(frozen=True)
class Example:
    """A first call to try with a new key: one that can work on this gateway and changes nothing."""

    endpoint: CompiledEndpoint
    params: str
    connected: bool


def _example(request: Request, user: User, key: ApiKey) -> Example | None:
    services = services_of(request)
    connected = {c.integration for c in connections.list_for_user(services.engine, user.id or 0)}
    usable = [
        i
        for i in services.registry
        if keys.allows(key, i.name) and oauth.missing_configuration(services.settings, i) is None
    ]
    # What the person has connected first: that call can succeed right away.
    for integration in sorted(usable, key=lambda i: i.name not in connected):
        reads = [e for e in integration.endpoints.values() if e.read_only]
        # Fewest required params first: an example that needs no made-up ids.
        reads.sort(key=lambda e: sum(p.required for p in e.spec.params.values()))
        if reads:
            # Shown inside single quotes in a shell command.
            params = json.dumps({"params": reads[0].example_params()}, ensure_ascii=False).replace("'", "'\\''")
            return Example(reads[0], params, integration.name in connected)
    return None


def _key(request: Request, user: User) -> ApiKey:
    raw = request.path_params["key_id"]
    key = (
        keys.get_for_user(services_of(request).engine, user.id or 0, int(raw))
        if raw.isascii() and raw.isdigit() and len(raw) < 12
        else None
    )
    if key is None:
        raise HTTPException(404, "There is no API key with that id in your account.")
    return key


def _detail(request: Request, user: User, key: ApiKey, *, error: str | None = None, status: int = 200) -> Response:
    services = services_of(request)
    context = {
        "key": key,
        "calls_today": history.calls_today_by_key(services.engine, user.id or 0).get(key.id or 0, 0),
        "integrations": list(services.registry),
        "error": error,
        "done": request.query_params.get("done") == "saved",
    }
    return render(request, "key.html", context, status)


@page
def key_page(request: Request, user: User) -> Response:
    return _detail(request, user, _key(request, user))


@action
def update_key(request: Request, user: User, form: FormData) -> Response:
    key = _key(request, user)
    if key.revoked_at is not None:
        return _detail(request, user, key, error="This key is revoked; create a new one instead.", status=400)
    try:
        chosen = _choices(request, form)
    except FormProblem as exc:
        return _detail(request, user, key, error=str(exc), status=400)
    keys.update(services_of(request).engine, user.id or 0, key.id or 0, **dataclasses.asdict(chosen))
    return redirect(f"/dashboard/keys/{key.id}?done=saved")


@action
def revoke_key(request: Request, user: User, form: FormData) -> Response:
    key = _key(request, user)
    keys.revoke(services_of(request).engine, key.id or 0, user_id=user.id)
    return redirect("/dashboard/keys?done=revoked")


routes = [
    Route("/dashboard/keys", keys_page, methods=["GET"]),
    Route("/dashboard/keys", create_key, methods=["POST"]),
    Route("/dashboard/keys/{key_id}", key_page, methods=["GET"]),
    Route("/dashboard/keys/{key_id}", update_key, methods=["POST"]),
    Route("/dashboard/keys/{key_id}/revoke", revoke_key, methods=["POST"]),
]
