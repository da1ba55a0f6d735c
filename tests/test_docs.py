"""The docs name every setting, error code and command; a test fails when one is missing."""

from __future__ import annotations

import re
from pathlib import Path

from gateway import cli, settings
from gateway.errors import all_error_classes

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = README + "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))


def test_every_setting_is_documented() -> None:
    source = Path(settings.__file__).read_text()
    names = set(re.findall(r'"(GATEWAY_[A-Z_]+)"', source))
    names |= {f"GATEWAY_<NAME>_{field}" for field in settings.INTEGRATION_FIELDS}
    assert names, "found no settings: the pattern is stale"
    missing = sorted(name for name in names if f"`{name}`" not in README)
    assert not missing, f"settings missing from the README's table: {missing}"


def test_every_error_code_is_documented() -> None:
    missing = [c.code for c in all_error_classes() if f"`{c.code}`" not in README]
    assert not missing, f"error codes missing from the README's table: {missing}"
    for cls in all_error_classes():
        row = next(line for line in README.splitlines() if f"`{cls.code}`" in line and line.startswith("|"))
        assert row.startswith(f"| {cls.status} |"), f"{cls.code} is documented with the wrong status"


def test_every_command_is_documented() -> None:
    parser = cli.parser()
    commands = []
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for name, sub in action.choices.items():
            nested = [a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction"]
            if nested:
                commands += [f"gateway {name} {child}" for child in nested[0].choices]
            else:
                commands.append(f"gateway {name}")
    missing = [c for c in commands if c not in README]
    assert not missing, f"commands missing from the README: {missing}"


def test_readme_starts_with_the_two_commands() -> None:
    blocks = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    assert blocks[0].endswith("gateway serve")
    assert blocks[1] == "scripts/test.sh"
    ci = (ROOT / ".ci" / "run").read_text()
    install = blocks[0].split("&&")[1].strip()
    assert install in ci and "scripts/test.sh" in ci


def test_the_quick_start_says_what_to_do_next() -> None:
    start = README[README.index("## Quick start") : README.index("## Calling an integration")]
    assert "http://127.0.0.1:8000/dashboard/signup" in start
    # Every command runs from the virtual environment the first command made.
    for block in re.findall(r"```sh\n(.*?)\n```", README, re.S):
        for line in block.splitlines():
            assert not re.match(r"^(GATEWAY_\S+ )*gateway ", line), line
    link = re.search(r"\(docs/integrations\.md#([a-z0-9-]+)\)", start)
    assert link, "the quick start links to how to register an OAuth app"
    integrations = (ROOT / "docs" / "integrations.md").read_text()
    heading = next(h for h in re.findall(r"^#+ (.+)$", integrations, re.M) if _anchor(h) == link.group(1))
    section = re.split(rf"^#+ {re.escape(heading)}$", integrations, flags=re.M)[1].split("\n## ", 1)[0]
    for needed in (
        "<GATEWAY_PUBLIC_URL>/oauth/<name>/callback",
        "GATEWAY_<NAME>_CLIENT_ID",
        "GATEWAY_<NAME>_CLIENT_SECRET",
    ):
        assert needed in section, needed


def _anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
