"""The documentation stays true: the configuration page's table is the code's, the commands of the README and
the docs pages name real things, and every ``OUT/<name>`` they mention is a name of the output layout."""

from __future__ import annotations

import re
from pathlib import Path

from bmp_core.config_docs import BEGIN, END, PAGE, config_reference_markdown, update_page

ROOT = Path(__file__).resolve().parents[2]
CONFIG_PAGE = ROOT / PAGE
# The README and every page of the docs site (docs/hooks.py and the API page hold no commands).
DOCS = {p.relative_to(ROOT).as_posix(): p.read_text()
        for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}


def test_config_reference_matches_the_code() -> None:
    text = CONFIG_PAGE.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    assert text[start:end].strip() == config_reference_markdown(), (
        f"{PAGE}'s configuration table is stale: regenerate it with python -m bmp_core.config_docs --write")


def test_update_page_rewrites_only_the_table(tmp_path: Path) -> None:
    page = tmp_path / "configuration.md"
    page.write_text(f"# Title\n\nprose\n\n{BEGIN}\n| stale |\n{END}\n\nmore prose\n")
    assert update_page(page) is True
    text = page.read_text()
    assert text.startswith("# Title\n\nprose\n\n") and text.endswith(f"{END}\n\nmore prose\n")
    assert "| stale |" not in text and config_reference_markdown() in text
    assert update_page(page) is False  # a second run finds nothing to do


def test_named_configs_and_scripts_exist() -> None:
    for name, text in DOCS.items():
        for path in set(re.findall(r"(configs/[\w.]+\.yaml|scripts/[\w.]+\.sh|infra/[\w.-]+)", text)):
            assert (ROOT / path).exists(), f"{name} names {path}, which does not exist"


def test_output_names_in_the_docs_are_the_layouts() -> None:
    """Every ``OUT/<name>`` the README, the docs and STRUCTURE.md mention is a name of bmp_core/output/layout.py,
    and every name the layout defines is documented in its own docstring (the one description)."""
    from bmp_core.output import layout

    names = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)}
    docs = "".join(DOCS.values()) + (ROOT / "STRUCTURE.md").read_text()
    mentioned = {m.rstrip("/").split("/")[0] for m in re.findall(r"OUT/([\w.-]+(?:/|\b))", docs)}
    assert mentioned, "the docs mention no OUT/ path"
    assert mentioned <= names, f"the docs name OUT/ entries layout.py does not: {mentioned - names}"
    undocumented = {n for n in names if n not in (layout.__doc__ or "")}
    assert not undocumented, f"layout.py's docstring does not describe {undocumented}"
