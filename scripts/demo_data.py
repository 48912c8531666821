"""Pick demo people from the LFW pack: 3 gallery photos each and a 4th, unseen one as the probe."""

import argparse
import zipfile
from collections import defaultdict
from pathlib import Path, PurePosixPath


def view2_set(people_file: Path, k: int) -> set[str]:
    """Names in set k of LFW's people.txt (first line: number of sets; then per set a count and names)."""
    lines = people_file.read_text().split("\n")
    pos, sets = 1, []
    for _ in range(int(lines[0])):
        n = int(lines[pos])
        sets.append({line.split("\t")[0] for line in lines[pos + 1 : pos + 1 + n]})
        pos += n + 1
    return sets[k - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--zip", required=True, type=Path, help="lfw-deepfunneled-112.zip")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--people", type=int, default=25)
    ap.add_argument("--people-file", type=Path, help="LFW people.txt, to draw people from one View 2 set")
    ap.add_argument("--set", type=int, default=10, help="the View 2 set (1-10) to draw people from")
    args = ap.parse_args()
    allowed = view2_set(args.people_file, args.set) if args.people_file else None
    if not args.zip.is_file():
        raise SystemExit(f"LFW pack not found at {args.zip} (set SHARED=path/to/shared)")
    with zipfile.ZipFile(args.zip) as z:
        by_person = defaultdict(list)
        for name in sorted(z.namelist()):
            p = PurePosixPath(name)
            if p.suffix == ".webp":
                by_person[p.parent.name].append(name)
        eligible = sorted(n for n, files in by_person.items() if len(files) >= 4 and (allowed is None or n in allowed))
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
