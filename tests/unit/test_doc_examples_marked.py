"""Every shell and Python example of the README and the docs says whether the docs test runs it
(tests/doc_examples.py: run, fake or skip with a reason), so no example silently goes untested."""

from __future__ import annotations

import pytest

from tests.doc_examples import KINDS, Example, all_examples

EXAMPLES = all_examples()


def test_the_pages_have_examples_of_every_kind() -> None:
    kinds = {example.kind for example in EXAMPLES}
    assert set(KINDS) <= kinds, kinds
    assert any(e.kind == "run" and e.language == "python" for e in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_example_is_marked(example: Example) -> None:
    assert example.kind in KINDS, (
        f"{example.id}: mark the block with <!-- example: run --> / <!-- example: fake (why) --> / "
        f"<!-- example: skip (why) --> on the line before its fence (found {example.kind!r})")
    if example.kind in ("skip", "fake"):
        assert example.reason, f"{example.id}: say why the example is {example.kind}: <!-- example: skip (why) -->"
