"""The architecture is a contract (docs/architecture.md): the layers depend inward, the domain
imports only the standard library, and nothing in the product imports the developer tooling.

The layer contracts are import-linter's (`[tool.importlinter]` in pyproject.toml); the domain's
"standard library only" rule is checked here, where the list of allowed modules is Python's own.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = ROOT / "carebus" / "domain"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

# orjson is a pure function library (bytes in, bytes out, no I/O): the domain makes its ids,
# fingerprints and delivery payloads with it at 5-10x the standard library's speed.
ALLOWED_THIRD_PARTY = frozenset({"orjson"})


def outside_imports(source: str, package: str = "carebus.domain") -> Iterator[tuple[int, str]]:
    """(line, module) of every import in `source` that is neither the standard library, an
    allowed third-party module, nor `package` itself."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # a relative import stays inside the package
                continue
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.partition(".")[0]
            inside = name == package or name.startswith(package + ".")
            if not (inside or top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY):
                yield node.lineno, name


def test_the_domain_imports_only_the_standard_library() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted(DOMAIN.glob("*.py"))
        for line, module in outside_imports(path.read_text())
    ]
    assert found == []


@pytest.mark.parametrize(
    ("source", "wrong"),
    [
        ("import yaml\n", ["yaml"]),
        ("from carebus.adapters.db import connect\n", ["carebus.adapters.db"]),
        ("from carebus.wire import codec\n", ["carebus.wire"]),
        ("def f():\n    import asyncpg\n", ["asyncpg"]),
        ("from __future__ import annotations\nimport hashlib\nimport orjson\n", []),
        ("from carebus.domain.events import Problem\nfrom . import sla\n", []),
    ],
)
def test_the_domain_check_finds_a_wrong_way_import(source: str, wrong: list[str]) -> None:
    assert [module for _, module in outside_imports(source)] == wrong


def test_the_import_contracts_hold() -> None:
    """`lint-imports` over the real tree: every contract of pyproject.toml is kept."""
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout  # the summary line ("N kept, 0 broken") was printed
    assert " 0 broken" in result.stdout


def test_the_layer_contract_refuses_a_wrong_way_import(tmp_path: Path) -> None:
    """The same layers contract, over a copy of the layout where the domain imports an adapter."""
    for layer in ("domain", "wire", "runtime", "adapters", "ops"):
        package = tmp_path / "carebus" / layer
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
    (tmp_path / "carebus" / "__init__.py").write_text("")
    (tmp_path / "carebus" / "adapters" / "db.py").write_text("")
    (tmp_path / "carebus" / "domain" / "routing.py").write_text("from carebus.adapters import db\n")
    config = tmp_path / "contracts.toml"
    layers = ROOT.joinpath("pyproject.toml").read_text().split('id = "layers"')[1]
    config.write_text(
        '[tool.importlinter]\nroot_packages = ["carebus"]\n\n'
        '[[tool.importlinter.contracts]]\nid = "layers"' + layers.split("[[")[0]
    )
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(config)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "carebus.domain.routing -> carebus.adapters.db" in result.stdout


def test_the_operator_command_works_without_the_developer_tooling() -> None:
    """A production image does not carry carebus_dev: `carebus` keeps the operator's commands
    and leaves out the local stack's, instead of failing."""
    without_dev = (
        "import sys; sys.modules['carebus_dev'] = None\n"
        "from carebus.ops.cli import main\n"
        "main(['--help'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", without_dev], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    commands = {
        line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line
    }
    assert {"token", "org", "webhook", "topics", "trace"} <= commands
    assert not commands & {"up", "down", "status", "logs"}
