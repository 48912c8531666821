"""Align a pack of aligned face crops (the LFW pack) again to a model's own template, once, into a new pack.

    python scripts/realign_pack.py MODEL OUT.zip [--images ../shared/data/lfw/lfw-deepfunneled-112.zip]

MODEL is a model directory (or a built-in name) with its own alignment template in ``model.json``
(an imported network such as SFace: the ArcFace template). Every image goes through
:func:`facesearch.detect.align.realign`, exactly as ``facesearch evaluate lfw --realign`` does it
(the face nearest the crop's centre, found on the crop upscaled twice, resampled once onto the
template); a crop in which no face is found is warped from the pack's mean geometry and listed in the
manifest (:func:`facesearch.detect.align.realign_or_warp`, the rule enroll, query and ``facesearch
align --realign`` share). The result is
a stored (uncompressed) zip of lossless PNGs with the same layout and file stems
(``<top>/<Name>/<Name>_0001.png``), so that pairs files, ``people.txt`` and ``facesearch train``
(``--teacher-data``, ``--exclude-lfw-fold`` with ``--people``) read it like the original. Next to it,
``OUT.json`` records the template, the source pack's SHA-256, the fallbacks and the time taken.

Training and scoring on this copy is what ``facesearch evaluate lfw --realign`` measures, without
realigning on every run (about 50 ms an image here).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from facesearch import images  # noqa: E402
from facesearch.datasets import ImageFolder  # noqa: E402
from facesearch.detect.align import realign_or_warp  # noqa: E402
from facesearch.model.files import resolve  # noqa: E402


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="model directory or built-in name whose alignment template to use")
    ap.add_argument("out", type=Path, help="the new pack (.zip)")
    ap.add_argument("--images", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"
                    / "lfw-deepfunneled-112.zip", help="the pack to realign (folder of identities or zip)")
    ap.add_argument("--top", default=None, help="top folder inside the zip (default: OUT's stem)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--limit", type=int, default=None, help="only the first N images (a quick check)")
    args = ap.parse_args(argv)
    cfg = resolve(args.model).config
    if cfg.alignment is None:
        raise SystemExit(f"model {args.model} has no alignment template of its own: nothing to realign to")
    template, size = np.asarray(cfg.alignment, np.float64), cfg.input_size
    folder = ImageFolder(args.images)
    keys = [(name, k) for name in folder.identities() for k in folder.items[name]][: args.limit]
    top = args.top or args.out.stem
    fallbacks: list[str] = []
    t0 = time.time()

    def work(item):
        name, key = item
        pixels = images.decode(folder.read(key), key)
        out, found = realign_or_warp(pixels, template, size)
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="PNG", compress_level=6)
        return name, key, not found, buf.getvalue()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf, ThreadPoolExecutor(args.threads) as pool:
        for i, (name, key, fell_back, data) in enumerate(pool.map(work, keys)):
            stem = PurePosixPath(key).stem
            zf.writestr(f"{top}/{name}/{stem}.png", data)
            if fell_back:
                fallbacks.append(f"{name}/{stem}")
            if (i + 1) % 1000 == 0:
                print(f"{i + 1}/{len(keys)} {time.time() - t0:.0f}s, no face so far {len(fallbacks)}",
                      file=sys.stderr, flush=True)
    os.replace(tmp, args.out)
    manifest = {
        "pack": str(args.out), "source_pack": str(args.images),
        "source_sha256": sha256_of(args.images) if args.images.is_file() else None,
        "model": cfg.name, "template": cfg.alignment, "size": size, "images": len(keys),
        "no_face_found_warped": fallbacks, "method": "facesearch.detect.align.realign_or_warp (upscale 2)",
        "format": "PNG (lossless), stored zip", "seconds": round(time.time() - t0, 1),
        "command": " ".join(["python", *sys.argv]),
    }
    args.out.with_suffix(".json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps({k: v for k, v in manifest.items() if k != "no_face_found_warped"}
                     | {"no_face_found": len(fallbacks)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
