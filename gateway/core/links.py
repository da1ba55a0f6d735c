"""Absolute dashboard links: where a person fixes each problem (the `action_url`s)."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from gateway.settings import Settings


def integration(settings: Settings, name: str, *, reconnect: bool = False) -> str:
    query = "?" + urlencode({"reconnect": "1"}) if reconnect else ""
    return settings.action_url(f"/dashboard/integrations/{quote(name, safe='')}{query}")


def setup(settings: Settings, name: str) -> str:
    """The page that explains what the operator must do before anyone can connect an integration."""
    return settings.action_url(f"/dashboard/integrations/{quote(name, safe='')}/setup")


def api_key(settings: Settings, key_id: int) -> str:
    return settings.action_url(f"/dashboard/keys/{key_id}")


def usage(settings: Settings) -> str:
    return settings.action_url("/dashboard/usage")


def run(settings: Settings, run_id: str) -> str:
    return settings.action_url(f"/dashboard/calls/{quote(run_id, safe='')}")


def approval(settings: Settings, run_id: str) -> str:
    return settings.action_url(f"/dashboard/approvals/{quote(run_id, safe='')}")
