"""spotguard.step imports only the standard library at import time (fsspec and the Azure SDK only
inside the backends that need them) and nothing of the agent."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

STEP = Path(__file__).resolve().parents[2] / "daemon" / "spotguard" / "step"
LAZY = {"fsspec", "azure"}  # allowed inside functions only


def test_import_loads_no_agent_module_and_no_third_party_package() -> None:
    probe = "import sys, spotguard.step\nprint('\\n'.join(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    ours = {m for m in loaded if m.startswith("spotguard")}
    assert ours == {"spotguard"} | {m for m in ours if m.startswith("spotguard.step")}
    third_party = {
        m.split(".")[0]
        for m in loaded
        if m.split(".")[0] not in sys.stdlib_module_names
        and m.split(".")[0]
        not in ("__main__", "spotguard", "tests_netguard", "sitecustomize", "_distutils_hack")
    }
    assert third_party == set()


def test_every_module_level_import_is_stdlib_or_the_step_package() -> None:
    for path in sorted(STEP.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                allowed = (
                    top in sys.stdlib_module_names
                    or top == "__future__"
                    or name.startswith("spotguard.step")
                )
                assert allowed, f"{path.name}: module-level import of {name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                anywhere = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                anywhere = [node.module]
            else:
                continue
            for name in anywhere:
                top = name.split(".")[0]
                assert (
                    top in sys.stdlib_module_names
                    or top in LAZY
                    or top == "__future__"
                    or name.startswith("spotguard.step")
                ), f"{path.name}: imports {name}"


def test_the_package_init_defines_only_the_version() -> None:
    init = STEP.parent / "__init__.py"
    tree = ast.parse(init.read_text())
    assert not [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
