"""Storage and formats: URIs (fsspec), image decoding, Parquet tables, COCO export.

numpy / pyarrow / fsspec / PIL only: no Ray, no torch (tests/unit/test_import_boundary.py).
"""
