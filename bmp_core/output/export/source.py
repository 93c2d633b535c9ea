"""The export side of the reader: an output's committed shards, policy applied, one shard at a time.

Reads only through ``bmp_core.output.reader.iter_shards`` (markers of the current plan, parts read
ahead); holds one shard's tables at a time (plus the reader's read-ahead window), so an export's
memory does not grow with the output.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bmp_core.output.export.policy import ExportPolicy, PersonDecisions, decide, split_of
from bmp_core.output.tables import STATUS_OK


@dataclass(frozen=True)
class ExportShard:
    """The exportable images of one shard and the policy's verdict on their people.

    Attributes:
        image_ids, uris, widths, heights: the shard's ``ok`` images, by image id.
        splits: ``"train"`` / ``"val"`` of each image (``split_of`` its URI).
        instances: their ``instances`` rows, sorted by ``(image_id, instance_id)``.
        starts: (num_images + 1,) row offsets: image ``i``'s people are rows ``starts[i]:starts[i+1]``.
        decisions: ``decide(instances, policy)``.
        num_failed_images: the shard's images that failed in the job (never exported).
    """

    image_ids: list[int]
    uris: list[str]
    widths: list[int]
    heights: list[int]
    splits: list[str]
    instances: pa.Table
    starts: np.ndarray
    decisions: PersonDecisions
    num_failed_images: int

    @property
    def num_images(self) -> int:
        return len(self.image_ids)


def export_shard(images: pa.Table, instances: pa.Table, policy: ExportPolicy) -> ExportShard:
    """One shard's (images, instances) tables -> ``ExportShard`` (failed images and their rows left out)."""
    ok = images.filter(pc.equal(images.column("status"), STATUS_OK)).sort_by("image_id")
    ids = ok.column("image_id").to_numpy()
    inst = instances.filter(pc.is_in(instances.column("image_id"), value_set=ok.column("image_id").combine_chunks()))
    inst = inst.sort_by([("image_id", "ascending"), ("instance_id", "ascending")])
    inst_ids = inst.column("image_id").to_numpy()
    starts = np.append(np.searchsorted(inst_ids, ids, side="left"), len(inst_ids)).astype(np.int64)
    uris = ok.column("uri").to_pylist()
    return ExportShard(
        image_ids=ids.tolist(), uris=uris,
        widths=ok.column("width").to_pylist(), heights=ok.column("height").to_pylist(),
        splits=[split_of(u, policy.val_fraction) for u in uris],
        instances=inst, starts=starts, decisions=decide(inst, policy),
        num_failed_images=images.num_rows - ok.num_rows,
    )


def export_shards(parts: Iterable[tuple[pa.Table, pa.Table]], policy: ExportPolicy) -> Iterator[ExportShard]:
    """``export_shard`` of each (images, instances) pair, lazily."""
    for images, instances in parts:
        yield export_shard(images, instances, policy)


def iter_export_shards(store, policy: ExportPolicy, progress: bool = False,
                       desc: str = "export") -> Iterator[ExportShard]:
    """The committed shards of the output in ``store`` (an ``OutputStore``), in shard order.

    Args:
        progress: a tqdm bar counting images.

    Raises:
        OutputStateError: ``store`` holds no bmp-label output (no ``plan.json``).
    """
    from tqdm.auto import tqdm

    from bmp_core.output.commits import committed_markers
    from bmp_core.output.plan import load_plan
    from bmp_core.output.reader import iter_shards

    plan = load_plan(store)
    total = sum(m.num_images for m in committed_markers(store, plan.plan_id).values())
    with tqdm(total=total, unit="img", desc=desc, disable=not progress, smoothing=0.1) as bar:
        for shard in export_shards(iter_shards(store, plan.plan_id), policy):
            yield shard
            bar.update(shard.num_images + shard.num_failed_images)
