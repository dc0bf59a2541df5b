"""Every import points down: the rooms of DESIGN.md, read from the source with ``ast``."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cryotune"
# room -> rooms it must never import (at any level, deferred imports included)
NEVER = {
    "data": {"nn", "baselines", "validate", "study", "sweep", "runs", "report", "commands", "cli"},
    "nn": {"data", "baselines", "validate", "study", "sweep", "runs", "report", "commands", "cli"},
    "baselines": {"validate", "study", "sweep", "runs", "report", "commands", "cli"},
    "validate": {"nn", "study", "sweep", "runs", "report", "commands", "cli"},
    "study": {"data", "nn", "baselines", "validate", "sweep", "runs", "report", "commands", "cli"},
    "sweep": {"runs", "report", "commands", "cli"},
    "report": {"data", "nn", "baselines", "validate", "sweep", "runs", "commands", "cli"},
    "runs": {"commands", "cli"},
    "vocab": {"*"},
    "errors": {"*"},
    "_version": {"*"},
}
LEAVES = {"vocab", "errors", "_version"}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cryotune"):
            parts = node.module.split(".")
            out |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names
                    if a.name.startswith("cryotune.")}
            if any(a.name == "cryotune" for a in node.names):
                out.add("__init__")
    return out


def _room(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_no_back_arrows():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        room = _room(path)
        never = NEVER.get(room, set())
        for target in _imports(path) - {room}:
            if "*" in never and target not in ("__init__",) or target in never:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {target}")
    assert not wrong, wrong


def test_leaf_modules_do_not_import_the_package_root():
    roots = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if _room(p) not in ("__init__", "__main__", "cli", "commands")
             and "__init__" in _imports(p)]
    assert not roots, roots
