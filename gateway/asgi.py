"""The ASGI app built from the environment, for `gateway serve --workers N` and any ASGI server."""

from __future__ import annotations

from gateway import logs
from gateway.app import create_app
from gateway.settings import from_env

_settings = from_env()
# Under `gateway serve --workers N` uvicorn has already applied our logging configuration (with --json).
if not logs.configured():
    logs.configure(_settings.log_level, _settings.log_json)
app = create_app(_settings)
