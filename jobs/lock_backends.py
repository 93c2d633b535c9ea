"""Compare-and-swap on one small object of an output: the primitive under the output lock.

``create`` / ``replace`` / ``delete`` change the object only if it is (still) as read, and say
whether they did. One class per backend:

- ``LocalCas``: create is ``link(2)`` of a complete temp file (``write_file_atomic(replace=False)``,
  which fails if the name exists); replace and delete hold ``flock(2)`` on the output folder and
  compare the content's sha256 (the version) first.
- ``S3Cas``: ``PutObject`` with ``If-None-Match: *`` (create) or ``If-Match: <ETag>`` (replace), and
  ``DeleteObject`` with ``If-Match``. A store without conditional requests answers 501: the methods
  then return None, and after ``unconditional`` is set (the lock's lease fallback) they write plainly.

Results of ``create`` / ``replace``: True done, False the object was not as expected, None the store
has no conditional writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from typing import Any

from bmp_core.output.store import OutputStore, write_file_atomic


class LocalCas:
    """Compare-and-swap on a local file (see the module doc)."""

    def __init__(self, store: OutputStore, rel: str) -> None:
        self.store, self.rel = store, rel
        self.path = store.path(rel)
        self.unconditional = False  # never needed locally; kept for the lock's uniform use

    def read(self) -> tuple[bytes, str] | None:
        """(content, version) or None when absent; the version is the content's sha256."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def create(self, data: bytes) -> bool | None:
        return write_file_atomic(self.path, data, replace=False)

    def replace(self, data: bytes, version: str) -> bool | None:
        if self.unconditional:
            self.store.write_bytes(self.rel, data)
            return True
        with self._guard():
            found = self.read()
            if found is None or found[1] != version:
                return False
            self.store.write_bytes(self.rel, data)  # temp file + rename
            return True

    def delete(self, version: str) -> None:
        with self._guard():
            found = self.read()
            if found is not None and found[1] == version:
                os.remove(self.path)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        fd = os.open(os.path.dirname(self.path), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock


class S3Cas:
    """Compare-and-swap on an S3 object through conditional requests (see the module doc)."""

    def __init__(self, store: OutputStore, rel: str) -> None:
        self.store, self.rel = store, rel
        self.path = store.path(rel)
        self.unconditional = False  # set by the lock's lease fallback: plain writes from then on

    def read(self) -> tuple[bytes, str] | None:
        """(content, version) or None when absent; the version is the ETag ("" when unconditional)."""
        if self.unconditional:
            data = self.store.read_bytes(self.rel)
            return None if data is None else (data, "")
        try:
            return self._call("get_object")
        except FileNotFoundError:
            return None

    def create(self, data: bytes) -> bool | None:
        return self._put(data, IfNoneMatch="*")

    def replace(self, data: bytes, version: str) -> bool | None:
        if self.unconditional:
            self.store.write_bytes(self.rel, data)
            return True
        return self._put(data, IfMatch=version)

    def delete(self, version: str) -> None:
        if not self.unconditional:
            try:
                self._call("delete_object", IfMatch=version)
                return
            except FileNotFoundError:
                return
            except OSError as err:
                outcome = conditional_outcome(err)
                if outcome is False:
                    return  # no longer the version we hold: not ours to delete
                if outcome is not None:
                    raise
        found = self.read()  # a store without conditional deletes: check, then delete
        if found is not None and found[1] == version:
            # Not atomic with the read, but the caller holds a fresh lease: nobody takes it over now.
            self.store.remove(self.rel)

    def _call(self, method: str, **kwargs: Any) -> Any:
        from fsspec.asyn import sync

        fs = self.store.fs
        bucket, key, _ = fs.split_path(self.path)

        async def call() -> Any:
            out = await fs._call_s3(method, Bucket=bucket, Key=key, **kwargs)
            if method == "get_object":
                body = out["Body"]
                try:
                    return await body.read(), out["ETag"]
                finally:
                    body.close()
            return out

        return sync(fs.loop, call)

    def _put(self, data: bytes, **condition: str) -> bool | None:
        try:
            self._call("put_object", Body=data, **condition)
            return True
        except (FileExistsError, FileNotFoundError):
            return False  # If-None-Match: it exists; If-Match: it was deleted
        except OSError as err:
            outcome = conditional_outcome(err)
            if outcome is True:
                raise
            return outcome


def conditional_outcome(err: OSError) -> bool | None:
    """What an s3fs error of a conditional request means: False the condition failed (the object
    is not the version named, or exists), None the store has no conditional requests (501), True
    anything else (a real error, to be raised)."""
    cause = err.__cause__ or err.__context__
    response = getattr(cause, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
        return False
    if code == "NotImplemented" or status == 501:
        return None
    return True


def cas_for(store: OutputStore, rel: str) -> LocalCas | S3Cas:
    """The compare-and-swap of ``rel`` in ``store``'s backend."""
    return LocalCas(store, rel) if store.is_local else S3Cas(store, rel)
