"""Exception types that cross module boundaries and decide what happens to an image or a shard.

A part of the spine: the loop raises them, the worker decides by type alone (``jobs/worker.py``).
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
