"""Exception types that cross module boundaries and decide what happens to an image, a shard or a command,
and the loop's checks of its inputs that raise them.

A part of the spine: the loop raises them, the worker decides by type alone (``jobs/worker.py``), and
the CLI prints a ``UserError`` as one line and a hint, without a traceback (``jobs/cli.py``).
"""

from __future__ import annotations

import numpy as np


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


# The loop's checks of what it is given (``run_bmp_batch``).


def check_image_bgr(image: np.ndarray) -> None:
    """An (H, W, 3) uint8 array, else ``ValueError`` (a caller's mistake, not the image's)."""
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        shape = getattr(image, "shape", None)
        raise ValueError(f"images must be (H, W, 3) uint8 BGR arrays, got {type(image).__name__} {shape}")


def check_given_boxes(boxes: np.ndarray) -> np.ndarray:
    """The image's given boxes as (N, 4) float32; their problems are the image's (``ImageInputError``)."""
    boxes = np.asarray(boxes, np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ImageInputError(f"given boxes must be (N, 4) xyxy, got shape {boxes.shape}")
    # A NaN or inverted box would reach the pose crop and fail there with a message about affine
    # matrices; say what is wrong with the input instead.
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ImageInputError(f"given box {k} is not a finite xyxy box with x2 >= x1, y2 >= y1: "
                              f"{boxes[k].tolist()} ({int(bad.sum())} such boxes)")
    return boxes


def check_given_scores(scores: np.ndarray, num_boxes: int) -> np.ndarray:
    """The given boxes' scores as (N,) float32; a count that is not the boxes' is the image's problem."""
    scores = np.asarray(scores, np.float32).reshape(-1)
    if len(scores) != num_boxes:
        raise ImageInputError(f"given boxes: {len(scores)} box scores for {num_boxes} boxes")
    return scores
