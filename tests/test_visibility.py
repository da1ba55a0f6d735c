"""One visibility rule for an API key, walked through every route that reads a person's data.

One person has data of every kind in two integrations, GitHub and the fake API: direct, idempotent,
queued and approval-held runs, approval waitpoints (one completed with the upstream's body as its
output), connection waitpoints, a manual waitpoint, connections. Three keys read all of it through
every reader, over real HTTP and through the MCP SDK's client: the person's unlimited key sees all of
it; their key narrowed to GitHub sees GitHub's and the manual waitpoint, and nothing of the fake
API's; another person's key sees none of it. A new reader is one row in READERS, and
test_every_route_has_a_reader fails when a /v1 route has none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import mcp_types as types
import pytest
from mcp import Client
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.app import create_app
from gateway.core import approvals
from gateway.settings import Settings
from gateway.storage import end_users, keys
from gateway.storage.models import Connection, Run, Waitpoint
from tests.conftest import Gateway
from tests.servers import ServerThread
from tests.test_mcp import mcp_client

pytestmark = pytest.mark.anyio

SHARED = "shared"  # the queue every integration's queued calls share, behind a call held for approval
# What each integration's per-integration readers use: a tool to call and an endpoint to describe.
TOOL = {"github": "github_get_authenticated_user", "fakeapi": "fakeapi_text"}
REFUSALS = {"not_found", "scope_not_allowed", "unauthorized"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclasses.dataclass(frozen=True)
class Record:
    """Something of one person's that a key may or may not see; `id` (and each marker) appears only in
    answers that show it."""

    kind: str  # run | waitpoint | connection | integration
    id: str
    integration: str | None
    owner: str | None = "a"  # an integration is nobody's: only the key's own limits apply to it
    live: bool = False  # a pending run or a waiting waitpoint: cancelling or completing would change it
    queue: str | None = None
    markers: tuple[str, ...] = ()  # e.g. a string of the upstream's body that only this record holds
    # How the key that made it repeats its request: (path, body, Idempotency-Key).
    replay: tuple[str, dict[str, Any], str] | None = None
    idempotency_key: str | None = None  # a manual waitpoint's

    @property
    def reveals(self) -> tuple[str, ...]:
        return (self.id, *self.markers)


@dataclasses.dataclass(frozen=True)
class Viewer:
    name: str
    secret: str | None
    owner: str | None
    integrations: tuple[str, ...] | None = None
    made: frozenset[str] = frozenset()  # the records this very key made (it alone can replay them)

    def sees(self, record: Record) -> bool:
        """The rule under test, stated on its own: the owner's records, and of a limited key only
        those of its integrations and of none."""
        return record.owner in (None, self.owner) and (
            record.integration is None or self.integrations is None or record.integration in self.integrations
        )


ANONYMOUS = Viewer("no key", None, None)


@dataclasses.dataclass
class Answer:
    error: str | None  # the gateway's error code, if it refused
    text: str  # everything the caller got: status, headers and body
    body: Any = None
    value: Any = None


def http_answer(response: httpx.Response, value: str | None = None) -> Answer:
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else None
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "date")}
    shown = body.get(value) if value and isinstance(body, dict) else None
    return Answer(error, f"{response.status_code} {headers} {response.text}", body, shown)


def tool_answer(result: types.CallToolResult) -> Answer:
    content = result.structured_content or {}
    text = " ".join(c.text for c in result.content if isinstance(c, types.TextContent))
    return Answer(content.get("error") if result.is_error else None, f"{content} {text}", content)


class Walk:
    def __init__(self, gateway: Gateway, records: list[Record]) -> None:
        self.gateway = gateway
        self.records = records
        self.clients: dict[str, Client] = {}

    def headers(self, viewer: Viewer, **more: str) -> dict[str, str]:
        return {**({"Authorization": f"Bearer {viewer.secret}"} if viewer.secret else {}), **more}

    def get(self, viewer: Viewer, path: str, value: str | None = None, **params: Any) -> Answer:
        return http_answer(self.gateway.http.get(path, params=params, headers=self.headers(viewer)), value)

    def post(self, viewer: Viewer, path: str, body: Any = None, value: str | None = None, **headers: str) -> Answer:
        response = self.gateway.http.post(path, json=body, headers=self.headers(viewer, **headers))
        return http_answer(response, value)

    async def tool(self, viewer: Viewer, name: str, arguments: dict[str, Any] | None = None) -> Answer:
        return tool_answer(await self.clients[viewer.name].call_tool(name, arguments or {}))

    def live_in_queue(self, viewer: Viewer, queue: str, up_to: str | None = None) -> int:
        """What the queue holds for this viewer: the live runs it may see, up to one of them."""
        return sum(
            1
            for r in self.records
            if r.kind == "run" and r.live and r.queue == queue and viewer.sees(r) and (up_to is None or r.id <= up_to)
        )


Read = Callable[[Walk, Viewer, Any], Answer | Awaitable[Answer]]


def is_run(record: Record) -> bool:
    return record.kind == "run"


def is_waitpoint(record: Record) -> bool:
    return record.kind == "waitpoint"


def is_integration(record: Record) -> bool:
    return record.kind == "integration"


def nothing(record: Record) -> bool:
    return False


def is_end_user(record: Record) -> bool:
    return record.kind == "end_user"


def hidden(viewer: Viewer, record: Record) -> bool:
    return not viewer.sees(record)


def connection_id(walk: Walk, record: Record) -> str:
    """A connection record's public id (the record's id is its account, which answers show)."""
    with walk.gateway.engine.connect() as c:
        return c.execute(select(Connection.public_id).where(Connection.account == record.id)).scalar_one()


def always(viewer: Viewer, record: Record) -> bool:
    return True


@dataclasses.dataclass(frozen=True)
class Reader:
    name: str
    routes: tuple[str, ...]  # "METHOD /path" as the app declares it; "* /mcp" for the MCP endpoint
    read: Read
    each: str | None = None  # a record kind: read once per record of it (given to `read`), else once
    applies: Callable[[Viewer, Record], bool] = always
    shows: Callable[[Record], bool] = nothing  # records a viewer that sees them must find in the answer
    refusal: str = "not_found"  # the error for a record the viewer may not see
    changes: bool = False  # it would change a live record it may see: those are left alone
    expect: Callable[[Walk, Viewer, Any], Any] | None = None  # the answer's value, when it has one
    public: bool = False  # the same answer for every caller, with a key or without: nobody's data


def replay(walk: Walk, viewer: Viewer, record: Record) -> Answer:
    assert record.replay is not None
    path, body, idempotency_key = record.replay
    return walk.post(viewer, path, body, value="in_queue", **{"Idempotency-Key": idempotency_key})


def replay_position(walk: Walk, viewer: Viewer, record: Record) -> int | None:
    return walk.live_in_queue(viewer, record.queue, record.id) if record.live and record.queue else None


def with_idempotency_key(walk: Walk, viewer: Viewer, record: Record) -> Answer:
    return walk.post(viewer, "/v1/waitpoints", {"idempotencyKey": record.idempotency_key, "timeout": "1h"})


READERS: list[Reader] = [
    Reader("list runs", ("GET /v1/runs",), lambda w, v, _: w.get(v, "/v1/runs", limit=100), shows=is_run),
    Reader(
        "list the fake API's runs",
        ("GET /v1/runs",),
        lambda w, v, _: w.get(v, "/v1/runs", integration="fakeapi", limit=100),
        shows=lambda r: is_run(r) and r.integration == "fakeapi",
    ),
    Reader(
        "list a queue's pending runs",
        ("GET /v1/runs",),
        lambda w, v, _: w.get(v, "/v1/runs", queue=SHARED, status="pending", limit=100),
        shows=lambda r: is_run(r) and r.queue == SHARED,
    ),
    Reader("show a run", ("GET /v1/runs/{run_id}",), lambda w, v, r: w.get(v, f"/v1/runs/{r.id}"), "run", shows=is_run),
    Reader(
        "count a queue",
        ("GET /v1/queues/{name}",),
        lambda w, v, _: w.get(v, f"/v1/queues/{SHARED}", value="in_queue"),
        expect=lambda w, v, _: w.live_in_queue(v, SHARED),
    ),
    Reader(
        "repeat a call with its Idempotency-Key",
        ("POST /v1/{integration:integration}/{endpoint}",),
        replay,
        "run",
        applies=lambda v, r: r.id in v.made and r.replay is not None,
        shows=is_run,
        refusal="scope_not_allowed",
        expect=replay_position,
    ),
    Reader(
        "list waitpoints",
        ("GET /v1/waitpoints",),
        lambda w, v, _: w.get(v, "/v1/waitpoints", limit=100),
        shows=is_waitpoint,
    ),
    Reader(
        "list waiting waitpoints",
        ("GET /v1/waitpoints",),
        lambda w, v, _: w.get(v, "/v1/waitpoints", status="WAITING", limit=100),
        shows=lambda r: is_waitpoint(r) and r.live,
    ),
    Reader(
        "list completed waitpoints",
        ("GET /v1/waitpoints",),
        lambda w, v, _: w.get(v, "/v1/waitpoints", status="COMPLETED", period="1h", limit=100),
        shows=lambda r: is_waitpoint(r) and not r.live,
    ),
    Reader(
        "show a waitpoint",
        ("GET /v1/waitpoints/{waitpoint_id}",),
        lambda w, v, r: w.get(v, f"/v1/waitpoints/{r.id}"),
        "waitpoint",
        shows=is_waitpoint,
    ),
    Reader(
        "wait on a waitpoint",
        ("GET /v1/waitpoints/{waitpoint_id}/wait",),
        lambda w, v, r: w.get(v, f"/v1/waitpoints/{r.id}/wait", timeout="0"),
        "waitpoint",
    ),
    Reader(
        "create a waitpoint with an idempotency key in use",
        ("POST /v1/waitpoints",),
        with_idempotency_key,
        "waitpoint",
        applies=lambda v, r: r.idempotency_key is not None,
        shows=is_waitpoint,
        # Another person's key gets a waitpoint of its own, never this one.
        refusal="",
    ),
    Reader(
        "the key's callback secret", ("GET /v1/callbacks/secret",), lambda w, v, _: w.get(v, "/v1/callbacks/secret")
    ),
    Reader("list tools", ("GET /v1/tools",), lambda w, v, _: w.get(v, "/v1/tools"), shows=is_integration),
    Reader(
        "list one integration's tools",
        ("GET /v1/tools",),
        lambda w, v, r: w.get(v, "/v1/tools", format="openai", integration=r.id),
        "integration",
        shows=is_integration,
        refusal="scope_not_allowed",
    ),
    Reader(
        "start a connection",
        ("POST /v1/integrations/{name}/connect",),
        lambda w, v, r: w.post(v, f"/v1/integrations/{r.id}/connect"),
        "integration",
        shows=is_integration,
        refusal="scope_not_allowed",
    ),
    Reader("the catalogue", ("GET /v1/integrations",), lambda w, v, _: w.get(v, "/v1/integrations"), public=True),
    Reader(
        "one integration",
        ("GET /v1/{integration:integration}",),
        lambda w, v, r: w.get(v, f"/v1/{r.id}"),
        "integration",
        public=True,
    ),
    Reader(
        "one endpoint",
        ("GET /v1/{integration:integration}/{endpoint}",),
        lambda w, v, r: w.get(v, "/v1/" + TOOL[r.id].replace("_", "/", 1)),
        "integration",
        public=True,
    ),
    Reader("MCP tools/list", ("* /mcp",), lambda w, v, _: tools_list(w, v), shows=is_integration),
    Reader(
        "MCP list_integrations",
        ("* /mcp",),
        lambda w, v, _: w.tool(v, "list_integrations"),
        shows=lambda r: r.kind in ("integration", "connection"),
    ),
    Reader(
        "MCP search_tools",
        ("* /mcp",),
        lambda w, v, _: w.tool(v, "search_tools", {"query": "echo text issue user", "limit": 50}),
        shows=is_integration,
    ),
    Reader(
        "MCP search_tools in one integration",
        ("* /mcp",),
        lambda w, v, r: w.tool(v, "search_tools", {"query": "text user", "integration": r.id}),
        "integration",
        shows=is_integration,
        refusal="scope_not_allowed",
    ),
    Reader(
        "MCP connect_integration",
        ("* /mcp",),
        lambda w, v, r: w.tool(v, "connect_integration", {"integration": r.id}),
        "integration",
        shows=is_integration,
        refusal="scope_not_allowed",
    ),
    Reader(
        "MCP wait_for_connection",
        ("* /mcp",),
        lambda w, v, r: w.tool(v, "wait_for_connection", {"integration": r.id, "timeout_seconds": 1}),
        "integration",
        shows=is_integration,
        refusal="scope_not_allowed",
    ),
    Reader(
        "MCP tools/call",
        ("* /mcp",),
        lambda w, v, r: w.tool(v, TOOL[r.id]),
        "integration",
        refusal="scope_not_allowed",
    ),
    Reader(
        "list connections",
        ("GET /v1/connections",),
        lambda w, v, _: w.get(v, "/v1/connections"),
        shows=lambda r: r.kind == "connection",
    ),
    Reader(
        "show a connection",
        ("GET /v1/connections/{connection_id}",),
        lambda w, v, r: w.get(v, f"/v1/connections/{connection_id(w, r)}"),
        "connection",
        shows=lambda r: r.kind == "connection",
    ),
    Reader(
        "the passthrough proxy",
        tuple(
            f"{m} /v1/{{integration:integration}}/proxy/{{path:path}}"
            for m in ("GET", "POST", "PUT", "PATCH", "DELETE")
        ),
        lambda w, v, r: w.get(v, f"/v1/{r.id}/proxy/user"),
        "integration",
        refusal="scope_not_allowed",
    ),
    Reader("list end users", ("GET /v1/end_users",), lambda w, v, _: w.get(v, "/v1/end_users"), shows=is_end_user),
    Reader(
        "show an end user",
        ("GET /v1/end_users/{end_user_id:path}",),
        lambda w, v, r: w.get(v, f"/v1/end_users/{r.id}"),
        "end_user",
        shows=is_end_user,
    ),
    # Last: these change what they may touch (those that would change a record of the viewer's own
    # are only tried on records it may not see).
    Reader(
        "check a connection",
        ("POST /v1/connections/{connection_id}/check",),
        lambda w, v, r: w.post(v, f"/v1/connections/{connection_id(w, r)}/check"),
        "connection",
        applies=hidden,
    ),
    Reader(
        "change a connection",
        ("PATCH /v1/connections/{connection_id}",),
        lambda w, v, r: http_answer(
            w.gateway.http.patch(f"/v1/connections/{connection_id(w, r)}", json={"label": "x"}, headers=w.headers(v))
        ),
        "connection",
        applies=hidden,
    ),
    Reader(
        "delete a connection",
        ("DELETE /v1/connections/{connection_id}",),
        lambda w, v, r: http_answer(
            w.gateway.http.delete(f"/v1/connections/{connection_id(w, r)}", headers=w.headers(v))
        ),
        "connection",
        applies=hidden,
    ),
    Reader(
        "rename an end user",
        ("PATCH /v1/end_users/{end_user_id:path}",),
        lambda w, v, r: http_answer(
            w.gateway.http.patch(f"/v1/end_users/{r.id}", json={"display_name": "x"}, headers=w.headers(v))
        ),
        "end_user",
        applies=hidden,
    ),
    Reader(
        "delete an end user",
        ("DELETE /v1/end_users/{end_user_id:path}",),
        lambda w, v, r: http_answer(w.gateway.http.delete(f"/v1/end_users/{r.id}", headers=w.headers(v))),
        "end_user",
        applies=hidden,
    ),
    Reader(
        "cancel a run",
        ("POST /v1/runs/{run_id}/cancel",),
        lambda w, v, r: w.post(v, f"/v1/runs/{r.id}/cancel"),
        "run",
        changes=True,
    ),
    Reader(
        "complete a waitpoint with the key",
        ("POST /v1/waitpoints/{waitpoint_id}/complete",),
        lambda w, v, r: w.post(v, f"/v1/waitpoints/{r.id}/complete", {"data": {"forged": True}}),
        "waitpoint",
        changes=True,
        shows=is_waitpoint,
    ),
    Reader(
        "cancel a waitpoint",
        ("POST /v1/waitpoints/{waitpoint_id}/cancel",),
        lambda w, v, r: w.post(v, f"/v1/waitpoints/{r.id}/cancel"),
        "waitpoint",
        changes=True,
        shows=is_waitpoint,
    ),
]

# Routes under /v1 that no API key reads through, and why.
NOT_KEY_READERS = {
    "POST /v1/waitpoints/{waitpoint_id}/callback/{token}": "authorised by the signed URL alone, never by a key",
    "POST /v1/connect/sessions": "makes a session for one of the key owner's own end users; it reads nothing",
}


async def tools_list(walk: Walk, viewer: Viewer) -> Answer:
    listed = await walk.clients[viewer.name].list_tools()
    return Answer(None, json.dumps(sorted(tool.name for tool in listed.tools)))


async def read(reader: Reader, walk: Walk, viewer: Viewer, record: Record | None) -> Answer:
    answer = reader.read(walk, viewer, record)
    return await answer if inspect.isawaitable(answer) else answer


async def walk_as(walk: Walk, viewer: Viewer) -> list[str]:
    """Every reader, for one viewer: what it may not see never shows, what it may see does."""
    problems: list[str] = []
    hidden = [r for r in walk.records if not viewer.sees(r)]
    for reader in READERS:
        targets = [r for r in walk.records if r.kind == reader.each and reader.applies(viewer, r)]
        for record in targets if reader.each else [None]:
            where = f"{viewer.name}, {reader.name}" + (f" ({record.kind} of {record.integration})" if record else "")
            if reader.public:
                # The catalogue names every integration; it must hold nothing of anyone's.
                answer, anonymous = (
                    await read(reader, walk, viewer, record),
                    await read(reader, walk, ANONYMOUS, record),
                )
                if answer.body != anonymous.body:
                    problems.append(f"{where}: answers a key otherwise than no key")
                leaked = [m for r in hidden if r.owner is not None for m in r.reveals if m in answer.text]
                if leaked:
                    problems.append(f"{where}: shows {leaked}")
                continue
            visible = record is None or viewer.sees(record)
            if reader.changes and visible and record is not None and record.live:
                continue
            answer = await read(reader, walk, viewer, record)
            leaked = [m for r in hidden for m in r.reveals if m in answer.text]
            if leaked:
                problems.append(f"{where}: shows {leaked}: {answer.text[:400]}")
            if not visible:
                if reader.refusal and answer.error != reader.refusal:
                    problems.append(f"{where}: answered {answer.error or 'OK'}, not {reader.refusal}")
                continue
            if answer.error in REFUSALS:
                problems.append(f"{where}: refused with {answer.error} what the key may see")
                continue
            expected = [record] if record is not None else [r for r in walk.records if viewer.sees(r)]
            missing = [r.id for r in expected if reader.shows(r) and r.id not in answer.text]
            if missing:
                problems.append(f"{where}: does not show {missing}")
            if reader.expect is not None and answer.value != (value := reader.expect(walk, viewer, record)):
                problems.append(f"{where}: answered {answer.value}, not {value}")
    return problems


class Receiver:
    """Where the queued calls' callbacks go: one path per call."""

    def __init__(self) -> None:
        self.received: dict[str, bytes] = {}

        async def hook(request: Request) -> Response:
            self.received[request.path_params["name"]] = await request.body()
            return Response(status_code=204)

        self.app = Starlette(routes=[Route("/hook/{name}", hook, methods=["POST"])])


def marker(label: str) -> str:
    return f"{label}-{secrets.token_hex(6)}"


def run_id(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.headers["x-run-id"]


@dataclasses.dataclass
class Setup:
    person: int
    records: list[Record]
    viewers: list[Viewer]
    head: str  # the call held for approval at the head of the shared queue


def setup_person(gateway: Gateway, provider, callbacks: str) -> Setup:  # type: ignore[no-untyped-def]
    """One person's data of every kind in both integrations, and the three viewers."""
    gw, person = gateway, gateway.user()
    records = [Record("integration", name, name, owner=None) for name in TOOL]
    for name in TOOL:
        account = marker(f"account-{name}")
        gw.connect(person, provider, name, account)
        records.append(Record("connection", account, name))
    # An end user of this person's, with nothing connected: every key of the person's sees them.
    end_user = marker("end-user")
    end_users.resolve(gw.engine, person, end_user)
    records.append(Record("end_user", end_user, None))
    full = gw.key(person, name="full")
    approver = gw.key(person, name="approver", require_approval=True)
    narrowed_key, narrowed = keys.create(gw.engine, person, name="narrowed")

    def post(secret: str, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        return gw.http.post(path, json=body, headers={"Authorization": f"Bearer {secret}", **headers})

    def echo(label: str, **options: Any) -> tuple[str, dict[str, Any]]:
        item = marker(label)
        return item, {"params": {"item": item}, **options}

    issue = {"repo": "acme/webapp"}
    user = {"params": {}}

    # Direct calls, each of whose result holds the upstream's body.
    records.append(Record("run", run_id(post(full, "/v1/github/get_authenticated_user", user), 200), "github"))
    item, body = echo("direct")
    records.append(Record("run", run_id(post(full, "/v1/fakeapi/echo", body), 200), "fakeapi", markers=(item,)))
    # Idempotent direct calls of the key that is narrowed to GitHub afterwards: it can repeat them.
    made = []
    response = post(narrowed, "/v1/github/get_authenticated_user", user, **{"Idempotency-Key": "gh-direct"})
    made.append(
        Record("run", run_id(response, 200), "github", replay=("/v1/github/get_authenticated_user", user, "gh-direct"))
    )
    item, body = echo("idempotent")
    response = post(narrowed, "/v1/fakeapi/echo", body, **{"Idempotency-Key": "fa-direct"})
    made.append(
        Record("run", run_id(response, 200), "fakeapi", markers=(item,), replay=("/v1/fakeapi/echo", body, "fa-direct"))
    )

    # A call held for approval heads the shared queue, so every call queued behind it stays pending.
    item, body = echo("head", queue=SHARED)
    held = post(approver, "/v1/fakeapi/echo", body).json()
    head = held["id"]
    records.append(Record("run", head, "fakeapi", live=True, queue=SHARED, markers=(item,)))
    records.append(Record("waitpoint", held["waitpoint"]["id"], "fakeapi", live=True))
    queued = {"params": {**issue, "title": marker("queued")}, "queue": SHARED}
    records.append(
        Record("run", run_id(post(full, "/v1/github/create_issue", queued), 202), "github", live=True, queue=SHARED)
    )
    item, body = echo("queued", queue=SHARED)
    records.append(
        Record(
            "run",
            run_id(post(full, "/v1/fakeapi/echo", body), 202),
            "fakeapi",
            live=True,
            queue=SHARED,
            markers=(item,),
        )
    )
    item, body = echo("callback", queue=SHARED, callback_url=f"{callbacks}/hook/fakeapi")
    response = post(narrowed, "/v1/fakeapi/echo", body, **{"Idempotency-Key": "fa-queued"})
    made.append(
        Record(
            "run",
            run_id(response, 202),
            "fakeapi",
            live=True,
            queue=SHARED,
            markers=(item,),
            replay=("/v1/fakeapi/echo", body, "fa-queued"),
        )
    )
    body = {**user, "queue": SHARED, "callback_url": f"{callbacks}/hook/github"}
    response = post(narrowed, "/v1/github/get_authenticated_user", body, **{"Idempotency-Key": "gh-queued"})
    made.append(
        Record(
            "run",
            run_id(response, 202),
            "github",
            live=True,
            queue=SHARED,
            replay=("/v1/github/get_authenticated_user", body, "gh-queued"),
        )
    )
    records += made

    # A GitHub call held in a queue of its own, still waiting for the person.
    held = post(approver, "/v1/github/create_issue", {"params": {**issue, "title": "held"}, "queue": "held"}).json()
    records.append(Record("run", held["id"], "github", live=True, queue="held"))
    records.append(Record("waitpoint", held["waitpoint"]["id"], "github", live=True))

    # Approved calls: their waitpoints' output is the upstream's body.
    services = gw.app.state.services
    title, (item, echoed) = marker("approved"), echo("approved")
    for path, body, integration, shown in (
        ("/v1/github/create_issue", {"params": {**issue, "title": title}}, "github", title),
        ("/v1/fakeapi/echo", echoed, "fakeapi", item),
    ):
        held = post(approver, path, body).json()
        assert approvals.approve(services, held["id"], person)
        waited = gw.http.get(
            f"/v1/waitpoints/{held['waitpoint']['id']}/wait",
            params={"timeout": "60s"},
            headers={"Authorization": f"Bearer {full}"},
        ).json()
        assert waited["ok"] is True and shown in json.dumps(waited["output"]), waited
        records.append(Record("run", held["id"], integration, markers=(shown,)))
        records.append(Record("waitpoint", held["waitpoint"]["id"], integration, markers=(shown,)))

    # Waitpoints for a connection, and one made by hand (it has no integration).
    for name in TOOL:
        connect = post(full, f"/v1/integrations/{name}/connect", {}).json()
        records.append(Record("waitpoint", connect["waitpoint"]["id"], name, live=True))
    tag, idempotency_key = marker("tag"), marker("manual")
    manual = post(full, "/v1/waitpoints", {"timeout": "1h", "tags": [tag], "idempotencyKey": idempotency_key}).json()
    records.append(Record("waitpoint", manual["id"], None, live=True, markers=(tag,), idempotency_key=idempotency_key))

    assert keys.update(gw.engine, person, narrowed_key.id or 0, integrations=["github"])
    viewers = [
        Viewer("the person's unlimited key", full, "a"),
        Viewer("their key narrowed to GitHub", narrowed, "a", ("github",), frozenset(r.id for r in made)),
        Viewer("another person's key", gw.key(gw.user(), name="stranger"), "b"),
    ]
    return Setup(person, records, viewers, head)


def statuses(gateway: Gateway, records: list[Record]) -> dict[str, str]:
    with gateway.engine.connect() as c:
        found = c.execute(select(Run.id, Run.status)).all() + c.execute(select(Waitpoint.id, Waitpoint.status)).all()
    return {record_id: status for record_id, status in found if record_id in {r.id for r in records}}


@contextlib.asynccontextmanager
async def mcp_clients(gateway: Gateway, viewers: list[Viewer]) -> AsyncIterator[dict[str, Client]]:
    async with contextlib.AsyncExitStack() as stack:
        yield {v.name: await stack.enter_async_context(mcp_client(gateway, v.secret or "")) for v in viewers}


async def test_every_reader_shows_a_key_only_what_it_may_see(gateway: Gateway, provider) -> None:
    receiver = Receiver()
    with ServerThread(receiver.app) as callbacks:
        setup = setup_person(gateway, provider, callbacks.url)
        walk = Walk(gateway, setup.records)
        before = statuses(gateway, setup.records)
        assert all(before[r.id] in ("pending", "WAITING") for r in setup.records if r.live), before

        problems: list[str] = []
        async with mcp_clients(gateway, setup.viewers) as walk.clients:
            for viewer in setup.viewers:
                problems += await walk_as(walk, viewer)
        changed = sorted(k for k, v in statuses(gateway, setup.records).items() if v != before[k])
        if changed:
            problems.append(f"readers changed records they were refused: {changed}")

        # Callbacks: once the shared queue runs, the narrowed key's fake API call fails and is not
        # called back about, while its GitHub call is. Queued first, the fake API call has ended,
        # and any callback of it was on its way, before the GitHub call was even claimed.
        assert approvals.reject(gateway.app.state.services, setup.head, setup.person) is not None
        deadline = time.monotonic() + 60
        while "github" not in receiver.received and time.monotonic() < deadline:
            time.sleep(0.02)
    assert "github" in receiver.received, "the narrowed key's GitHub call never called back"
    if "fakeapi" in receiver.received:
        problems.append(
            f"the narrowed key was called back about a fake API run: {receiver.received['fakeapi'][:300]!r}"
        )
    assert not problems, "\n".join(problems)


def test_every_route_has_a_reader(settings: Settings) -> None:
    """A route that reads per-owner data with a key must be walked above: add a row to READERS."""
    covered = {route for reader in READERS for route in reader.routes}
    declared = set()
    for route in create_app(settings).routes:
        path = getattr(route, "path", "")
        if not (path.startswith("/v1") or path == "/mcp"):
            continue
        methods = getattr(route, "methods", None) or {"*"}
        declared |= {f"{method} {path}" for method in methods if method not in ("HEAD", "OPTIONS")}
    assert declared - covered - set(NOT_KEY_READERS) == set(), "routes without a row in READERS"
    assert covered - declared == set(), "rows in READERS for routes that do not exist"
