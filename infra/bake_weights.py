"""Download the checkpoints a config names into a cache folder (used by infra/Dockerfile, BAKE_WEIGHTS=1).

Usage: python infra/bake_weights.py CONFIG CACHE_DIR [--dry-run]

Files land exactly where ``bmp_core.models.checkpoints.resolve_checkpoint`` looks for them
(``CACHE_DIR/<hash of the URI>/<name>``), so a job whose ``models.cache_dir`` is CACHE_DIR and whose
checkpoints are the same URIs finds them without network (``BMP_OFFLINE=1``). The same command
pre-fills a shared cache volume, or checks what a config would fetch (``--dry-run``).
"""

from __future__ import annotations

import argparse
import sys

from bmp_core.config import load_config
from bmp_core.models.checkpoints import cache_path_for, resolve_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("cache_dir")
    parser.add_argument("--dry-run", action="store_true", help="print what would be fetched, fetch nothing")
    args = parser.parse_args(argv)

    models = load_config(args.config).models
    uris = [m.checkpoint for m in (models.detector, models.pose, models.segmenter) if m.checkpoint]
    for uri in uris:
        if args.dry_run:
            print(f"{uri} -> {cache_path_for(uri, args.cache_dir)}")
        else:
            # offline=False: the image build is the one place allowed to download.
            print(f"{uri} -> {resolve_checkpoint(uri, args.cache_dir, offline=False, timeout_s=300)}")
    return 0 if uris else 1  # a config with no checkpoint has nothing to bake: say so with the exit code


if __name__ == "__main__":
    sys.exit(main())
