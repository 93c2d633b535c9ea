"""Objects that pickle into what a hostile or unusual checkpoint holds (the safe loader's tests)."""

from __future__ import annotations

from typing import Any


class RunsACommand:
    """Pickles as a call of ``func(command)``: what a malicious checkpoint does on a full unpickle."""

    def __init__(self, func: Any, command: str) -> None:
        self.func, self.command = func, command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (self.func, (self.command,))


class Opaque:
    """A harmless custom class: not on the allow-list, so only a full unpickle can rebuild it."""
