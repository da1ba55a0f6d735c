"""An install from a wheel has everything the gateway reads at run time: migrations, the built-in
integration specs, and the dashboard's templates and static files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_the_package_data(tmp_path: Path) -> None:
    # Built from a copy, so that setuptools' build/ folder never lands in the checkout.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "gateway", source / "gateway", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("integration_gateway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        "specs": {p.name for p in (ROOT / "gateway" / "integrations").glob("*.yaml")},
        "templates": {p.name for p in (ROOT / "gateway" / "dashboard" / "templates").glob("*.html")},
        "static": {p.name for p in (ROOT / "gateway" / "dashboard" / "templates" / "static").iterdir()},
        "migrations": {p.name for p in (ROOT / "gateway" / "storage" / "migrations" / "versions").glob("*.py")},
    }
    assert all(shipped.values())
    assert {f"gateway/integrations/{n}" for n in shipped["specs"]} <= names
    assert {f"gateway/dashboard/templates/{n}" for n in shipped["templates"]} <= names
    assert {f"gateway/dashboard/templates/static/{n}" for n in shipped["static"]} <= names
    assert {f"gateway/storage/migrations/versions/{n}" for n in shipped["migrations"]} <= names
