"""STRUCTURE.md matches the tree: each folder imports only what its row allows (read from STRUCTURE.md's
table itself), every package folder has a row, and no module of ``bmp_core/`` or ``jobs/`` takes part in
an import cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPINE = "bmp_core"  # the modules at bmp_core's root: records, ports, loop, config, coco_meta, errors, ...
SUBFOLDERS = sorted(p.parent.name for p in (ROOT / "bmp_core").glob("*/__init__.py"))
SPINE_MODULES = sorted(p.stem for p in (ROOT / "bmp_core").glob("*.py") if p.stem != "__init__")


def _folder(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "bmp_core":
        return parts[0]
    return f"bmp_core.{parts[1]}" if len(parts) > 1 and (ROOT / "bmp_core" / parts[1]).is_dir() else SPINE


def _allowed_by_structure_md() -> dict[str, set[str]]:
    """STRUCTURE.md's "may import" column, first-party names only: a row's folder -> the folders it may
    import. In a cell, `bmp_core` is the whole package, `bmp_core.X` / `X` a subfolder of it, "the spine"
    or a spine module (`coco_meta`) the spine; the rest (third-party names, files) is not a folder."""
    allowed = {}
    for line in (ROOT / "STRUCTURE.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        folder = re.fullmatch(r"`([\w/]+)/`.*", cells[0]) if len(cells) == 3 else None
        if folder is None:
            continue
        here = folder.group(1).replace("/", ".")
        names: set[str] = set()
        if "the spine" in cells[2]:
            names.add(SPINE)
        for token in re.findall(r"`([\w.]+)`", cells[2]):
            if token == "bmp_core":
                names |= {SPINE, *(f"bmp_core.{s}" for s in SUBFOLDERS)}
            elif token.removeprefix("bmp_core.") in SUBFOLDERS:
                names.add(f"bmp_core.{token.removeprefix('bmp_core.')}")
            elif token in SPINE_MODULES:
                names.add(SPINE)
        allowed[here] = names
    return allowed


def _imports(path: Path) -> set[str]:
    """First-party modules ``path`` imports, at its top or inside a function, as written."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # a submodule, or a name in ``node.module`` (the module of a dotted name is found by ``_folder``
            # / ``resolve`` from its left)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in out if m.split(".")[0] in ("bmp_core", "jobs")}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted([*ROOT.glob("bmp_core/**/*.py"), *ROOT.glob("jobs/**/*.py")]):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def test_structure_md_rows_are_read_as_the_rules_they_state() -> None:
    allowed = _allowed_by_structure_md()
    assert set(allowed) == {"jobs", SPINE, *(f"bmp_core.{s}" for s in SUBFOLDERS)}
    assert allowed["jobs"] == {SPINE, *(f"bmp_core.{s}" for s in SUBFOLDERS)}
    assert allowed["bmp_core.ops"] == {SPINE} and allowed["bmp_core.io"] == {SPINE}
    assert allowed[SPINE] == {SPINE, "bmp_core.ops"}  # the loop runs the ops
    assert "bmp_core.analysis" not in allowed["bmp_core.output"] and "jobs" not in allowed[SPINE]


def test_each_folder_imports_only_what_structure_md_allows() -> None:
    allowed = _allowed_by_structure_md()
    wrong = []
    for path in _modules().values():
        here = _folder(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for module in _imports(path):
            there = _folder(module)
            if there != here and there not in allowed[here]:
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


def test_no_import_cycles_in_bmp_core_and_jobs() -> None:
    """Module by module, lazy imports included (a package's ``__init__`` counts as the package)."""
    modules = _modules()

    def resolve(name: str) -> str | None:  # the module file an imported name lives in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {m: {r for r in map(resolve, _imports(p)) if r is not None and r != m} for m, p in modules.items()}
    assert sum(map(len, graph.values())) > 100  # the graph was read
    cycles, done = [], set()

    def visit(module: str, path: list[str]) -> None:  # depth-first; a module on the path again is a cycle
        for dep in sorted(graph[module]):
            if dep in path:
                cycles.append(" -> ".join([*path[path.index(dep):], dep]))
            elif dep not in done:
                visit(dep, [*path, dep])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert cycles == [], "import cycles:\n" + "\n".join(sorted(set(cycles)))
