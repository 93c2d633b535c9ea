"""Exports of a finished output to training data: COCO (sharded), YOLO pose / seg, review subsets.

Every format reads the output shard by shard (``source.iter_export_shards``: memory bounded by one
shard), applies one ``policy.ExportPolicy`` and writes ``export.json`` (``manifest.py``) beside its
files. The job's own ``coco.json`` is the COCO encoder of ``coco.py`` with the pass-all policy.
"""
