"""Exception types that cross module boundaries and decide what happens to an image, a shard or a command.

A part of the spine: the loop raises them, the worker decides by type alone (``jobs/worker.py``), and
the CLI prints a ``UserError`` as one line and a hint, without a traceback (``jobs/cli.py``).
"""

from __future__ import annotations


class ImageInputError(ValueError):
    """One image cannot be labeled because of the image itself: its bytes, its size, its given boxes.

    The one exception type the worker turns into that image's error row (``str(err)`` is the reason
    stored in the ``images`` table) while the shard goes on. Anything else raised while labeling
    (an adapter bug, a broken record invariant, CUDA) is not the image's fault: it fails the shard,
    which is retried and, after ``job.max_attempts``, stops the job with its traceback. Not an
    ``uris.InputError``: that one means the job's input or output cannot be used at all and stops
    the command, which one bad image must never do.
    """


class UserError(Exception):
    """A mistake in what the user gave (config, paths, storage, network, checkpoints, GPUs, output state).

    The CLI prints ``bmp-label COMMAND: <message>`` and the hint, exits non-zero, and shows the traceback
    only with ``-v`` (docs/running-jobs.md): the message names the file or key, the hint says what to do.
    Anything that is not a ``UserError`` is a bug and keeps its traceback. Subclasses keep their older
    base classes too (``ConfigError`` is a ``ValueError``), so existing ``except`` clauses still catch them.

    Args:
        message: what is wrong, naming the file, key or URI.
        hint: one line saying what to do; None takes the class's ``default_hint``.
    """

    default_hint = "fix the input named above and run the command again"

    def __init__(self, message: str = "", hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint if hint is not None else self.default_hint
