#!/usr/bin/env python
"""Fill the decoded-pixel cache of a data set once (what `facesearch train --decode-cache DIR` reads), so
that trainings started together do not all decode it at the same time.

    python scripts/decode_cache.py DATA CACHE_DIR SIZE [SIZE ...]
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facesearch.model.config import ModelConfig  # noqa: E402
from facesearch.datasets import ImageFolder  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    folder = ImageFolder(argv[0])
    first = folder.items[folder.identities()[0]][:1]
    for size in argv[2:]:
        t = time.time()
        cfg = ModelConfig(input_size=int(size))
        folder.load_prepared(first, cfg, threads=16, cache=argv[1])
        print(f"decoded {len(folder)} images at {size} px into {folder.cache_path(argv[1], cfg)} in {time.time() - t:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
