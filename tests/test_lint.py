"""The code keeps one style: ruff's lint rules and its formatter (pyproject.toml), checked with the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUFF = str(Path(sys.executable).with_name("ruff"))


def test_ruff_finds_nothing() -> None:
    checked = subprocess.run([RUFF, "check", "gateway", "tests", "bench"], cwd=ROOT, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_code_is_formatted() -> None:
    checked = subprocess.run(
        [RUFF, "format", "--check", "gateway", "tests", "bench"], cwd=ROOT, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
