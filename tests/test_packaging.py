"""The wheel holds only the `idm` namespace, and pyproject lists every sub-package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"identity": "idm.identity", "validator": "idm.validator", "cli": "idm.cli"}


def test_every_package_folder_is_listed() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set()
    for folder, name in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found == listed


def test_wheel_contains_only_idm(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("x509_idm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"idm"}
    assert "idm/identity/inventory/migrations/versions/0001_initial_schema.py" in names
    assert "idm/cli/entry.py" in names
    assert not any(n.startswith(("idm/__init__", "tests/", "identity/")) for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "idm = idm.cli.entry:main" in zipfile.ZipFile(wheel).read(entry).decode()
