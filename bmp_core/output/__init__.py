"""The bmp-label output dataset, write side and read side (``layout.py`` describes ``OUT/``).

numpy, pyarrow and fsspec only; no Ray, no ``jobs``. The job writes through ``store`` / ``plan`` /
``commits``; finalize, ``export-coco``, ``viz``, ``eval`` and ``report`` read through ``reader``.
"""
