"""Pick demo people from the LFW pack: 3 gallery photos each and a 4th, unseen one as the probe."""

import argparse
import zipfile
from collections import defaultdict
from pathlib import Path, PurePosixPath


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--zip", required=True, type=Path, help="lfw-deepfunneled-112.zip")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--people", type=int, default=25)
    args = ap.parse_args()
    if not args.zip.is_file():
        raise SystemExit(f"LFW pack not found at {args.zip} (set SHARED=path/to/shared)")
    with zipfile.ZipFile(args.zip) as z:
        by_person = defaultdict(list)
        for name in sorted(z.namelist()):
            p = PurePosixPath(name)
            if p.suffix == ".webp":
                by_person[p.parent.name].append(name)
        eligible = sorted(n for n, files in by_person.items() if len(files) >= 4)
        step = max(1, len(eligible) // args.people)
        chosen = eligible[::step][: args.people]
        for person in chosen:
            files = by_person[person][:4]
            (args.out / "gallery" / person).mkdir(parents=True, exist_ok=True)
            (args.out / "probes").mkdir(parents=True, exist_ok=True)
            for f in files[:3]:
                (args.out / "gallery" / person / PurePosixPath(f).name).write_bytes(z.read(f))
            (args.out / "probes" / PurePosixPath(files[3]).name).write_bytes(z.read(files[3]))
    print(f"demo data: {len(chosen)} people x 3 gallery photos, {len(chosen)} unseen probes in {args.out}")


if __name__ == "__main__":
    main()
