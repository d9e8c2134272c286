"""The public surface: every module declares __all__, the package re-exports it."""

from __future__ import annotations

import importlib
import pkgutil

import pollsession


def test_every_public_name_is_exported_and_exists() -> None:
    assert sorted(pollsession.__all__) == sorted(set(pollsession.__all__))
    for name in pollsession.__all__:
        assert hasattr(pollsession, name), name


def test_every_module_declares_all() -> None:
    for info in pkgutil.walk_packages(pollsession.__path__, "pollsession."):
        module = importlib.import_module(info.name)
        assert hasattr(module, "__all__"), info.name


def test_private_exceptions_and_core_classes_are_reexported() -> None:
    from pollsession.protocol.errors import __all__ as errors
    from pollsession.server.handler import HttpHandler

    assert set(errors) <= set(pollsession.__all__)
    assert pollsession.HttpHandler is HttpHandler


def test_the_core_imports_no_web_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pollsession, pollsession.server.handler, pollsession.server.registry;"
        "print(sorted(m for m in ('flask', 'tornado', 'werkzeug') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_type_information_ships() -> None:
    assert pollsession.client_script_path().name == "pollsession.js"
    assert (pollsession.client_script_path().parent.parent / "py.typed").exists()
