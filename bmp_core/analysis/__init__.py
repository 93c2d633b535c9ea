"""Looking at and measuring an output: ``viz`` (overlays, GIFs), ``evaluation`` (COCO AP), ``report``."""
