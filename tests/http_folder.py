"""A folder served over HTTP on 127.0.0.1 (a random port) that records what it was asked for: the stand-in
for a checkpoint host in the download, offline and staging tests."""

from __future__ import annotations

import contextlib
import functools
import http.server
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar


class RecordingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; records every GET (``requests``: paths, ``seen``: (path, headers)) and waits
    ``delay_s`` before answering. ``serve_folder`` gives each server a subclass with lists of its own."""

    requests: ClassVar[list[str]] = []
    seen: ClassVar[list[tuple[str, dict[str, str]]]] = []
    delay_s: ClassVar[float] = 0.0

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        type(self).seen.append((self.path, dict(self.headers)))
        time.sleep(type(self).delay_s)
        super().do_GET()

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_folder(root: Path, tls: ssl.SSLContext | None = None) -> Iterator[tuple[str, type[RecordingHandler]]]:
    """(base URL, handler class) of a server of ``root`` running for the block; HTTPS with ``tls`` (a server
    context holding the certificate)."""
    handler = type("Handler", (RecordingHandler,), {"requests": [], "seen": [], "delay_s": 0.0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
