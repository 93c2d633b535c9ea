"""``BmpPredictor``: the BMP loop as one stage of your own Ray Data pipeline (docs/ray-data.md).

Two stages, so the GPU actors never decode: ``decode_images`` runs as plain CPU tasks on encoded
bytes, and ``BmpPredictor``'s actors get pixels::

    import ray
    from jobs.ray_data import BmpPredictor, decode_images

    ds = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)
    ds = ds.map_batches(decode_images, batch_size=16, num_cpus=1)            # CPU tasks
    ds = ds.map_batches(BmpPredictor, fn_constructor_kwargs=dict(config="configs/bmp_d3.yaml"),
                        num_gpus=1, batch_size=16,
                        compute=ray.data.ActorPoolStrategy(size=4, max_tasks_in_flight_per_actor=2))
    ds.write_parquet("s3://bucket/labels/")

``max_tasks_in_flight_per_actor=2``: the next batch is already on the actor while the GPU works. The
two stages must differ in resources (here ``num_cpus=1`` vs ``num_gpus=1``) or Ray Data fuses them
into one, and decoding is back on the GPU actor. ``read_images(include_paths=True)`` + ``BmpPredictor``
alone also works (Ray decodes in its read tasks, without EXIF orientation).

A plain callable class: Ray Data makes a pool of actors of it (the models are built once per actor,
in ``__init__``), and this module never imports Ray, so nothing here depends on which compute
arguments the installed Ray takes; they changed between releases (Ray 2.51+:
``compute=ActorPoolStrategy(size=N)``; before: ``concurrency=N``) and are the caller's (docs/ray-data.md).

One output row per input row, in order: every input column except the image column passes through,
then the image's ``status`` / ``error`` / ``width`` / ``height`` / ``num_instances`` (as in the
``images`` table) and one list column per ``instances`` field (``instance_id``, ``bbox_xyxy``,
``keypoints``, ``mask_rle_counts``, ...: ``bmp_core/output/tables.py``'s types, one entry per
person, null for an error row). The encoding is the job's own (``instances_table``), so a row's
lists are exactly the ``instances`` rows the job would write for that image.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from bmp_core.config import BmpConfig, JobConfig, load_config
from bmp_core.io.given_boxes import with_absolute_paths
from bmp_core.io.images import ImageDecodeError, decode_image_bgr
from bmp_core.output.tables import IMAGES_SCHEMA, INSTANCES_SCHEMA, STATUS_ERROR, STATUS_OK, ImageRow
from jobs.worker import BmpWorker

# Per image, from the ``images`` table; per person, every ``instances`` field but the image's id.
IMAGE_FIELDS = tuple(IMAGES_SCHEMA.field(n) for n in ("status", "error", "width", "height", "num_instances"))
PERSON_FIELDS = tuple(f for f in INSTANCES_SCHEMA if f.name != "image_id")
DECODE_ERROR = "decode_error"  # decode_images' column of reasons, read by BmpPredictor
_NO_PIXELS = np.zeros((1, 1, 3), np.uint8)  # an undecodable row's image: a tensor column holds no nulls


def prediction_schema(prefix: str = "") -> pa.Schema:
    """The columns ``BmpPredictor`` adds after the passed-through ones (names with ``prefix``)."""
    return pa.schema([pa.field(prefix + f.name, f.type) for f in IMAGE_FIELDS]
                     + [pa.field(prefix + f.name, pa.list_(f.type)) for f in PERSON_FIELDS])


class BmpPredictor:
    """Label the people in each row's image (``Dataset.map_batches`` UDF; see the module doc).

    Args:
        config: a ``BmpConfig``, or the path of a YAML config (read on the worker: it must exist
            there, e.g. inside the job's ``working_dir``).
        overrides: ``key.path=value`` overrides when ``config`` is a path.
        image_column: the column holding each image: HWC uint8 pixels, RGB as
            ``ray.data.read_images`` gives them (also HW gray and HW4 RGBA), or encoded bytes
            (``read_binary_files``' ``bytes``, a Parquet bytes column, an HF ``Image`` struct
            ``{bytes, path}``), decoded like the job's inputs (EXIF orientation applied).
        uri_column: a column naming each image (``read_images(include_paths=True)``'s ``path``),
            used to find it in ``job.given_boxes``; rows without it are named ``row <i>``.
        column_prefix: put before every added column's name, when the input has a column of that name.
        error_column: a column of reasons (``decode_images``' ``decode_error``): a row with one is an
            error row with that reason, its image unused. Consumed like the image column.

    Bad images (undecodable, too small, a null) become rows with ``status`` ``error`` and the reason
    in ``error``; they never fail the batch. An exception from the models (CUDA, out of memory) does,
    and Ray Data retries or fails the task as it is configured to.
    """

    def __init__(self, config: BmpConfig | str | os.PathLike[str], overrides: Sequence[str] = (),
                 image_column: str = "image", uri_column: str | None = "path",
                 column_prefix: str = "", error_column: str | None = DECODE_ERROR) -> None:
        cfg = config if isinstance(config, BmpConfig) else load_config(os.fspath(config), list(overrides))
        cfg = with_absolute_paths(cfg)
        self.cfg = cfg
        self.image_column, self.uri_column, self.prefix = image_column, uri_column, column_prefix
        self.error_column = error_column
        self.schema = prediction_schema(column_prefix)
        self._worker = BmpWorker(cfg)

    def __call__(self, batch: Any) -> Any:
        """One batch (a dict of numpy arrays, a ``pyarrow.Table`` or a pandas DataFrame) -> the same
        rows with the prediction columns added (a ``pyarrow.Table`` for a table, else a dict)."""
        if isinstance(batch, pa.Table):
            names = batch.column_names
            values = _arrow_values(batch, self.image_column)
            uris = batch.column(self.uri_column).to_pylist() if self.uri_column in names else None
            errors = batch.column(self.error_column).to_pylist() if self.error_column in names else None
        else:
            if not isinstance(batch, Mapping):  # a pandas DataFrame
                batch = {name: batch[name].to_numpy() for name in batch.columns}
            names = list(batch)
            values = batch.get(self.image_column)
            uris = list(batch[self.uri_column]) if self.uri_column in batch else None
            errors = list(batch[self.error_column]) if self.error_column in batch else None
        if values is None:
            raise KeyError(f"BmpPredictor: the batch has no column {self.image_column!r} (columns: "
                           f"{', '.join(names)}); pass image_column=")
        clash = sorted(set(names) & set(self.schema.names) - {self.image_column})
        if clash:
            raise ValueError(f"BmpPredictor: input column(s) {', '.join(clash)} would be overwritten; "
                             "pass column_prefix= (e.g. 'bmp_')")
        added = self.predict(values, uris, errors)
        consumed = [c for c in (self.image_column, self.error_column) if c in names]
        if isinstance(batch, pa.Table):
            kept = batch.drop_columns(consumed)
            for name, column in zip(self.schema.names, added, strict=True):
                kept = kept.append_column(name, column)
            return kept
        out: dict[str, Any] = {name: batch[name] for name in names if name not in consumed}
        # A dict batch goes back to Ray through numpy, which cannot carry a typed null inside a list: a
        # model without per-keypoint presence/visibility would turn those columns into pickled objects.
        out.update(zip(self.schema.names, (_nan_for_null_vectors(c) for c in added), strict=True))
        return out

    def predict(self, images: Sequence[Any], uris: Sequence[Any] | None = None,
                errors: Sequence[str | None] | None = None) -> list[pa.Array]:
        """The added columns (``prediction_schema`` order) for a sequence of image values (``errors``:
        per image a reason it could not be decoded upstream, or None)."""
        job = self.cfg.job
        decoded: list[tuple[ImageRow, np.ndarray | None]] = []
        for i, value in enumerate(images):
            uri = str(uris[i]) if uris is not None and uris[i] is not None else f"row {i}"
            # A reason is a string; "no reason" may arrive as None or NaN (Ray's pandas conversions).
            if errors is not None and isinstance(errors[i], str):
                decoded.append((ImageRow(i, uri, error=errors[i]), None))
                continue
            try:
                image_bgr = to_bgr(value, job.max_image_pixels, job.min_image_side)
            except ImageDecodeError as err:
                decoded.append((ImageRow(i, uri, error=str(err)), None))
                continue
            h, w = image_bgr.shape[:2]
            decoded.append((ImageRow(i, uri, width=w, height=h), image_bgr))
        rows, instances = self._worker.label_decoded(decoded)
        return _columns(rows, instances)


def _nan_for_null_vectors(column: pa.Array) -> pa.Array:
    """A list column of float vectors (``keypoint_presence`` / ``keypoint_visibility``) with null
    vectors (the model does not predict them) as the same column with NaN vectors; others as given."""
    item = column.type.value_type if pa.types.is_list(column.type) else None
    if item is None or not pa.types.is_fixed_size_list(item) or not pa.types.is_floating(item.value_type):
        return column
    vectors = column.flatten()
    if vectors.null_count == 0:
        return column
    nan = np.full(item.list_size, np.nan, np.float32).tolist()
    filled = pa.array([v if v is not None else nan for v in vectors.to_pylist()], item)
    return pa.ListArray.from_arrays(column.offsets, filled, column.type, mask=column.is_null())


def decode_images(batch: Any, bytes_column: str = "bytes", image_column: str = "image",
                  max_image_pixels: int = JobConfig.max_image_pixels,
                  min_image_side: int = JobConfig.min_image_side) -> dict[str, Any]:
    """The CPU stage ahead of ``BmpPredictor``: encoded images -> pixels (``Dataset.map_batches`` function).

    Decodes like the job (``decode_image_bgr``: EXIF orientation applied, the size limits of
    ``job.max_image_pixels`` / ``job.min_image_side``) and gives RGB pixels, as ``read_images`` does.

    Args:
        batch: a dict of numpy arrays (or a pandas DataFrame) with ``bytes_column`` (``read_binary_files``'
            ``bytes``, a Parquet bytes column, or HF ``Image`` structs).

    Returns:
        The batch without ``bytes_column``, plus ``image_column`` ((H, W, 3) uint8 RGB per row) and
        ``decode_error`` (None, or why the row could not be decoded: its image is then a 1x1 placeholder
        that ``BmpPredictor`` does not label; the row becomes an error row with that reason).
    """
    if not isinstance(batch, Mapping):  # a pandas DataFrame
        batch = {name: batch[name].to_numpy() for name in batch.columns}
    if bytes_column not in batch:
        raise KeyError(f"decode_images: the batch has no column {bytes_column!r} (columns: {', '.join(batch)}); "
                       "pass bytes_column= in fn_kwargs")
    images, errors = [], []
    for value in batch[bytes_column]:
        try:
            bgr = to_bgr(value, max_image_pixels, min_image_side)
        except ImageDecodeError as err:
            images.append(_NO_PIXELS)
            errors.append(str(err))
            continue
        images.append(np.ascontiguousarray(bgr[:, :, ::-1]))
        errors.append(None)
    out: dict[str, Any] = {name: column for name, column in batch.items() if name != bytes_column}
    out[image_column] = images
    out[DECODE_ERROR] = np.array(errors, dtype=object)
    return out


def to_bgr(value: Any, max_pixels: int, min_side: int) -> np.ndarray:
    """(H, W, 3) uint8 BGR from one image column value (pixels, bytes or an HF ``Image`` struct).

    Raises:
        ImageDecodeError: the value is not a usable image (the reason, for the ``error`` column).
    """
    if isinstance(value, Mapping):  # HF datasets' Image feature: {"bytes": ..., "path": ...}
        if value.get("bytes") is None:
            raise ImageDecodeError(f"no image bytes in the struct (path {value.get('path')!r} only)")
        value = value["bytes"]
    if value is None:
        raise ImageDecodeError("no image (null)")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return decode_image_bgr(bytes(value), max_pixels, min_side)
    if not isinstance(value, np.ndarray):
        raise ImageDecodeError(f"not an image: a {type(value).__name__} (expected HWC uint8 pixels or "
                               "bytes)")
    return pixels_to_bgr(value, max_pixels, min_side)


def pixels_to_bgr(pixels: np.ndarray, max_pixels: int, min_side: int) -> np.ndarray:
    """BGR from HWC RGB / HW gray / HW4 RGBA uint8 pixels, with the decoder's checks (size limits;
    alpha composited on white, as ``decode_image_bgr`` does)."""
    if pixels.dtype != np.uint8:
        raise ImageDecodeError(f"pixels must be uint8, got {pixels.dtype} (read_images(mode='RGB') "
                               "gives uint8)")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4))):
        raise ImageDecodeError(f"pixels must be HxW, HxWx3 or HxWx4, got shape {pixels.shape}")
    h, w = pixels.shape[:2]
    if h * w > max_pixels:
        raise ImageDecodeError(f"too many pixels: {w}x{h} = {w * h} > limit {max_pixels} "
                               "(job.max_image_pixels)")
    if h < min_side or w < min_side:
        raise ImageDecodeError(f"image too small: {w}x{h} pixels (minimum side {min_side})")
    if pixels.ndim == 2:
        return np.ascontiguousarray(np.repeat(pixels[:, :, None], 3, axis=2))
    rgb = pixels[:, :, :3]
    if pixels.shape[2] == 4:
        alpha = pixels[:, :, 3:].astype(np.float32) / 255.0
        rgb = np.round(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _arrow_values(table: pa.Table, column: str) -> list[Any] | None:
    """A pyarrow batch's image column as per-row Python values (ndarray pixels or bytes / dicts)."""
    if column not in table.column_names:
        return None
    col = table.column(column)
    if isinstance(col.type, pa.ExtensionType):  # Ray's tensor types: their to_numpy gives the pixels
        return [image for chunk in col.chunks for image in chunk.to_numpy()]
    return col.to_pylist()


def _columns(rows: list[ImageRow], instances: pa.Table) -> list[pa.Array]:
    """The rows' image fields, then each ``instances`` column grouped into one list per row (null
    for an error row)."""
    ok = np.array([r.error is None for r in rows], bool)
    image_values = {
        "status": [STATUS_OK if r.error is None else STATUS_ERROR for r in rows],
        "error": [r.error for r in rows],
        "width": [r.width for r in rows],
        "height": [r.height for r in rows],
        "num_instances": [r.num_instances for r in rows],
    }
    out = [pa.array(image_values[f.name], f.type) for f in IMAGE_FIELDS]
    instances = instances.sort_by([("image_id", "ascending"), ("instance_id", "ascending")])
    image_ids = instances.column("image_id").to_numpy()
    counts = np.bincount(image_ids, minlength=len(rows)) if len(image_ids) else np.zeros(len(rows), int)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    for f in PERSON_FIELDS:
        values = instances.column(f.name).combine_chunks()
        out.append(pa.ListArray.from_arrays(offsets, values, pa.list_(f.type), mask=pa.array(~ok)))
    return out
