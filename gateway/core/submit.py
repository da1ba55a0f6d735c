"""The one way in: every new call, whether it came to /v1 or as an MCP tool call, is submitted here.

`Submission` is what a caller may ask of a call: its params, whether to queue it (with how long its
record is kept and where its result is posted), and an idempotency key. A /v1 body is read into it,
and so are an MCP tool call's arguments and `_meta`; the OpenAPI document describes the body with the
model's own JSON Schema (`Submission.body_schema`), so what the gateway takes and what it documents
cannot drift apart.

`submit` then applies the same rules to every call: the key may use the endpoint, a repeated
idempotency key answers the first answer (409 while the first still runs), a queued call is stored
for a worker, the day's limit counts the call, a key that needs approval holds it, and a direct call
runs through `execute`, which records it. A worker runs a claimed call through `execute` too.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from gateway.core import approvals, callbacks, limits
from gateway.core.callers import OWNER, Acting
from gateway.core.execute import CallResult, admit, answer_status, execute
from gateway.core.runtime import Services
from gateway.core.tools import resolve
from gateway.errors import BadRequest, IdempotencyInProgress, IdempotencyMismatch
from gateway.settings import Settings
from gateway.specs.params import validate as validate_params
from gateway.storage import runs
from gateway.storage.models import ApiKey, Run, utcnow
from gateway.storage.runs import RunRecord


def _whole_number(value: Any) -> Any:
    # JSON has one kind of number: 60.0 is the whole number 60, as JSON Schema's "integer" reads it.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _document(schema: dict[str, Any]) -> None:
    schema["description"] = (
        "`params` alone calls at once; with `queue` (a name) or `async: true` the call is queued, "
        "and `expires` (seconds the record is kept) and `callback_url` apply."
    )
    # The one rule across fields (the model validator's), as JSON Schema says it.
    schema["anyOf"] = [
        {
            "properties": {
                "queue": {"type": "null"},
                "async": {"const": False},
                "expires": {"type": "null"},
                "callback_url": {"type": "null"},
            }
        },
        {"required": ["queue"], "properties": {"queue": {"type": "string"}}},
        {"required": ["async"], "properties": {"async": {"const": True}}},
    ]


# What each option must be, said for a person; the constraints themselves are the fields'.
PROBLEMS = {
    "queue": "must be 1-200 characters of letters, digits and . _ : -",
    "async": "must be true or false",
    "expires": f"must be a whole number of seconds from 1 to {runs.MAX_EXPIRES}",
    "callback_url": "must be a URL string",
}
QUEUED_ONLY = "'expires' and 'callback_url' apply to queued calls: add 'queue' or 'async': true."


class Submission(BaseModel):
    """A call as its caller submits it: the /v1 body's fields, and the idempotency key beside them."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, json_schema_extra=_document)

    params: Any = Field(default_factory=dict, description="The endpoint's params.")
    queue: Annotated[str, Field(pattern=runs.QUEUE_NAME.pattern)] | None = Field(
        None, description="Queues the call: calls of one queue run one at a time, in order."
    )
    run_async: bool = Field(False, alias="async", description="Queues the call in a queue of its own.")
    expires: Annotated[int, Field(ge=1, le=runs.MAX_EXPIRES), BeforeValidator(_whole_number)] | None = Field(
        None, description="Seconds the queued call's record is kept."
    )
    callback_url: Annotated[str, Field(max_length=callbacks.MAX_URL_LENGTH)] | None = Field(
        None,
        description="Receives a signed POST of the finished run. A host name (an address literal only when "
        "GATEWAY_EGRESS_ALLOW lists it), no credentials or fragment; the name is resolved and screened when the "
        "callback is sent.",
    )

    # Not fields: neither is part of the body's schema. The body as sent is what a repeat must match.
    _idempotency_key: str | None = PrivateAttr(None)
    _body: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _options_need_a_queue(self) -> Submission:
        if not self.queued and (self.expires is not None or self.callback_url is not None):
            raise ValueError(QUEUED_ONLY)
        return self

    @property
    def queued(self) -> bool:
        return self.queue is not None or self.run_async

    @property
    def idempotency_key(self) -> str | None:
        return self._idempotency_key

    @classmethod
    def of(
        cls,
        body: dict[str, Any],
        settings: Settings,
        idempotency_key: Any = None,
        *,
        key_name: str = "Idempotency-Key",
    ) -> Submission:
        """The submission a body asks for, or a 400 saying what is wrong with it."""
        try:
            submission = cls.model_validate(body)
        except ValidationError as exc:
            raise _bad_request(exc) from None
        if submission.callback_url is not None:
            callbacks.check_url(settings, submission.callback_url)
        if idempotency_key is not None and not (
            isinstance(idempotency_key, str) and runs.IDEMPOTENCY_KEY.fullmatch(idempotency_key)
        ):
            raise BadRequest(f"'{key_name}' must be 1-255 visible ASCII characters.")
        submission._idempotency_key = idempotency_key
        submission._body = body
        return submission

    def fingerprint(
        self, integration: str, endpoint: str, end_user_id: str | None = None, connection_id: str | None = None
    ) -> str:
        """What a repeat with the same idempotency key must match: the call, for whom, and its body as sent."""
        canonical = json.dumps(self._body, sort_keys=True, separators=(",", ":"))
        whom = "" if end_user_id is None and connection_id is None else f"\n{end_user_id}\n{connection_id}"
        return hashlib.sha256(f"{integration}/{endpoint}{whom}\n{canonical}".encode()).hexdigest()

    @classmethod
    def body_schema(cls, params: dict[str, Any], *, params_required: bool, callback_url_pattern: str) -> dict[str, Any]:
        """The body's JSON Schema for one endpoint: the model's, with that endpoint's params schema and the
        pattern of the callback URLs this gateway takes (settings decide the scheme)."""
        schema = copy.deepcopy(_SCHEMA)
        schema["properties"]["params"] = params
        if params_required:
            schema["required"] = ["params"]
        [url, _] = schema["properties"]["callback_url"]["anyOf"]
        url["pattern"] = callback_url_pattern
        return schema


def _untitled(schema: dict[str, Any]) -> dict[str, Any]:
    # Pydantic titles every field after its Python name; documents and generated clients need none.
    schema.pop("title", None)
    for field in schema["properties"].values():
        field.pop("title", None)
    return schema


_SCHEMA = _untitled(Submission.model_json_schema())


def _bad_request(error: ValidationError) -> BadRequest:
    problems = error.errors()
    unknown = [str(p["loc"][0]) for p in problems if p["type"] == "extra_forbidden"]
    if unknown:
        return BadRequest(
            "The body has fields this call does not take.",
            details=[{"field": name, "message": "is not a known field"} for name in sorted(unknown)],
        )
    fields = list(dict.fromkeys(str(p["loc"][0]) for p in problems if p["loc"]))
    if not fields:
        return BadRequest(QUEUED_ONLY)
    details = [{"field": name, "message": PROBLEMS[name]} for name in fields]
    return BadRequest(f"'{fields[0]}' {PROBLEMS[fields[0]]}.", details=details)


@dataclasses.dataclass(frozen=True)
class Idempotency:
    key: str
    fingerprint: str


async def submit(
    services: Services,
    key: ApiKey,
    integration: str,
    endpoint: str,
    submission: Submission,
    acting: Acting = OWNER,
) -> CallResult:
    """Runs, queues or holds a new call, or answers a repeat with its first answer. `acting` names
    the end user the call is for (their connections, their runs) and the connection it uses."""
    idempotency: Idempotency | None = None
    if submission.idempotency_key is not None:
        fingerprint = submission.fingerprint(integration, endpoint, acting.end_user_id, acting.connection_id)
        idempotency = Idempotency(submission.idempotency_key, fingerprint)
        # A key narrowed since its first call must not get that call's answer back.
        resolve(services, key, integration, endpoint)
        existing = await services.db.run(runs.by_idempotency_key, key.id or 0, idempotency.key)
        if existing is not None:
            return await _replay(services, key, existing, idempotency.fingerprint)

    record = RunRecord.for_call(key, integration, endpoint, acting.end_user_id, acting.connection_id)
    record.end_user_key = acting.end_user.id if acting.end_user is not None else None
    try:
        if submission.queued:
            return await _enqueue(services, key, record, submission, idempotency)
        if idempotency is not None:
            # The row exists from the start, so a repeat during the call sees it (409); its lease,
            # extended while this process runs the call, lets a repeat recover the key if it dies.
            record.worker_id = services.leases.owner
            await services.db.run_unsettled(
                runs.create_started,
                record,
                idempotency_key=idempotency.key,
                request_hash=idempotency.fingerprint,
                lease=services.leases.lease,
            )
            record.stored = record.keep_result = True
    except IntegrityError:
        # Another call with the same key got there first.
        if idempotency is None:
            raise
        existing = await services.db.run(runs.by_idempotency_key, key.id or 0, idempotency.key)
        if existing is None:
            raise
        return await _replay(services, key, existing, idempotency.fingerprint)
    if not record.stored:
        return await execute(services, key, record, submission.params)
    services.leases.hold(record.id, services.leases.owner)
    try:
        return await execute(services, key, record, submission.params)
    finally:
        services.leases.release(record.id)


async def _enqueue(
    services: Services, key: ApiKey, record: RunRecord, submission: Submission, idempotency: Idempotency | None
) -> CallResult:
    """Stores a queued call for a worker (or holds it for approval) and answers where it stands."""
    endpoint = resolve(services, key, record.integration, record.endpoint)
    params = validate_params(endpoint, submission.params)
    record.queue_name = submission.queue or record.id
    queued = dict(
        expires_at=utcnow() + timedelta(seconds=submission.expires) if submission.expires else None,
        callback_url=submission.callback_url,
        idempotency_key=idempotency.key if idempotency else None,
        request_hash=idempotency.fingerprint if idempotency else None,
    )
    if approvals.needed(key, endpoint):
        usage, held = await admit(services, key, endpoint, params, record, **queued)
        return CallResult(http_status=202, body=held or {}, headers={"X-Run-Id": record.id, **usage.headers()})
    plan = await services.plans.of(services.db, key.user_id)
    row = runs.queued(services.batcher, services.box, key, record=record, params=params, **queued)
    # The count and the row are one write: a call over its limit stores nothing, and no refund is owed.
    usage = await limits.reserve(
        services.batcher, services.settings, key, plan, queued=row, end_user_id=record.end_user_key
    )
    services.notify_queue()
    return _queued(record.id, "pending", record.queue_name, usage.in_queue or 0, usage.headers())


def _in_queue(engine: Engine, key: ApiKey, run: Run) -> int:
    return runs.in_queue(engine, key, run.queue_name or run.id, up_to=run.id, end_user_id=run.end_user_id)


def _queued(
    run_id: str, status: str, queue_name: str | None, in_queue: int, headers: dict[str, str] | None = None
) -> CallResult:
    body = {"id": run_id, "status": status, "queue_name": queue_name or run_id, "in_queue": in_queue}
    return CallResult(http_status=202, body=body, headers={"X-Run-Id": run_id, **(headers or {})})


async def _replay(services: Services, key: ApiKey, run: Run, fingerprint: str) -> CallResult:
    if run.request_hash != fingerprint:
        raise IdempotencyMismatch("This Idempotency-Key was already used with a different request.")
    if run.request is not None:  # a queued submission: its first answer was the 202
        in_queue = await services.db.run(_in_queue, key, run)
        result = _queued(run.id, run.status, run.queue_name, in_queue)
    elif run.status not in runs.TERMINAL:
        raise IdempotencyInProgress(
            "A call with this Idempotency-Key is still running.", headers={"Retry-After": "1", "X-Run-Id": run.id}
        )
    else:
        body = runs.result_of(services.box, run) or {}
        result = CallResult(answer_status(run.http_status or 200), body, {"X-Run-Id": run.id})
    result.headers["Idempotent-Replayed"] = "true"
    return result
