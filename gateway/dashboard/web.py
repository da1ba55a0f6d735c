"""The HTML side's plumbing: templates, the signed-in person, form protection, error pages.

Every state-changing form is a POST that must come from our own origin
(Origin, or Referer when a browser sends no Origin) and carry a CSRF token:
an itsdangerous signature over the session it was rendered for, compared in
constant time. Before sign-in the token is bound to a random cookie instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import http
import inspect
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.core.runtime import Services
from gateway.jsoncodec import has_lone_surrogate
from gateway.settings import Settings
from gateway.storage import sessions, users
from gateway.storage.models import User, utcnow

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = TEMPLATES / "static"
PAGE_PREFIXES = ("/dashboard", "/oauth/", "/static/", "/connect")
LOGIN_PATH = "/dashboard/login"
HOME_PATH = "/dashboard/integrations"

# A Chrome-family browser applies `form-action` to the redirect after a form
# POST, which would block the Connect button's hop to the provider: not set.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


def is_page(path: str) -> bool:
    """Paths answered in HTML (errors included); everything else keeps the JSON errors."""
    return path == "/" or path.startswith(PAGE_PREFIXES)


def _asset_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(STATIC.glob("*")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def _when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def _when_ms(value: dt.datetime | None) -> str:
    if value is None:
        return "—"
    utc = value.astimezone(dt.UTC)
    return f"{utc:%Y-%m-%d %H:%M:%S}.{utc.microsecond // 1000:03d} UTC"


def _ago(value: dt.datetime | None) -> str:
    if value is None:
        return "never"
    seconds = int((utcnow() - value).total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["when_ms"] = _when_ms
    env.filters["ago"] = _ago
    env.filters["urlpart"] = lambda value: quote(str(value), safe="")
    env.globals["asset_version"] = _asset_version()
    env.globals["min_password"] = users.MIN_PASSWORD
    return env


templates = Jinja2Templates(env=_environment())


def services_of(request: Request) -> Services:
    return request.app.state.services


def cookie_name(settings: Settings, base: str) -> str:
    # The __Host- prefix makes the browser refuse the cookie unless Secure, host-only and Path=/.
    return f"__Host-{base}" if settings.public_https else base


@dataclasses.dataclass
class Visitor:
    """Who is asking: a signed-in user with a session, or an anonymous browser."""

    user: User | None
    session_id: str | None
    form_nonce: str | None
    new_nonce: bool = False


async def known_visitor(request: Request) -> Visitor:
    """Looks the visitor up (in a database thread) so that `visitor` and `render` need no database."""
    found = getattr(request.state, "visitor", None)
    if found is not None:
        return found
    return await services_of(request).db.run_unsettled(lambda _engine: visitor(request))


def visitor(request: Request) -> Visitor:
    found = getattr(request.state, "visitor", None)
    if found is not None:
        return found
    services = services_of(request)
    token = request.cookies.get(cookie_name(services.settings, "gateway_session"), "")
    active = sessions.lookup(services.engine, token) if token else None
    nonce = request.cookies.get(cookie_name(services.settings, "gateway_form")) or None
    if active is not None:
        found = Visitor(user=active.user, session_id=active.id, form_nonce=nonce)
    else:
        found = Visitor(user=None, session_id=None, form_nonce=nonce)
    request.state.visitor = found
    return found


def _csrf_binding(found: Visitor) -> str | None:
    if found.session_id:
        return "session:" + found.session_id
    if found.form_nonce:
        return "browser:" + found.form_nonce
    return None


def csrf_token(request: Request) -> str:
    found = visitor(request)
    if _csrf_binding(found) is None:
        found.form_nonce, found.new_nonce = secrets.token_urlsafe(24), True
    signer = services_of(request).signer("csrf", int(sessions.LIFETIME.total_seconds()))
    return signer.dumps(_csrf_binding(found))


def origin_of(url: str) -> str | None:
    """scheme://host[:port] of a URL, or None when it cannot be read (a bad port, an unclosed '[')."""
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return None
    if not scheme or not host:
        return None
    if port is None or (scheme, port) in (("https", 443), ("http", 80)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def same_origin(request: Request) -> bool:
    expected = origin_of(services_of(request).settings.public_url)
    # Origin when the browser sent one ("null" included), else the Referer.
    origin = request.headers.get("origin")
    sent = origin if origin is not None else request.headers.get("referer", "")
    return expected is not None and origin_of(sent) == expected


async def checked_form(request: Request) -> FormData:
    """The posted form, once it is known to come from one of our own pages."""
    if not same_origin(request):
        raise HTTPException(403, "This form was sent from another site, so it was ignored.")
    form = await request.form(max_files=0, max_fields=200)
    # A multipart form may name any charset; one that yields NUL or a lone surrogate could be stored by no database.
    if any(_unstorable(name) or _unstorable(value) for name, value in form.multi_items() if isinstance(value, str)):
        raise HTTPException(
            400, "This form holds characters the gateway does not take (NUL, or text that is not UTF-8)."
        )
    sent = form.get("csrf_token")
    binding = _csrf_binding(await known_visitor(request))
    signer = services_of(request).signer("csrf", int(sessions.LIFETIME.total_seconds()))
    signed = signer.loads(sent) if isinstance(sent, str) and len(sent) < 400 else None
    if binding is None or not isinstance(signed, str) or not hmac.compare_digest(signed, binding):
        raise HTTPException(403, "This form has expired. Go back, reload the page and try again.")
    return form


def _unstorable(text: str) -> bool:
    return "\x00" in text or has_lone_surrogate(text)


def field(form: FormData, name: str, limit: int = 1000) -> str:
    """A posted text field, cut to `limit` characters; files and missing fields read as ''."""
    value = form.get(name)
    return value[:limit] if isinstance(value, str) else ""


def safe_next(value: str | None, default: str = HOME_PATH) -> str:
    """A local path to return to, or `default`: never another site."""
    if not value or len(value) > 2000 or not value.startswith("/") or value.startswith("//"):
        return default
    if "\\" in value or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def redirect(path: str) -> Response:
    return RedirectResponse(path, status_code=303)


def login_redirect(request: Request) -> Response:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return redirect(f"{LOGIN_PATH}?next={quote(safe_next(here), safe='')}")


# A handler that only needs the database is a plain function, run whole in a database thread; one
# that also waits on something else (an upstream, a token endpoint) is async and uses Database.run.
Page = Callable[[Request, User], Awaitable[Response] | Response]
Action = Callable[[Request, User, FormData], Awaitable[Response] | Response]


def page(handler: Page) -> Callable[[Request], Awaitable[Response]]:
    """A GET page for a signed-in person; others go to the login page and come back."""

    async def endpoint(request: Request) -> Response:
        user = (await known_visitor(request)).user
        if user is None:
            return login_redirect(request)
        if inspect.iscoroutinefunction(handler):
            return await handler(request, user)
        return await services_of(request).db.run(lambda _engine: handler(request, user))  # type: ignore[return-value]

    return endpoint


def action(handler: Action) -> Callable[[Request], Awaitable[Response]]:
    """A form POST by a signed-in person: same origin, valid CSRF token."""

    async def endpoint(request: Request) -> Response:
        form = await checked_form(request)
        user = visitor(request).user
        if user is None:
            return redirect(LOGIN_PATH)
        if inspect.iscoroutinefunction(handler):
            return await handler(request, user, form)
        return await services_of(request).db.run(lambda _engine: handler(request, user, form))  # type: ignore[return-value]

    return endpoint


def render(request: Request, name: str, context: dict[str, Any] | None = None, status: int = 200) -> Response:
    services = services_of(request)
    found = visitor(request)
    values = {
        "user": found.user,
        "csrf_token": csrf_token(request),
        "signup_open": services.settings.signup_open,
        "public_url": services.settings.public_url,
        "path": request.url.path,
        **(context or {}),
    }
    response = templates.TemplateResponse(request, name, values, status_code=status)
    if found.new_nonce:
        response.set_cookie(
            cookie_name(services.settings, "gateway_form"),
            found.form_nonce or "",
            max_age=int(sessions.LIFETIME.total_seconds()),
            httponly=True,
            samesite="lax",
            secure=services.settings.public_https,
        )
    return response


def sign_in(request: Request, response: Response, user: User) -> None:
    services = services_of(request)
    token = sessions.start(services.engine, user)
    response.delete_cookie(
        cookie_name(services.settings, "gateway_form"),
        httponly=True,
        samesite="lax",
        secure=services.settings.public_https,
    )
    response.set_cookie(
        cookie_name(services.settings, "gateway_session"),
        token,
        max_age=int(sessions.LIFETIME.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=services.settings.public_https,
    )


def sign_out(request: Request, response: Response) -> None:
    services = services_of(request)
    found = visitor(request)
    if found.session_id:
        sessions.end(services.engine, found.session_id)
    response.delete_cookie(
        cookie_name(services.settings, "gateway_session"),
        httponly=True,
        samesite="lax",
        secure=services.settings.public_https,
    )


ERROR_TITLES = {
    400: "That did not work",
    403: "Not allowed",
    404: "Page not found",
    405: "Not allowed here",
    429: "Too many attempts",
    500: "Something went wrong",
    503: "Temporarily unavailable",
}


async def error_page(request: Request, status: int, detail: str | None = None) -> Response:
    """A friendly HTML error; it must render even when the database is what failed."""
    try:
        await known_visitor(request)
    except Exception:
        # Shown as to a visitor who is not signed in, with no second try at the database.
        request.state.visitor = Visitor(user=None, session_id=None, form_nonce=None)
    title = ERROR_TITLES.get(status, "Something went wrong")
    phrase = http.HTTPStatus(status).phrase if status in http.HTTPStatus._value2member_map_ else ""
    message = detail if detail and detail != phrase else None
    context = {"title": title, "message": message, "status": status}
    try:
        return render(request, "error.html", context, status=status)
    except Exception:
        request.state.visitor = Visitor(user=None, session_id=None, form_nonce=None)
        values = {"request": request, "user": None, "csrf_token": "", "signup_open": False, "path": "", **context}
        return templates.TemplateResponse(request, "error.html", values, status_code=status)


class PageHeadersMiddleware:
    """Security headers on every HTML path; pages also say `no-store` (they show personal data)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_page(scope["path"]):
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in PAGE_HEADERS if h[0] not in present)
                if not static and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
            await send(message)

        await self.app(scope, receive, send_with_headers)
