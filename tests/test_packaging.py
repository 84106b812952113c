"""The wheel: built without warnings, with the license, py.typed and the metadata users read.

Builds from a copy of the sources (a build writes build/ and *.egg-info next to them) with
the project's own build requirements, as ``pip install .`` does.
"""

from __future__ import annotations

import email.parser
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the wheel, the build's whole output)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "fastobs", src / "fastobs", ignore=shutil.ignore_patterns("__pycache__"))
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp / "dist"), str(src)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-5000:]
    [wheel] = (tmp / "dist").glob("fastobs-*.whl")
    return wheel, log


def test_the_build_prints_no_warning(built: tuple[Path, str]) -> None:
    """No Python warning (SetuptoolsDeprecationWarning, BuildBackendWarning...) and nothing
    deprecated; distutils' "warning: byte-compiling is disabled" notes are pip's choice."""
    _, log = built
    warnings = [line.strip() for line in log.splitlines()
                if re.search(r"[A-Z]\w*Warning\b", line) or re.search(r"deprecat", line, re.I)]
    print(f"{len(log.splitlines())} lines of build output; warnings: {warnings}")
    assert warnings == []


def _metadata(wheel: Path) -> tuple[email.message.Message, list[str], zipfile.ZipFile]:
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    [path] = [n for n in names if n.endswith(".dist-info/METADATA")]
    return email.parser.Parser().parsestr(archive.read(path).decode()), names, archive


def test_the_wheel_ships_the_license_and_py_typed(built: tuple[Path, str]) -> None:
    meta, names, archive = _metadata(built[0])
    print(f"{len(names)} files in {built[0].name}")
    assert "fastobs/py.typed" in names
    [license_path] = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert archive.read(license_path) == (ROOT / "LICENSE").read_bytes()
    assert (ROOT / "LICENSE").read_text().split()[:5] == ["Apache", "License", "Version", "2.0,", "January"]
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]


def test_the_metadata_says_what_fastobs_needs(built: tuple[Path, str]) -> None:
    meta, _, _ = _metadata(built[0])
    classifiers = meta.get_all("Classifier") or []
    print("\n".join(classifiers))
    assert meta["Requires-Python"] == ">=3.11"
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert "Typing :: Typed" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")], "the SPDX expression replaces these"
    assert not [c for c in classifiers if c.startswith("Operating System ::") and "Linux" not in c]
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    # The description shown on the package index says what the kernel must offer.
    body = meta.get_payload()
    assert isinstance(body, str) and "Linux only" in body and "pidfd" in body and "memfd" in body
