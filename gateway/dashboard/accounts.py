"""Account pages: sign up, sign in, sign out, change the password."""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.dashboard.web import (
    action,
    checked_form,
    field,
    known_visitor,
    page,
    redirect,
    render,
    safe_next,
    services_of,
    sign_in,
    sign_out,
)
from gateway.storage import sessions, users
from gateway.storage.models import User

LOGGED_OUT = "/dashboard/login?signed_out=1"
TOO_MANY = "Too many sign-in attempts. Wait 15 minutes, then try again."


def client_ip(request: Request) -> str:
    # Behind a proxy, `gateway serve --proxy-headers` makes this the forwarded address.
    return request.client.host if request.client else "unknown"


async def login_page(request: Request) -> Response:
    next_path = safe_next(request.query_params.get("next"))
    if (await known_visitor(request)).user is not None:
        return redirect(next_path)
    return render(request, "login.html", {"next": next_path, "email": "", "error": None})


async def login(request: Request) -> Response:
    form = await checked_form(request)
    return await services_of(request).db.run(lambda _engine: _login(request, form))


def _login(request: Request, form: FormData) -> Response:
    services = services_of(request)
    email, password = users.normalise_email(field(form, "email", 320)), field(form, "password")
    next_path = safe_next(field(form, "next", 2000))

    def again(error: str, status: int) -> Response:
        return render(request, "login.html", {"next": next_path, "email": email, "error": error}, status)

    ip = client_ip(request)
    if not sessions.attempt(services.engine, email, ip):
        return again(TOO_MANY, 429)
    user = users.authenticate(services.engine, email, password)
    if user is None:
        return again("That email and password do not match an account.", 400)
    sessions.succeeded(services.engine, email, ip)
    response = redirect(next_path)
    sign_in(request, response, user)
    return response


async def signup_page(request: Request) -> Response:
    next_path = safe_next(request.query_params.get("next"))
    if (await known_visitor(request)).user is not None:
        return redirect(next_path)
    status = 200 if services_of(request).settings.signup_open else 403
    return render(request, "signup.html", {"next": next_path, "email": "", "error": None}, status)


async def signup(request: Request) -> Response:
    form = await checked_form(request)
    return await services_of(request).db.run(lambda _engine: _signup(request, form))


def _signup(request: Request, form: FormData) -> Response:
    services = services_of(request)
    email, password = field(form, "email", 400), field(form, "password")
    next_path = safe_next(field(form, "next", 2000))

    def again(error: str, status: int) -> Response:
        return render(request, "signup.html", {"next": next_path, "email": email, "error": error}, status)

    if not services.settings.signup_open:
        return again("Sign-up is closed on this gateway.", 403)
    if password != field(form, "password_confirm"):
        return again("The two passwords are not the same.", 400)
    # Hashing is slow on purpose: the same throttle as sign-in keeps it from being a lever.
    ip = client_ip(request)
    if not sessions.attempt(services.engine, users.normalise_email(email), ip):
        return again(TOO_MANY, 429)
    try:
        user = users.create(services.engine, email, password, services.settings.default_plan)
    except users.UserError as exc:
        return again(str(exc), 400)
    sessions.succeeded(services.engine, user.email, ip)
    response = redirect(next_path)
    sign_in(request, response, user)
    return response


async def logout(request: Request) -> Response:
    if (await known_visitor(request)).session_id is None:
        # Already signed out (elsewhere, or the session expired): nothing to change, nothing to check.
        return redirect(LOGGED_OUT)
    await checked_form(request)
    response = redirect(LOGGED_OUT)
    await services_of(request).db.run_unsettled(lambda _engine: sign_out(request, response))
    return response


def _plan(request: Request, user: User) -> dict[str, bool]:
    return {"plan_known": services_of(request).plans.known(user.plan)}


@page
def account_page(request: Request, user: User) -> Response:
    done = request.query_params.get("done") == "password"
    return render(request, "account.html", {"error": None, "done": done, **_plan(request, user)})


@action
def change_password(request: Request, user: User, form: FormData) -> Response:
    services = services_of(request)
    current, new = field(form, "current_password"), field(form, "new_password")

    def again(error: str, status: int) -> Response:
        return render(request, "account.html", {"error": error, "done": False, **_plan(request, user)}, status)

    if new != field(form, "new_password_confirm"):
        return again("The two new passwords are not the same.", 400)
    try:
        users.validate(user.email, new)
    except users.UserError as exc:
        return again(str(exc), 400)
    ip = client_ip(request)
    if not sessions.attempt(services.engine, user.email, ip):
        return again(TOO_MANY, 429)
    if users.authenticate(services.engine, user.email, current) is None:
        return again("The current password is not right.", 400)
    sessions.succeeded(services.engine, user.email, ip)
    password_hash = users.hash_password(new)
    updated = sessions.set_password_hash(services.engine, user.id or 0, password_hash)
    response = redirect("/dashboard/account?done=password")
    sign_in(request, response, updated)
    return response


routes = [
    Route("/dashboard/login", login_page, methods=["GET"]),
    Route("/dashboard/login", login, methods=["POST"]),
    Route("/dashboard/signup", signup_page, methods=["GET"]),
    Route("/dashboard/signup", signup, methods=["POST"]),
    Route("/dashboard/logout", logout, methods=["POST"]),
    Route("/dashboard/account", account_page, methods=["GET"]),
    Route("/dashboard/account/password", change_password, methods=["POST"]),
]
