"""Faults mid-call: the database cut while a call or a token refresh is at the provider, a process
killed mid-call, a token endpoint slower than the caller, and a token refreshed by another process.

The database is reached through a TCP proxy the test cuts (tests/tcpproxy.py); the provider holds a
request at a gate until the test opens it (tests/fakes/provider.py), so each fault lands exactly
while the call is at the other side of the wire.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine

from gateway.app import create_app
from gateway.crypto import Box
from gateway.storage import connections, runs, users
from gateway.storage import database as db
from gateway.storage.models import Connection, Run, utcnow
from gateway.storage.runs import RunRecord
from tests.conftest import Gateway, PostgresSchema, make_settings, postgres_available
from tests.fakes.provider import Gate, ProviderState
from tests.processes import GatewayProcess, gateway_env
from tests.servers import ServerThread, free_port
from tests.tcpproxy import TcpProxy


def on_postgres(test: Callable[..., None]) -> Callable[..., None]:
    test = pytest.mark.postgres(test)
    return pytest.mark.skipif(not postgres_available(), reason="PostgreSQL is not running on 127.0.0.1:5432")(test)


# How long the database stays away: the cuts that lost results were 1-3 s long.
CUT_SECONDS = 1.5


def wait_for(condition: Callable[[], Any], timeout: float = 30, what: str = "the condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Background:
    """Runs one blocking call in a thread, for a caller who waits while the test injects a fault."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = 60) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call never returned"
        if self.error is not None:
            raise self.error
        return self.result


@dataclasses.dataclass
class CutGateway:
    """A gateway on PostgreSQL whose database connection the test can cut, and a direct engine to look."""

    gw: Gateway
    proxy: TcpProxy
    direct: Engine

    def cut_while(self, gate: Gate, landed: Callable[[], Any]) -> None:
        """With a request held at `gate`: cuts the database, lets the request go on, waits until
        `landed` (the provider has answered), keeps the database away a while, and restores it."""
        self.proxy.cut()
        gate.open()
        try:
            wait_for(landed, what="the provider's answer")
            time.sleep(CUT_SECONDS)  # the fault itself: the database stays unreachable this long
        finally:
            self.proxy.restore()

    def run(self, run_id: str) -> Run:
        found = runs.get_any(self.direct, run_id)
        assert found is not None
        return found


def cut_gateway(provider: ProviderState, **changes: object) -> Iterator[CutGateway]:
    schema, proxy = PostgresSchema(), TcpProxy(5432)
    url = schema.url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    assert url != schema.url
    settings = make_settings(url, provider.url, **changes)  # type: ignore[attr-defined]
    direct = db.make_engine(schema.url)
    server = ServerThread(create_app(settings)).start()
    gw = Gateway(settings, server)
    try:
        yield CutGateway(gw, proxy, direct)
    finally:
        provider.reset()  # opens any gate a failed test left closed
        proxy.restore()
        gw.http.close()
        server.stop()
        direct.dispose()
        proxy.close()
        schema.drop()


@pytest.fixture
def cut(provider: ProviderState) -> Iterator[CutGateway]:
    yield from cut_gateway(provider, worker_lease_seconds=5.0)


def fake_account(gw: Gateway, provider: ProviderState) -> tuple[int, dict[str, str]]:
    user_id = gw.user()
    gw.connect(user_id, provider, integration="fakeapi")
    return user_id, {"Authorization": f"Bearer {gw.key(user_id)}"}


def recorded(provider: ProviderState, queue: str) -> list[int]:
    return [seq for q, seq, _, _ in provider.recorded if q == queue]


# Point 15: a result the upstream produced is never thrown away.


@on_postgres
def test_a_queued_result_is_written_after_a_database_cut(cut: CutGateway, provider: ProviderState) -> None:
    gw = cut.gw
    _, auth = fake_account(gw, provider)
    gate = provider.gate("record")
    ids = [
        gw.http.post(
            "/v1/fakeapi/record", json={"params": {"queue": "a", "seq": seq}, "queue": "a"}, headers=auth
        ).json()["id"]
        for seq in (1, 2)
    ]
    gate.wait_arrived()
    # The first call is at the upstream: the database goes away, the upstream answers, and the
    # worker's final write meets the cut.
    cut.cut_while(gate, lambda: recorded(provider, "a") == [1])
    wait_for(lambda: all(cut.run(i).status in runs.TERMINAL for i in ids), timeout=60, what="both calls to end")
    first, second = cut.run(ids[0]), cut.run(ids[1])
    assert (first.status, first.error_code) == ("completed", None), "the upstream's result was thrown away"
    assert runs.result_of(gw.box, first)["data"] == {"queue": "a", "seq": 1}
    assert second.status == "completed"
    assert recorded(provider, "a") == [1, 2], "a call ran twice or not at all"


def test_an_orphaned_running_row_blocks_its_queue_for_one_lease_at_most(settings, provider) -> None:
    # A row left `running` under this worker's id (its final write never landed) must not be kept
    # alive by the heartbeat while the worker runs other calls: it is recovered after its lease.
    lease = 2.0
    # The busy call must outlast the test at the upstream: its timeout is far beyond the deadline.
    leased = dataclasses.replace(settings, worker_lease_seconds=lease, upstream_timeout=120.0)
    with ServerThread(create_app(leased)) as server:
        gw = Gateway(leased, server)
        try:
            user_id, auth = fake_account(gw, provider)
            gate = provider.gate("record")
            busy = gw.http.post(
                "/v1/fakeapi/record", json={"params": {"queue": "busy", "seq": 1}, "queue": "busy"}, headers=auth
            ).json()["id"]
            gate.wait_arrived()
            worker_id = runs.get_any(gw.engine, busy).worker_id
            assert worker_id
            record = RunRecord.start()
            record.user_id, record.integration, record.endpoint, record.queue_name = user_id, "fakeapi", "record", "o"
            runs.create_pending(gw.engine, gw.box, record=record, params={"queue": "o", "seq": 0})
            now = utcnow()
            with gw.engine.begin() as c:
                c.execute(
                    update(Run)
                    .where(Run.id == record.id)
                    .values(
                        status="running",
                        worker_id=worker_id,
                        started_at=now,
                        lease_until=now + dt.timedelta(seconds=lease),
                    )
                )
            behind = gw.http.post(
                "/v1/fakeapi/record", json={"params": {"queue": "o", "seq": 1}, "queue": "o"}, headers=auth
            ).json()["id"]
            # The busy call is still held at the upstream, so the worker's heartbeat keeps beating.
            wait_for(
                lambda: runs.get_any(gw.engine, behind).status == "completed",
                timeout=10 * lease,
                what="the call behind the orphan to run",
            )
            orphan = runs.get_any(gw.engine, record.id)
            assert (orphan.status, orphan.error_code) == ("failed", "worker_lost")
            assert runs.get_any(gw.engine, busy).status == "running"
            gate.open()
            wait_for(lambda: runs.get_any(gw.engine, busy).status == "completed", what="the busy call to end")
        finally:
            provider.reset()
            gw.http.close()


# Point 16: idempotency keys recover.


@on_postgres
def test_an_idempotent_call_answers_the_upstream_through_a_database_cut(cut: CutGateway, provider) -> None:
    gw = cut.gw
    _, auth = fake_account(gw, provider)
    headers = {**auth, "Idempotency-Key": "cut-1"}
    body = {"params": {"queue": "i", "seq": 1}}
    gate = provider.gate("record")
    caller = Background(lambda: gw.http.post("/v1/fakeapi/record", json=body, headers=headers))
    gate.wait_arrived()
    cut.cut_while(gate, lambda: recorded(provider, "i") == [1])
    response = caller.join()
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"queue": "i", "seq": 1}
    run_id = response.headers["x-run-id"]
    # Once the database is back the run row is finished, and a repeat replays the answer.
    replay = wait_for(
        lambda: (r := gw.http.post("/v1/fakeapi/record", json=body, headers=headers)).status_code != 409 and r,
        what="the key to stop answering idempotency_in_progress",
    )
    assert replay.status_code == 200, replay.text
    assert replay.headers["idempotent-replayed"] == "true" and replay.headers["x-run-id"] == run_id
    assert replay.json() == response.json()
    assert recorded(provider, "i") == [1]


@pytest.mark.slow
@on_postgres
def test_an_idempotency_key_of_a_killed_process_is_recovered(provider) -> None:
    schema = PostgresSchema()
    engine = db.make_engine(schema.url)
    db.upgrade(engine)
    secret_key = "faults-test-secret-" + "f" * 32
    processes: list[GatewayProcess] = []
    try:
        user = users.create(engine, "killed@example.com", "correct horse battery")
        token = provider.mint()
        connections.save(
            engine,
            Box((secret_key,)),
            user_id=user.id,
            integration="fakeapi",
            access_token=token["access_token"],
            refresh_token=token["refresh_token"],
            expires_at=connections.expires_at_from(token),
        )
        from gateway.storage import keys

        _, api_key = keys.create(engine, user.id)
        env = gateway_env(schema.url, provider.url, secret_key, GATEWAY_WORKER_LEASE_SECONDS="2")
        for _ in range(2):  # started together, then waited for: each takes seconds to import
            port = free_port()
            processes.append(GatewayProcess(["serve", "--host", "127.0.0.1", "--port", str(port)], env, port))
        for process in processes:
            process.wait_ready(timeout=120)  # generous: a loaded machine imports slowly
        doomed, survivor = processes
        calls = {
            "record": ("unsafe", {"params": {"queue": "unsafe", "seq": 1}}),
            "record_safe": ("safe", {"params": {"queue": "safe", "seq": 1}}),
        }

        def post(url: str, endpoint: str) -> httpx.Response:
            key, body = calls[endpoint]
            headers = {"Authorization": f"Bearer {api_key}", "Idempotency-Key": key}
            return httpx.post(f"{url}/v1/fakeapi/{endpoint}", json=body, headers=headers, timeout=30)

        gate = provider.gate("record", count=2)
        callers = [Background(lambda e=endpoint: post(doomed.url, e)) for endpoint in calls]
        gate.wait_arrived(2)
        doomed.kill()  # SIGKILL while both calls are at the upstream
        for caller in callers:
            with pytest.raises(httpx.TransportError):
                caller.join()
        gate.open()
        wait_for(lambda: recorded(provider, "unsafe") == recorded(provider, "safe") == [1], what="the upstream")

        def settled(endpoint: str) -> httpx.Response | None:
            response = post(survivor.url, endpoint)
            return None if response.status_code == 409 else response

        # Not retry_safe: the upstream may have acted, so the key replays that the outcome is unknown.
        unsafe = wait_for(lambda: settled("record"), what="the unsafe call's key to be recovered")
        assert unsafe.status_code == 500, unsafe.text
        assert unsafe.json()["error"] == "worker_lost"
        assert unsafe.headers["idempotent-replayed"] == "true"
        # retry_safe: the key is freed and the repeat runs the call again.
        safe = wait_for(lambda: settled("record_safe"), what="the safe call's key to be recovered")
        assert safe.status_code == 200, safe.text
        assert "idempotent-replayed" not in safe.headers
        assert recorded(provider, "safe") == [1, 1]
    finally:
        provider.reset()
        for process in processes:
            process.stop()
        engine.dispose()
        schema.drop()


@on_postgres
def test_a_database_failure_before_the_upstream_frees_the_idempotency_key(cut: CutGateway, provider) -> None:
    gw = cut.gw
    user_id, auth = fake_account(gw, provider)
    headers = {**auth, "Idempotency-Key": "refresh-cut"}
    body = {"params": {"queue": "f", "seq": 1}}
    # The token must be refreshed before the call, and the database fails while it is.
    with cut.direct.begin() as c:
        c.execute(update(Connection).values(expires_at=utcnow() - dt.timedelta(minutes=5)))
    provider.token_endpoint_status = 503
    gate = provider.gate("token")
    caller = Background(lambda: gw.http.post("/v1/fakeapi/record", json=body, headers=headers))
    gate.wait_arrived()
    cut.cut_while(gate, lambda: caller.thread.join(0) or not caller.thread.is_alive())
    response = caller.join()
    assert response.status_code == 503 and response.json()["error"] == "service_unavailable", response.text
    assert recorded(provider, "f") == []
    provider.token_endpoint_status = None
    # Nothing reached the upstream: once the database is back the same key runs the call.
    again = wait_for(
        lambda: (
            (r := gw.http.post("/v1/fakeapi/record", json=body, headers=headers)).status_code not in (409, 503) and r
        ),
        what="the key to be freed",
    )
    assert again.status_code == 200, again.text
    assert "idempotent-replayed" not in again.headers
    assert recorded(provider, "f") == [1]


# Point 18: a refresh result is never lost.


def expire_everything(engine: Engine, provider: ProviderState) -> None:
    provider.expire_access_tokens()
    with engine.begin() as c:
        c.execute(update(Connection).values(expires_at=utcnow() - dt.timedelta(minutes=5)))


def stored_refresh_token(engine: Engine, box: Box, user_id: int) -> str | None:
    found = connections.get(engine, user_id, "github")
    assert found is not None
    return box.decrypt(found.refresh_token)


def test_a_refresh_slower_than_the_caller_is_still_stored(database_url, provider) -> None:
    # The caller waits GATEWAY_UPSTREAM_TIMEOUT for a refresh; the provider answers after that,
    # having rotated the refresh token. The new one must be stored, or the next refresh reuses the
    # old one and the provider revokes the whole family.
    settings = make_settings(database_url, provider.url, upstream_timeout=1.0)  # type: ignore[attr-defined]
    provider.revoke_family_on_reuse = True
    with ServerThread(create_app(settings)) as server:
        gw = Gateway(settings, server)
        try:
            user_id = gw.user()
            gw.connect(user_id, provider)
            secret = gw.key(user_id)
            before = stored_refresh_token(gw.engine, gw.box, user_id)
            expire_everything(gw.engine, provider)
            gate = provider.gate("token")
            response = gw.call(secret, "github", "get_authenticated_user")
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "token_refresh_unavailable"
            gate.open()  # the provider answers after the caller gave up, with a rotated refresh token
            wait_for(
                lambda: stored_refresh_token(gw.engine, gw.box, user_id) != before,
                timeout=20,
                what="the rotated refresh token to be stored",
            )
            assert gw.call(secret, "github", "get_authenticated_user").status_code == 200
            expire_everything(gw.engine, provider)
            assert gw.call(secret, "github", "get_authenticated_user").status_code == 200
            assert len(provider.refresh_requests()) == 2
            assert connections.get(gw.engine, user_id, "github").status == "connected"
        finally:
            provider.reset()
            gw.http.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_refresh_is_stored_when_its_mcp_call_is_cancelled(gateway: Gateway, account, provider) -> None:
    from tests.test_mcp import mcp_client

    user_id, secret = account
    provider.revoke_family_on_reuse = True
    before = stored_refresh_token(gateway.engine, gateway.box, user_id)
    expire_everything(gateway.engine, provider)
    gate = provider.gate("token")
    async with mcp_client(gateway, secret) as client, anyio.create_task_group() as calls:
        calls.start_soon(client.call_tool, "github_get_authenticated_user", {})
        await anyio.to_thread.run_sync(gate.wait_arrived)
        calls.cancel_scope.cancel()  # the agent gives up while the refresh is at the provider
    # The cancellation reaches the gateway as a notification of its own. Nothing outside shows when it
    # has landed, so the provider answers a while later: sooner, and the test could not tell a
    # cancelled refresh from a finished one (it cannot fail the fixed code either way).
    await anyio.sleep(2)
    gate.open()
    await anyio.to_thread.run_sync(
        lambda: wait_for(
            lambda: stored_refresh_token(gateway.engine, gateway.box, user_id) != before,
            what="the rotated refresh token to be stored",
        )
    )
    assert gateway.call(secret, "github", "get_authenticated_user").status_code == 200
    assert connections.get(gateway.engine, user_id, "github").status == "connected"


@on_postgres
def test_a_refresh_is_stored_after_a_database_cut(cut: CutGateway, provider) -> None:
    gw = cut.gw
    provider.revoke_family_on_reuse = True
    user_id = gw.user()
    gw.connect(user_id, provider)
    secret = gw.key(user_id)
    expire_everything(cut.direct, provider)
    minted = len(provider.refresh_tokens)
    gate = provider.gate("token")
    caller = Background(lambda: gw.call(secret, "github", "get_authenticated_user"))
    gate.wait_arrived()
    cut.cut_while(gate, lambda: len(provider.refresh_tokens) > minted)
    response = caller.join()
    assert response.status_code == 200, response.text
    # The rotated refresh token was stored: the next refresh uses it, not the revoked old one.
    expire_everything(cut.direct, provider)
    again = gw.call(secret, "github", "get_authenticated_user")
    assert again.status_code == 200, again.text
    assert len(provider.refresh_requests()) == 2
    assert connections.get(cut.direct, user_id, "github").status == "connected"


# Point 19: per-process caches never cause a false needs_reconnect.


def test_a_token_another_process_refreshed_is_not_taken_for_our_own(database_url, provider) -> None:
    settings = make_settings(database_url, provider.url)  # type: ignore[attr-defined]
    with ServerThread(create_app(settings)) as first, ServerThread(create_app(settings)) as second:
        one, two = Gateway(settings, first), Gateway(settings, second)
        try:
            user_id = one.user()
            one.connect(user_id, provider)
            secret = one.key(user_id)
            # The second process sends the token it has (T1), and the call waits at the upstream.
            gate = provider.gate("api")
            late = Background(lambda: two.call(secret, "github", "get_authenticated_user"))
            gate.wait_arrived()
            # Meanwhile T1 is refused, the first process refreshes (T2), and T2 is refused in turn:
            # only a refresh with T2's refresh token can help now.
            provider.expire_access_tokens()
            assert one.call(secret, "github", "get_authenticated_user").status_code == 200
            assert len(provider.refresh_requests()) == 1
            provider.expire_access_tokens()
            gate.open()
            response = late.join()
            assert response.status_code == 200, response.text
            assert len(provider.refresh_requests()) == 2
            assert connections.get(one.engine, user_id, "github").status == "connected"
        finally:
            provider.reset()
            one.http.close()
            two.http.close()
