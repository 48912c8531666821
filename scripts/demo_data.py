"""Pick demo people from the LFW pack: 3 gallery photos each and a 4th, unseen one as the probe, and
``--strangers N`` probes of other people of the same set, never enrolled (``OUT/strangers/``).

With ``--photos DIR`` (LFW's original, unaligned photos: ``lfw-original-150-sample``) it also writes
``OUT/photos/<name>/`` (photos 1-3 of each person there) and ``OUT/group.jpg``: the 4th photos of the
first two people in one frame, the second enlarged and tilted, for ``--detect``.
"""

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
    ap.add_argument("--photos", type=Path, help="a folder of identities of unaligned photos (4 per person)")
    ap.add_argument("--strangers", type=int, default=5, help="probes of people who are not enrolled")
    args = ap.parse_args()
    if args.photos:
        group_photo(args.photos, args.out)
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
        others = sorted(n for n in by_person if n not in chosen and (allowed is None or n in allowed))
        strangers = others[:: max(1, len(others) // max(1, args.strangers))][: args.strangers]
        (args.out / "strangers").mkdir(parents=True, exist_ok=True)
        for person in strangers:
            f = by_person[person][0]
            (args.out / "strangers" / PurePosixPath(f).name).write_bytes(z.read(f))
    print(f"demo data: {len(chosen)} people x 3 gallery photos, {len(chosen)} unseen probes, "
          f"{len(strangers)} probes of people not enrolled, in {args.out}")


def group_photo(photos: Path, out: Path) -> None:
    from PIL import Image

    people = sorted(p for p in photos.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= 4)
    if len(people) < 2:
        raise SystemExit(f"{photos}: expected folders of at least 4 photos each")
    for person in people:
        (out / "photos" / person.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(person.glob("*.jpg"))[:3]:
            (out / "photos" / person.name / f.name).write_bytes(f.read_bytes())
    a, b = (Image.open(sorted(p.glob("*.jpg"))[3]).convert("RGB") for p in people[:2])
    frame = Image.new("RGB", (560, 320), (120, 120, 120))
    frame.paste(a, (20, 90))
    b = b.resize((210, 210), Image.Resampling.BICUBIC).rotate(15, Image.Resampling.BICUBIC, expand=True,
                                                                fillcolor=(120, 120, 120))
    frame.paste(b, (290, 40))
    frame.save(out / "group.jpg", quality=92)
    print(f"demo photos: {len(people)} people x 3 photos; group.jpg shows {people[0].name} (left) and "
          f"{people[1].name} (right), photos not among those enrolled")


if __name__ == "__main__":
    main()
