"""README.md stays true: its configuration table is the code's, its commands name real things."""

from __future__ import annotations

import re
from pathlib import Path

from bmp_core.config_docs import BEGIN, END, config_reference_markdown

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_config_reference_matches_the_code() -> None:
    start, end = README.index(BEGIN) + len(BEGIN), README.index(END)
    assert README[start:end].strip() == config_reference_markdown(), (
        "README's configuration table is stale: regenerate it with python -m bmp_core.config_docs "
        "(tests/unit/test_readme.py::update_readme does it)"
    )


def test_named_configs_and_scripts_exist() -> None:
    for path in set(re.findall(r"(configs/[\w.]+\.yaml|scripts/[\w.]+\.sh|infra/[\w.-]+)", README)):
        assert (ROOT / path).exists(), f"README names {path}, which does not exist"


def update_readme() -> None:
    """Rewrite the generated table in place (python -c 'from tests.unit.test_readme import update_readme as u; u()')."""
    start, end = README.index(BEGIN) + len(BEGIN), README.index(END)
    (ROOT / "README.md").write_text(README[:start] + "\n" + config_reference_markdown() + "\n" + README[end:])


def test_output_names_in_the_docs_are_the_layouts() -> None:
    """Every ``OUT/<name>`` the README and STRUCTURE.md mention is a name of bmp_core/output/layout.py,
    and every name the layout defines is documented in its own docstring (the one description)."""
    from bmp_core.output import layout

    names = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)}
    docs = README + (ROOT / "STRUCTURE.md").read_text()
    mentioned = {m.rstrip("/").split("/")[0] for m in re.findall(r"OUT/([\w.-]+(?:/|\b))", docs)}
    assert mentioned, "README mentions no OUT/ path"
    assert mentioned <= names, f"README/STRUCTURE.md name OUT/ entries layout.py does not: {mentioned - names}"
    undocumented = {n for n in names if n not in (layout.__doc__ or "")}
    assert not undocumented, f"layout.py's docstring does not describe {undocumented}"
