"""Who is calling: the bearer credential a request carries, the API key it names, and the end user
(X-End-User-Id) and connection (X-Connection-Id) it acts through."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from starlette.requests import Request

from gateway.core.runtime import Services
from gateway.errors import BadRequest, NotFound, ScopeNotAllowed, Unauthorized
from gateway.storage import end_users, keys
from gateway.storage.models import ApiKey, EndUser

END_USER_HEADER = "x-end-user-id"
CONNECTION_HEADER = "x-connection-id"
CONNECTION_ID = re.compile(r"^conn_[0-9a-f]{32}$")
# Whom a key may act for (ApiKey.acts_for).
ACTS_FOR = ("any", "owner", "end_users")


@dataclasses.dataclass(frozen=True)
class Acting:
    """For whom a request acts: the key's owner (no end user) or one of their end users, and the
    connection it names, if any."""

    end_user: EndUser | None = None
    connection_id: str | None = None

    @property
    def end_user_id(self) -> str | None:
        """The owner's id for the end user, as runs and the API show it."""
        return self.end_user.external_id if self.end_user is not None else None


OWNER = Acting()


def bearer(request: Request) -> str | None:
    """The credential of `Authorization: Bearer ...`, or of `token ...`: the scheme GitHub's clients
    send, so that one pointed at the proxy authenticates with its gateway key unchanged."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() not in ("bearer", "token") or not value.strip():
        return None
    return value.strip()


async def api_key(services: Services, request: Request) -> ApiKey:
    """The caller's API key: from this process's cache, or looked up in a database thread."""
    secret = bearer(request)
    if secret is None:
        raise Unauthorized("Send an API key as 'Authorization: Bearer sk_...'.")
    key = keys.in_cache(services.engine, secret) or await services.db.run_unsettled(keys.authenticate, secret)
    if key is None:
        raise Unauthorized("The API key is unknown or revoked.")
    # Lets the rate-limit middleware report this key's usage on any /v1 answer.
    request.scope.setdefault("state", {})["api_key"] = key
    return key


def check_end_user_id(value: str, name: str = "X-End-User-Id") -> str:
    if not end_users.valid_external_id(value):
        raise BadRequest(f"'{name}' must be 1-200 printable ASCII characters, not starting or ending with a space.")
    return value


def may_act_for(key: ApiKey, end_user_id: str | None) -> None:
    """Refuses what the key's `acts_for` excludes."""
    if end_user_id is None and key.acts_for == "end_users":
        raise ScopeNotAllowed("This API key acts for end users only: name one with the X-End-User-Id header.")
    if end_user_id is not None and key.acts_for == "owner":
        raise ScopeNotAllowed("This API key acts for its owner only: it cannot act for an end user (X-End-User-Id).")


def end_user_filter(key: ApiKey, acting: str | None, named: str | None) -> str | None:
    """Whose records a listing shows: the end user the request acts for (X-End-User-Id), else the
    one `?end_user_id=` names, else everyone the key sees. A request acting for one end user sees
    no other's, so naming another is refused."""
    for value, name in ((acting, "X-End-User-Id"), (named, "end_user_id")):
        if value is not None:
            check_end_user_id(value, name)
    if acting is not None:
        may_act_for(key, acting)
        if named is not None and named != acting:
            raise BadRequest("'end_user_id' names another end user than X-End-User-Id.")
    return acting if acting is not None else named


async def end_user(services: Services, key: ApiKey, external_id: str | None, *, create: bool = True) -> EndUser | None:
    """The end user a request names (made on first use), or None for the key's owner; refused when
    the key may not act for them. With `create=False` an unknown end user is a 404."""
    may_act_for(key, external_id)
    if external_id is None:
        return None
    check_end_user_id(external_id)
    found = end_users.in_cache(services.engine, key.user_id, external_id)
    if found is None:
        if create:
            found = await services.db.run_unsettled(end_users.resolve, key.user_id, external_id)
        else:
            found = await services.db.run_unsettled(end_users.known, key.user_id, external_id)
    if found is None:
        raise NotFound("There is no end user with that id.")
    return found


async def acting(services: Services, key: ApiKey, headers: Mapping[str, str], *, create: bool = True) -> Acting:
    """For whom a request acts, from its X-End-User-Id and X-Connection-Id headers."""
    connection_id = headers.get(CONNECTION_HEADER)
    if connection_id is not None and not CONNECTION_ID.match(connection_id):
        raise BadRequest("'X-Connection-Id' must be a connection id, 'conn_' and 32 hex digits.")
    found = await end_user(services, key, headers.get(END_USER_HEADER), create=create)
    return Acting(end_user=found, connection_id=connection_id)
