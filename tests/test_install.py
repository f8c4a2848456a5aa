"""The install contract: CI runs the README's test command, from a lock of exact versions."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    lines = [line for line in readme.splitlines() if "pytest" in line and "pip install" in line]
    assert len(lines) == 1, lines
    return lines[0].strip()


def test_ci_runs_the_readme_test_command_from_the_lock():
    command = _readme_test_command()
    assert "-c requirements/lock.txt" in command
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in [line.strip() for line in ci], "README's test command is not .ci/run's"


def test_lock_pins_every_requirement_exactly():
    pins = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"lock.txt: {line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    tree = ast.parse((ROOT / "setup.py").read_text())
    lists = {
        node.targets[0].id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    required = [*lists["INSTALL_REQUIRES"].elts]
    extras = lists["EXTRAS"]
    test_extra = dict(zip([k.value for k in extras.keys], extras.values, strict=True))["test"]
    required += test_extra.elts
    names = [re.split(r"[=<>!~\[]", e.value)[0] for e in required if isinstance(e, ast.Constant)]
    assert len(names) > 15, names
    for name in names:
        assert re.sub(r"[-_.]+", "-", name).lower() in pins, f"{name} is not in lock.txt"
    assert "kernels" in pins, "transformers' `kernels` dependency is part of the lock"
