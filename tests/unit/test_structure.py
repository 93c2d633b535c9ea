"""STRUCTURE.md matches the tree: each folder imports only what its row allows, and every package folder
has a row."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPINE = "bmp_core"  # the modules at bmp_core's root: records, ports, loop, config, coco_meta, errors

# STRUCTURE.md's "may import" column (first-party folders only).
ALLOWED = {
    "jobs": {"bmp_core", "bmp_core.analysis", "bmp_core.output", "bmp_core.models", "bmp_core.testing",
             "bmp_core.io", "bmp_core.ops"},
    "bmp_core.analysis": {"bmp_core.output", "bmp_core.io", "bmp_core.ops", SPINE},
    "bmp_core.output": {"bmp_core.io", "bmp_core.ops", SPINE},
    "bmp_core.models": {"bmp_core.testing", SPINE},
    "bmp_core.testing": {"bmp_core.ops", SPINE},
    "bmp_core.io": {SPINE},
    "bmp_core.ops": {SPINE},
    SPINE: {"bmp_core.ops"},  # the loop runs the ops
}


def _folder(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "bmp_core":
        return parts[0]
    return f"bmp_core.{parts[1]}" if len(parts) > 1 and (ROOT / "bmp_core" / parts[1]).is_dir() else SPINE


def _first_party_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return {m for m in out if m.split(".")[0] in ("bmp_core", "jobs")}


def test_each_folder_imports_only_what_structure_md_allows() -> None:
    wrong = []
    for path in sorted([*ROOT.glob("bmp_core/**/*.py"), *ROOT.glob("jobs/**/*.py")]):
        here = _folder(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for module in _first_party_imports(path):
            there = _folder(module)
            if there != here and there not in ALLOWED[here]:
                wrong.append(f"{path.relative_to(ROOT)} imports {module} ({here} may not import {there})")
    assert wrong == [], "\n".join(wrong)


def test_structure_md_names_every_package_folder() -> None:
    text = (ROOT / "STRUCTURE.md").read_text()
    folders = sorted({p.parent.relative_to(ROOT).as_posix() for d in ("bmp_core", "jobs")
                      for p in (ROOT / d).rglob("__init__.py")})
    assert len(folders) > 8
    top = {f.split("/")[0] + ("/" + f.split("/")[1] if f.startswith("bmp_core/") and "/" in f else "") for f in folders}
    missing = [f for f in sorted(top) if f"`{f}/`" not in text]
    assert missing == [], f"STRUCTURE.md has no row for {missing}"
