"""Listing an input: folders, globs, list files, single images; S3 options from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from bmp_core.io.uris import InputError, describe_storage, list_input, storage_options

EXTS = (".jpg", ".png")


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    for rel in ("b.jpg", "a.PNG", "sub/c.jpg", "sub/deeper/d.png", "notes.txt", "sub/e.gif"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    return tmp_path


def test_folder_is_recursive_filtered_and_sorted(tree: Path) -> None:
    got = list_input(str(tree), EXTS).to_pylist()
    expected = sorted(str(tree / r) for r in ("b.jpg", "a.PNG", "sub/c.jpg", "sub/deeper/d.png"))
    assert got == expected


def test_glob(tree: Path) -> None:
    assert list_input(str(tree / "sub" / "*"), EXTS).to_pylist() == [str(tree / "sub" / "c.jpg")]


def test_list_file_keeps_order_free_sorted_unique_entries(tree: Path) -> None:
    listing = tree / "list.txt"
    listing.write_text(
        "# a comment\n"
        "sub/c.jpg\n"  # relative to the list file
        f"{tree / 'b.jpg'}\r\n"
        "\n"
        "  missing.jpg  \n"  # kept: it becomes an error row, not a silent drop
        "notes.txt\n"  # not filtered by extension either
        "s3://bucket/key.jpg\n"
        "sub/c.jpg"  # duplicate, and no final newline
    )
    got = list_input(str(listing), EXTS).to_pylist()
    expected = sorted({str(tree / "sub/c.jpg"), str(tree / "b.jpg"), str(tree / "missing.jpg"),
                       str(tree / "notes.txt"), "s3://bucket/key.jpg"})
    assert got == expected


def test_single_image(tree: Path) -> None:
    assert list_input(str(tree / "b.jpg"), EXTS).to_pylist() == [str(tree / "b.jpg")]


def test_missing_input_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="input not found"):
        list_input(str(tmp_path / "nope"), EXTS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="lists no images"):
        list_input(str(tmp_path / "empty"), EXTS)


def test_s3_endpoint_from_env_and_no_credentials_in_descriptions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSECRETISH")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    assert storage_options("s3://b/p") == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:10")  # the S3-specific one wins
    assert storage_options("s3://b/p")["client_kwargs"]["endpoint_url"] == "http://127.0.0.1:10"
    assert storage_options("/local/path") == {}
    text = describe_storage("s3://b/p")
    assert "127.0.0.1:10" in text and "very-secret-value" not in text and "AKIDSECRETISH" not in text
