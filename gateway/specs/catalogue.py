"""The integration catalogue as Markdown, generated from the specs.

`python -m gateway.specs.catalogue` rewrites the README's integration table and the
endpoint list at the end of docs/integrations.md, each between its two marker
comments; `--check` only reports whether they are up to date. The tests compare
both sections with what this module generates.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.settings import BUILTIN_INTEGRATIONS
from gateway.specs.registry import Registry, load_registry
from gateway.specs.spec import CompiledEndpoint

# A development tool: it rewrites the checkout's README and guide.
REPOSITORY = Path(__file__).resolve().parents[2]
README = REPOSITORY / "README.md"
GUIDE = REPOSITORY / "docs" / "integrations.md"
TABLE_MARKERS = ("<!-- integrations:start -->", "<!-- integrations:end -->")
ENDPOINT_MARKERS = ("<!-- endpoints:start -->", "<!-- endpoints:end -->")
COMMAND = "python -m gateway.specs.catalogue"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def markdown_table(registry: Registry) -> str:
    """One row per integration: name, display name, auth, endpoint count, reference."""
    rows = [
        "| Integration | Name | Auth | Endpoints | Follows |",
        "| --- | --- | --- | ---: | --- |",
    ]
    for integration in registry:
        spec = integration.spec
        rows.append(
            f"| [{_cell(spec.display_name)}]({spec.docs_url}) | `{integration.name}` | {integration.auth_type} "
            f"| {len(integration.endpoints)} | {_cell(spec.reference)} |"
        )
    total = sum(len(i.endpoints) for i in registry)
    rows.append("")
    rows.append(f"{len(registry)} integrations, {total} endpoints.")
    return "\n".join(rows)


def _request(endpoint: CompiledEndpoint) -> str:
    request = f"`{endpoint.method} {endpoint.spec.path}`"
    return request + " (GraphQL)" if endpoint.spec.graphql else request


def endpoint_list(registry: Registry) -> str:
    """Every endpoint of every integration, grouped by integration."""
    parts: list[str] = []
    for integration in registry:
        parts.append(f"### {_cell(integration.display_name)} (`{integration.name}`)")
        parts.append("")
        parts.append("| Endpoint | Request | Scopes | What it does |")
        parts.append("| --- | --- | --- | --- |")
        for name, endpoint in integration.endpoints.items():
            scopes = ", ".join(f"`{s}`" for s in endpoint.spec.scopes) or "–"
            parts.append(f"| `{name}` | {_request(endpoint)} | {scopes} | {_cell(endpoint.spec.description)} |")
        parts.append("")
    return "\n".join(parts).rstrip("\n")


def section(text: str, markers: tuple[str, str]) -> str:
    """The text between two markers, without the blank lines around it."""
    start, end = markers
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"expected one {start} before one {end}")
    return text[text.index(start) + len(start) : text.index(end)].strip("\n")


def replace_section(text: str, markers: tuple[str, str], content: str) -> str:
    section(text, markers)  # checks the markers
    start, end = markers
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{content}\n{end}{tail}"


def builtin_registry() -> Registry:
    return load_registry([BUILTIN_INTEGRATIONS])


def generated(registry: Registry) -> dict[Path, tuple[tuple[str, str], str]]:
    return {README: (TABLE_MARKERS, markdown_table(registry)), GUIDE: (ENDPOINT_MARKERS, endpoint_list(registry))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale sections; exit 1 if any")
    args = parser.parse_args(argv)
    stale = []
    for path, (markers, content) in generated(builtin_registry()).items():
        text = path.read_text(encoding="utf-8")
        if section(text, markers) == content:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(replace_section(text, markers, content), encoding="utf-8")
    for path in stale:
        print(f"{'stale' if args.check else 'rewrote'} {path.relative_to(REPOSITORY)}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
