"""An adapter imported without its framework says which extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Run in a fresh interpreter where the framework cannot be imported (None in
# sys.modules makes "import flask" fail as if it were not installed).
CODE = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None
try:
    import pollsession.adapters.{adapter}
except ImportError as error:
    print(type(error).__name__, isinstance(error, ModuleNotFoundError), error.name)
    print(error)
else:
    print("imported")
"""


@pytest.mark.parametrize("adapter, blocked", [
    ("flask", ["flask"]),
    ("flask", ["werkzeug", "werkzeug.exceptions", "werkzeug.routing"]),
    ("tornado", ["tornado"]),
    ("tornado", ["tornado.web"]),
])
def test_a_missing_framework_names_the_extra_to_install(adapter: str, blocked: list[str]) -> None:
    result = subprocess.run([sys.executable, "-c", CODE.format(adapter=adapter, blocked=blocked)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    kind, message = result.stdout.strip().split("\n", 1)
    assert kind.split()[:2] == ["ModuleNotFoundError", "True"], result.stdout
    assert f"pip install 'pollsession[{adapter}]'" in message, message
    assert f"pollsession.adapters.{adapter}" in message, message


def test_the_core_imports_without_any_framework() -> None:
    code = ("import sys\nfor name in ('flask', 'werkzeug', 'tornado'): sys.modules[name] = None\n"
            "import pollsession, pollsession.client\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr
