"""A built wheel installs the adapters as pollsession.adapters, with its data files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        cwd=out,
    )
    (built,) = out.glob("pollsession-*.whl")
    return built


def test_wheel_holds_the_package_adapters_and_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("pollsession/__init__.py", "pollsession/py.typed", "pollsession/static/pollsession.js",
                 "pollsession/static/pollsession.mjs", "pollsession/demo/__init__.py", "pollsession/demo/chat.html",
                 "pollsession/adapters/__init__.py", "pollsession/adapters/flask.py",
                 "pollsession/adapters/tornado.py"):
        assert name in names, name
    assert not any(name.startswith(("adapters/", "tests/")) for name in names)


def test_adapters_import_from_a_non_editable_install(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        check=True,
    )
    code = (
        "import pollsession, pollsession.adapters.flask as f, pollsession.adapters.tornado as t;"
        "print(pollsession.__file__); print(f.__file__); print(t.__file__);"
        "print(pollsession.client_script_path().is_file())"
    )
    # -I would also drop the test venv's flask and tornado; put the install first instead.
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert all(line.startswith(str(target)) for line in lines[:3]), lines
    assert lines[3] == "True"
