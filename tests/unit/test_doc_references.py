"""Every document the project cites is in the repository: a ``docs/<page>.md#anchor`` (or any other ``*.md``)
named in the code, configs, scripts and tests exists and has that heading, the README's and the root documents'
relative links resolve, and no file cites a document outside the checkout (the team's shared folder)."""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Where code, comments, docstrings and error messages live.
CODE_DIRS = ("bmp_core", "jobs", "scripts", "benchmarks", "infra", "configs", "tests", ".ci")
CODE_FILES = ("pyproject.toml",)  # mkdocs.yml: its nav is checked by mkdocs build --strict
TEXT_SUFFIXES = {".py", ".sh", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini", ""}
SKIP_DIRS = {"__pycache__", "golden", "checkpoint_layouts", ".pytest_cache"}
# The documents at the root of the repository, besides the pages of docs/.
ROOT_DOCS = ("README.md", "STRUCTURE.md", "CHANGELOG.md")

# `docs/decisions.md#sam-gets-rgb`, `README.md`, `benchmarks/RESULTS.md`: a path ending in .md, then an optional
# anchor. A match whose first folder is not one of the repository's (a test's fake S3 key such as
# `in/readme.md`) names no document of ours and is left alone, and so is a string literal that is only a file
# name (`ROOT / "docs" / "clusters.md"`: code opening a file, not a citation).
MD_REF = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)(?:#([\w-]+))?")
QUOTED_NAME = re.compile(r"""(["'])[\w.-]+\.md\1""")
# `README "Real models"` / `README.md, section Lite`: a README section named in words.
README_SECTION = re.compile(r"README(?:\.md)?,? (?:section )?\"([^\"]+)\"")
# The team's method notes by their old names (`bmp-method §2.5`): documents that are not in the repository.
TEAM_NOTES = re.compile(r"\bbmp-(?:v2-)?method\b")
# Outside the repository: the team's documents and the shared test data, spelled without a literal match here.
OUTSIDE = "../" + "shared"


def code_files() -> list[Path]:
    files = [ROOT / name for name in CODE_FILES if (ROOT / name).exists()]
    for top in CODE_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            if (path.is_file() and path.suffix in TEXT_SUFFIXES
                    and not SKIP_DIRS.intersection(path.relative_to(ROOT).parts)):
                files.append(path)
    return files


def slugify(text: str) -> str:
    """The anchor MkDocs gives a heading: Python-Markdown's ``toc`` slugify of the heading's plain text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"[`*]", "", text)                        # code spans and emphasis keep their text
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


@cache
def anchors(path: Path) -> frozenset[str]:
    """The slugs of every ATX heading of a Markdown file, code blocks skipped."""
    slugs, in_fence = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and (m := re.match(r"#{1,6} (.+?)\s*#*\s*$", line)):
            slugs.add(slugify(m.group(1)))
    return frozenset(slugs)


def top_level_names() -> set[str]:
    return {p.name for p in ROOT.iterdir()}


def problems_of_reference(ref: str, anchor: str | None, base: Path = ROOT) -> str | None:
    """Why ``ref#anchor`` (relative to ``base``) does not resolve, or None when it does."""
    target = (base / ref).resolve()
    if not target.is_file():
        return f"{ref} does not exist (cite a page of docs/ by its path, docs/<page>.md#<heading>)"
    if anchor and anchor not in anchors(target):
        return f"{ref} has no heading with the anchor #{anchor} (it has {sorted(anchors(target))})"
    return None


def test_slugify_is_mkdocs_toc() -> None:
    assert slugify("SAM 2.1") == "sam-21"
    assert slugify("Price a job first: `plan --sample`") == "price-a-job-first-plan-sample"
    assert slugify('RTMDet-Ins "ignoring holes"') == "rtmdet-ins-ignoring-holes"
    assert slugify("Look at and measure the labels: `viz`, `eval`, `report`") == \
        "look-at-and-measure-the-labels-viz-eval-report"
    assert slugify("Real models (RTMDet-Ins, MaskPose, SAM 2.1)") == "real-models-rtmdet-ins-maskpose-sam-21"


def test_the_checker_finds_missing_files_and_anchors() -> None:
    assert problems_of_reference("docs/decisions.md", "sam-gets-rgb") is None
    assert "does not exist" in problems_of_reference("decisions.md", None)
    assert "no heading" in problems_of_reference("docs/decisions.md", "no-such-heading")
    found = [m.group(1) for m in MD_REF.finditer("see docs/method.md#pose-nms, README.md and Key='in/readme.md'")]
    assert found == ["docs/method.md", "README.md", "in/readme.md"]


@pytest.mark.parametrize("path", code_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_documents_cited_by_the_code_exist(path: Path) -> None:
    if path == Path(__file__).resolve():
        return  # this file's examples are the checker's test cases
    text = QUOTED_NAME.sub(lambda m: " " * len(m.group(0)), path.read_text(errors="replace"))
    names = top_level_names()
    bad = []
    for m in MD_REF.finditer(text):
        ref, anchor = m.group(1), m.group(2)
        if "/" in ref and ref.split("/", 1)[0] not in names:
            continue  # a made-up object key or member name in a test, not a document
        if why := problems_of_reference(ref, anchor):
            bad.append(f"line {text.count(chr(10), 0, m.start()) + 1}: {why}")
    for m in README_SECTION.finditer(text):
        if slugify(m.group(1)) not in anchors(ROOT / "README.md"):
            bad.append(f"line {text.count(chr(10), 0, m.start()) + 1}: README has no section {m.group(1)!r} "
                       "(cite the docs/ page that holds it)")
    for m in TEAM_NOTES.finditer(text):
        bad.append(f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0)} is not in the repository "
                       "(cite docs/method.md#<heading>)")
    assert not bad, f"{path.relative_to(ROOT)} cites documents that are not there:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", ROOT_DOCS)
def test_links_of_the_root_documents_resolve(name: str) -> None:
    text = (ROOT / name).read_text()
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address, or an anchor of the same page (GitHub's slugs, not MkDocs')
        ref, _, anchor = target.partition("#")
        if why := problems_of_reference(ref, anchor or None):
            bad.append(why)
    assert not bad, f"{name}: broken links: {bad}"


def test_no_file_cites_a_document_outside_the_repository() -> None:
    """Only the test fixtures may name the place outside the checkout where the shared test photos can be
    (tests/conftest.py looks there); documents, code, configs and scripts never do."""
    files = code_files() + [ROOT / name for name in ROOT_DOCS] + sorted((ROOT / "docs").rglob("*.md"))
    files += [p for p in (ROOT / "examples").rglob("*.md")]
    bad = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(errors="replace")
        for m in re.finditer(rf"(?:{re.escape(OUTSIDE)}|\bshared/docs)[\w./-]*", text):
            allowed = rel.startswith("tests/") and m.group(0).startswith(OUTSIDE + "/testdata")
            allowed |= rel == "tests/unit/test_doc_references.py"  # the rule's own spelling
            if not allowed:
                bad.append(f"{rel} line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}")
    assert not bad, "files cite what is outside the repository (cite docs/<page>.md, use examples/):\n" + \
        "\n".join(bad)


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_anchors_are_the_ones_mkdocs_makes(page: Path) -> None:
    """The checker's anchors of a page are the ids Python-Markdown's toc extension (what MkDocs runs) gives
    its headings (needs the docs extra: `pip install -e '.[docs]'`)."""
    markdown = pytest.importorskip("markdown", reason="Python-Markdown comes with the docs extra")
    md = markdown.Markdown(extensions=["toc", "fenced_code", "tables", "attr_list"])
    md.convert(page.read_text())

    def ids(tokens: list[dict]) -> set[str]:
        return {t["id"] for t in tokens} | {i for t in tokens for i in ids(t["children"])}

    made = {re.sub(r"_\d+$", "", i) for i in ids(md.toc_tokens)}  # a repeated heading gets _1, _2, ...
    assert anchors(page) == made
