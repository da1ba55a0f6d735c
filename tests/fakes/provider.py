"""A fake OAuth 2 provider and upstream API, served over real HTTP on 127.0.0.1.

It checks what a real provider checks (client credentials, redirect URI, PKCE
S256, single-use codes) and rotates refresh tokens: a reused refresh token is
rejected with invalid_grant, as Google, Slack and GitHub Apps do, and with
`revoke_family_on_reuse` every token descended from it is revoked too (OAuth 2.1's
refresh token reuse detection). A `Gate` holds requests until the test opens it,
so a test can act while a request is at the provider.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gzip
import hashlib
import html
import secrets
import threading
import time
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

CLIENT_ID = "fake-client-id"
CLIENT_SECRET = "fake-client-secret-value"


@dataclasses.dataclass
class Recorded:
    method: str
    path: str
    raw_path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes


class Gate:
    """Holds the next `count` requests that pass it until `open()`: a test acts while they wait."""

    def __init__(self, count: int = 1) -> None:
        self.lock = threading.Lock()
        self.remaining = count
        self.arrived = 0
        self.opened = threading.Event()

    async def passing(self) -> None:
        with self.lock:
            if self.remaining <= 0:
                return
            self.remaining -= 1
            self.arrived += 1
        await asyncio.to_thread(self.opened.wait, 60)

    def wait_arrived(self, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.arrived < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} request(s) never reached the gate ({self.arrived} did)")
            time.sleep(0.01)

    def open(self) -> None:
        self.opened.set()


class ProviderState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        for gate in getattr(self, "gates", {}).values():
            gate.open()  # a request a failed test left waiting goes on
        self.codes: dict[str, dict[str, Any]] = {}
        self.access_tokens: dict[str, dict[str, Any]] = {}
        self.refresh_tokens: dict[str, dict[str, Any]] = {}
        self.revoked: list[str] = []
        self.requests: list[Recorded] = []
        self.token_requests: list[dict[str, str]] = []
        self.access_token_ttl = 3600
        self.token_endpoint_status: int | None = None  # e.g. 503 to simulate an outage
        self.token_delay = 0.0
        self.reject_all_refreshes = False
        self.issue_refresh_tokens = True
        self.rotate_refresh_tokens = True
        self.revoke_family_on_reuse = False
        self.always_401 = False
        # Gates by route: "token" (/oauth/token), "record" (/api/public/record/...), "api" (authorised /api).
        self.gates: dict[str, Gate] = {}
        self.next_issue = 1
        # (queue, seq, started, ended) of every call to /api/public/record/...
        self.recorded: list[tuple[str, int, float, float]] = []

    # Helpers for tests: mint tokens without a browser.
    def mint(
        self, user: str = "octocat", ttl: int | None = None, scope: str = "repo read:user", family: str | None = None
    ) -> dict[str, Any]:
        access = "gho_" + secrets.token_urlsafe(24)
        refresh = "ghr_" + secrets.token_urlsafe(24)
        family = family or refresh
        with self.lock:
            self.access_tokens[access] = {
                "user": user,
                "expires_at": time.time() + (ttl or self.access_token_ttl),
                "scope": scope,
                "family": family,
            }
            self.refresh_tokens[refresh] = {"user": user, "used": False, "scope": scope, "family": family}
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": ttl or self.access_token_ttl,
            "token_type": "bearer",
            "scope": scope,
        }

    def expire_access_tokens(self) -> None:
        with self.lock:
            for token in self.access_tokens.values():
                token["expires_at"] = 0

    def revoke_family(self, family: str) -> None:
        with self.lock:
            for store in (self.access_tokens, self.refresh_tokens):
                for token in store.values():
                    if token["family"] == family:
                        token["revoked"] = True

    def gate(self, route: str, count: int = 1) -> Gate:
        self.gates[route] = Gate(count)
        return self.gates[route]

    async def passing(self, route: str) -> None:
        gate = self.gates.get(route)
        if gate is not None:
            await gate.passing()

    def refresh_requests(self) -> list[dict[str, str]]:
        return [r for r in self.token_requests if r.get("grant_type") == "refresh_token"]

    def api_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.startswith("/api/")]


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str | None, str | None]:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        decoded = base64.b64decode(header[6:]).decode()
        client_id, _, secret = decoded.partition(":")
        return client_id, secret
    return form.get("client_id"), form.get("client_secret")


def create_provider(state: ProviderState) -> Starlette:
    async def authorize(request: Request) -> Response:
        q = request.query_params
        problems = []
        if q.get("client_id") != CLIENT_ID:
            problems.append("unknown client_id")
        if q.get("response_type") != "code":
            problems.append("response_type must be code")
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            problems.append("PKCE S256 is required")
        if not q.get("state"):
            problems.append("state is required")
        if problems:
            return HTMLResponse(f"<h1>Bad authorize request</h1><p>{html.escape('; '.join(problems))}</p>", 400)
        fields = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in q.items()
        )
        page = f"""<!doctype html><title>Fake provider consent</title>
<h1>Authorize the gateway?</h1><p>Scopes: {html.escape(q.get("scope", ""))}</p>
<form method="post" action="/oauth/decide">{fields}
<label>User <input name="user" value="octocat"></label>
<button name="decision" value="approve" id="approve">Approve</button>
<button name="decision" value="deny" id="deny">Deny</button></form>"""
        return HTMLResponse(page)

    async def decide(request: Request) -> Response:
        form = dict(await request.form())
        redirect_uri = form["redirect_uri"]
        if form.get("decision") != "approve":
            query = urlencode(
                {"error": "access_denied", "error_description": "The user denied access", "state": form["state"]}
            )
            return RedirectResponse(f"{redirect_uri}?{query}", 302)
        code = secrets.token_urlsafe(16)
        with state.lock:
            state.codes[code] = {
                "redirect_uri": redirect_uri,
                "challenge": form["code_challenge"],
                "scope": form.get("scope", ""),
                "user": form.get("user", "octocat"),
            }
        return RedirectResponse(f"{redirect_uri}?{urlencode({'code': code, 'state': form['state']})}", 302)

    def issue(user: str, scope: str) -> dict[str, Any]:
        token = state.mint(user=user, scope=scope)
        if not state.issue_refresh_tokens:
            token.pop("refresh_token")
            token.pop("expires_in")
        return token

    async def token(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        client_id, secret = _client_credentials(request, form)
        safe = {k: v for k, v in form.items() if k in ("grant_type",)}
        safe["client_auth"] = "basic" if request.headers.get("authorization") else "body"
        state.token_requests.append(safe)
        await state.passing("token")
        if state.token_delay:
            await asyncio.sleep(state.token_delay)
        if state.token_endpoint_status:
            return HTMLResponse("<h1>Service Unavailable</h1>", state.token_endpoint_status)
        if client_id != CLIENT_ID or secret != CLIENT_SECRET:
            return JSONResponse({"error": "invalid_client"}, 401)
        grant = form.get("grant_type")
        if grant == "authorization_code":
            with state.lock:
                code = state.codes.pop(form.get("code", ""), None)
            if code is None:
                return JSONResponse({"error": "invalid_grant", "error_description": "bad code"}, 400)
            if code["redirect_uri"] != form.get("redirect_uri"):
                return JSONResponse({"error": "invalid_grant", "error_description": "redirect_uri mismatch"}, 400)
            verifier = form.get("code_verifier", "")
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if digest != code["challenge"]:
                return JSONResponse({"error": "invalid_grant", "error_description": "PKCE verification failed"}, 400)
            return JSONResponse(issue(code["user"], code["scope"]))
        if grant == "refresh_token":
            with state.lock:
                entry = state.refresh_tokens.get(form.get("refresh_token", ""))
                valid = not state.reject_all_refreshes and entry is not None and not entry["used"]
                valid = valid and not entry.get("revoked")  # type: ignore[union-attr]
                if valid and state.rotate_refresh_tokens:
                    entry["used"] = True  # type: ignore[index]
            if not valid:
                if entry is not None and entry["used"] and state.revoke_family_on_reuse:
                    state.revoke_family(entry["family"])
                return JSONResponse({"error": "invalid_grant", "error_description": "refresh token invalid"}, 400)
            assert entry is not None
            new = state.mint(user=entry["user"], scope=entry["scope"], family=entry["family"])
            if not state.rotate_refresh_tokens:
                new.pop("refresh_token")
                with state.lock:
                    pass
            return JSONResponse(new)
        return JSONResponse({"error": "unsupported_grant_type"}, 400)

    async def revoke(request: Request) -> Response:
        form = await request.form()
        state.revoked.append(str(form.get("token", "")))
        return Response(status_code=200)

    def authorised(request: Request) -> dict[str, Any] | None:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer ") or state.always_401:
            return None
        entry = state.access_tokens.get(header[7:])
        if entry is None or entry["expires_at"] < time.time() or entry.get("revoked"):
            return None
        return entry

    async def api(request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        state.requests.append(
            Recorded(
                method=request.method,
                path=path,
                raw_path=request.scope.get("raw_path", b"").decode("latin-1"),
                query=list(request.query_params.multi_items()),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
        )
        sub = path[len("/api") :]
        # Public, unauthenticated helpers for the response-handling tests.
        if sub == "/public/text":
            return Response("plain text answer", media_type="text/plain")
        if sub == "/public/big":
            size = int(request.query_params.get("bytes", "1048576"))
            return StreamingResponse(_chunks(size), media_type="application/octet-stream")
        if sub == "/public/gzip-bomb":
            return Response(
                gzip.compress(b"0" * int(request.query_params.get("bytes", "1048576"))),
                headers={"content-encoding": "gzip"},
                media_type="text/plain",
            )
        if sub.startswith("/public/record/"):
            _, _, _, queue, seq = sub.split("/")
            started = time.monotonic()
            await state.passing("record")
            await asyncio.sleep(float(request.query_params.get("sleep", "0")))
            with state.lock:
                state.recorded.append((queue, int(seq), started, time.monotonic()))
            return JSONResponse({"queue": queue, "seq": int(seq)})
        if sub.startswith("/public/status/"):
            return Response(status_code=int(sub.rsplit("/", 1)[1]), headers={"x-ratelimit-remaining": "7"})
        if sub == "/public/slow":
            await asyncio.sleep(float(request.query_params.get("seconds", "2")))
            return JSONResponse({"slow": True})
        await state.passing("api")
        entry = authorised(request)
        if entry is None:
            return JSONResponse({"message": "Bad credentials"}, 401, headers={"www-authenticate": "Bearer"})
        headers = {"x-ratelimit-limit": "60", "x-ratelimit-remaining": "59", "x-internal-secret": "do-not-pass"}
        if sub == "/user":
            return JSONResponse({"login": entry["user"], "id": 1}, headers=headers)
        if sub == "/user/repos":
            # Two pages, linked the way GitHub links them: an absolute URL of the API's own.
            page = int(request.query_params.get("page", "1"))
            if page < 2:
                base = str(request.base_url).rstrip("/")
                headers["link"] = (
                    f'<{base}/api/user/repos?page=2>; rel="next", <{base}/api/user/repos?page=2>; rel="last"'
                )
            return JSONResponse(
                [{"id": page, "name": f"repo-{page}", "full_name": f"octocat/repo-{page}"}], headers=headers
            )
        if sub == "/echo":
            # What arrived, for the proxy's tests: method, query, headers and body as received.
            return JSONResponse(
                {
                    "method": request.method,
                    "query": request.url.query,
                    "headers": {k.lower(): v for k, v in request.headers.items()},
                    "body": body.decode("latin-1"),
                },
                headers=headers,
            )
        parts = sub.strip("/").split("/")
        if request.method == "POST" and len(parts) == 4 and parts[0] == "repos" and parts[3] == "issues":
            payload = await request.json() if body else {}
            with state.lock:
                number = state.next_issue
                state.next_issue += 1
            issue = {
                "number": number,
                "title": payload.get("title"),
                "body": payload.get("body"),
                "labels": [{"name": n} for n in payload.get("labels", [])],
                "repository_url": f"https://api.github.com/repos/{parts[1]}/{parts[2]}",
            }
            return JSONResponse(issue, 201, headers=headers)
        if sub == "/slack/chat.postMessage":
            return JSONResponse({"ok": False, "error": "channel_not_found"}, headers=headers)
        if sub.startswith("/missing"):
            return JSONResponse({"message": "Not Found"}, 404, headers=headers)
        return JSONResponse(
            {"method": request.method, "path": sub, "query": list(request.query_params.multi_items())},
            headers={**headers, "link": '<https://api.example/next?page=2>; rel="next"'},
        )

    return Starlette(
        routes=[
            Route("/oauth/authorize", authorize, methods=["GET"]),
            Route("/oauth/decide", decide, methods=["POST"]),
            Route("/oauth/token", token, methods=["POST"]),
            Route("/oauth/revoke", revoke, methods=["POST"]),
            Route("/api/{rest:path}", api, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ]
    )


async def _chunks(size: int):  # type: ignore[no-untyped-def]
    block = b"x" * 65536
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        sent += len(piece)
        yield piece
