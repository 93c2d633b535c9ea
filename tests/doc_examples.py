"""The shell and Python examples of README.md and the docs pages, with what each one's marker says.

Every ```bash / ```python block carries a marker on the line before its fence:

- ``<!-- example: run -->``: runs as written, on the CPU, from a folder holding the repository's ``examples/``
  and ``configs/`` and a finished output ``out/demo`` (the quick start's, made with the fake models);
- ``<!-- example: fake (why) -->``: runs with the fake models: ``configs/bmp_d3.yaml`` becomes
  ``configs/fake.yaml`` and ``models.device=cuda`` becomes ``models.device=cpu``;
- ``<!-- example: skip (why) -->``: not run (it needs a GPU, weights, a bucket or a cluster); the reason is
  required.

``tests/unit/test_doc_examples_marked.py`` checks that every block has one; ``tests/integration/
test_docs_examples.py`` runs the ``run`` and ``fake`` ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("run", "fake", "skip")
_FENCE = re.compile(r"^```(bash|sh|shell|python)[ \t]*\n(.*?)^```", re.S | re.M)
_MARKER = re.compile(r"<!-- example: (\w+)(?: \((.+?)\))? -->\s*$")
# What a `fake` example swaps to run on the CPU without weights.
FAKE_SUBSTITUTIONS = (("configs/bmp_d3.yaml", "configs/fake.yaml"), ("models.device=cuda", "models.device=cpu"))


@dataclass(frozen=True)
class Example:
    page: str  # path in the repository, e.g. docs/getting-started.md
    line: int  # line of the fence
    language: str  # bash | python
    code: str
    kind: str | None  # run | fake | skip, None without a marker
    reason: str | None  # the marker's (why)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    def runnable_code(self) -> str:
        code = self.code
        if self.kind == "fake":
            for old, new in FAKE_SUBSTITUTIONS:
                code = code.replace(old, new)
        return code


def pages() -> list[Path]:
    """README.md and every page of docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def examples_of(path: Path) -> list[Example]:
    text = path.read_text()
    found = []
    for m in _FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = _MARKER.match(before.strip())
        language = "bash" if m.group(1) in ("bash", "sh", "shell") else "python"
        found.append(Example(path.relative_to(ROOT).as_posix(), text.count("\n", 0, m.start()) + 1, language,
                             m.group(2), marker.group(1) if marker else None, marker.group(2) if marker else None))
    return found


def all_examples() -> list[Example]:
    return [example for page in pages() for example in examples_of(page)]
