"""MkDocs hook: publish files that live outside docs/ under their one home in the repository.

``benchmarks/RESULTS.md`` (the benchmark log, next to the benchmarks that write it) and ``CHANGELOG.md`` (at the
root, where Keep a Changelog puts it) become pages of the site at build time, so no copy can go stale.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
# site page -> the repository file it is built from
OUTSIDE = {"changelog.md": "CHANGELOG.md", "benchmark-results.md": "benchmarks/RESULTS.md"}


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Links of a root file to ``docs/<page>`` point at the page itself once the file is a page of the site."""
    if page.file.src_uri in OUTSIDE and OUTSIDE[page.file.src_uri].count("/") == 0:
        markdown = markdown.replace("](docs/", "](")
    return markdown


def on_files(files: Files, config) -> Files:
    for src_uri, repo_path in OUTSIDE.items():
        files.append(File.generated(config, src_uri, abs_src_path=str(ROOT / repo_path)))
    return files
