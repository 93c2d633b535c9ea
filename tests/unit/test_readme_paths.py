"""The shell commands of README.md and of the docs pages work from a plain clone: no path leaves the repository,
and the README's quick start is what CI runs (.ci/run)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# The README and every page of the docs site, by their path in the repository.
PAGES = {p.relative_to(ROOT).as_posix(): p.read_text()
         for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
# The documented stand-ins for the user's own storage: `/data/photos`, `/data/labels`, ...
ALLOWED_ABSOLUTE = ("/data/",)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def shell_blocks(markdown: str) -> list[tuple[int, str]]:
    """(line number of the first command line, text) of every ```bash / ```sh / ```shell block."""
    blocks = []
    for match in re.finditer(r"^```(?:bash|sh|shell)[ \t]*\n(.*?)^```", markdown, re.S | re.M):
        blocks.append((markdown.count("\n", 0, match.start(1)) + 1, match.group(1)))
    return blocks


def words(line: str) -> list[str]:
    """The shell words of one line, comments dropped; `key=value` words also yield `value`."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote continued on the next line: plain split is enough here
        tokens = line.split("#", 1)[0].split()
    out = []
    for token in tokens:
        out.append(token)
        if "=" in token and not _SCHEME.match(token):
            out.append(token.split("=", 1)[1])
    return out


def paths_leaving_the_repository(block: str) -> list[str]:
    """Words of a shell block that name a place outside the checkout: a `..` component, `~`, an absolute
    path (other than the documented /data/... examples) or a file:// URI. s3://, https://, hf:// and other
    URIs name remote objects, not paths of this machine."""
    bad = []
    for line in block.splitlines():
        for word in words(line):
            if word.startswith("file://"):
                bad.append(word)
            elif _SCHEME.match(word):
                continue
            elif (word.startswith("~") or ".." in word.split("/")
                  or (word.startswith("/") and not word.startswith(ALLOWED_ABSOLUTE))):
                bad.append(word)
    return bad


def quick_start_commands() -> list[str]:
    """The command lines of the first shell block under '## Quick start'."""
    section = README[README.index("## Quick start"):]
    section = section[:section.index("\n## ", 1)]
    _, block = shell_blocks(section)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_checker_flags_what_leaves_the_repository() -> None:
    block = ("bmp-label run --input ../shared/testdata --output /tmp/x job.given_boxes=../d.json\n"
             "cp a ~/b && ls examples/../.. file:///etc/passwd  # ../in/a/comment\n"
             "bmp-label run --input /data/photos --output s3://b/labels/ models.x=hf://o/r/f.pth\n"
             "curl https://example.org/a/../b 'examples/images'\n")
    assert paths_leaving_the_repository(block) == [
        "../shared/testdata", "/tmp/x", "../d.json", "~/b", "examples/../..", "file:///etc/passwd"]


@pytest.mark.parametrize("page,start,block", [
    pytest.param(page, *b, id=f"{page}:{b[0]}") for page, text in PAGES.items() for b in shell_blocks(text)])
def test_shell_blocks_stay_inside_the_repository(page: str, start: int, block: str) -> None:
    bad = paths_leaving_the_repository(block)
    assert not bad, (
        f"{page} line {start}: {bad} leave the repository, so the command fails in a plain clone "
        "(use examples/ or a /data/... stand-in)")


def test_repository_paths_in_shell_blocks_exist() -> None:
    named = {word.rstrip("/") for text in PAGES.values() for _, block in shell_blocks(text)
             for line in block.splitlines()
             for word in words(line) if word.startswith(("examples/", "configs/", "scripts/", "infra/"))}
    assert named, "expected the documented commands to name files of the repository"
    missing = sorted(p for p in named if not any(ROOT.glob(p)))
    assert not missing, f"the documented commands name files that are not in the repository: {missing}"


def test_quick_start_is_what_ci_runs() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in (line.strip() for line in ci), f".ci/run does not run the quick start's `{command}`"
