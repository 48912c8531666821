"""The data of a run: LFW people files, the split of identities, their images, and the P x K sampler.

Nothing here imports torch: the sampler gives index arrays into the decoded images.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from facesearch import images
from facesearch.datasets import ImageFolder
from facesearch.training.options import TrainingError, TrainOptions


def read_lfw_people(path: str | os.PathLike) -> list[list[str]]:
    """LFW ``people.txt``: the View 2 identity sets, as lists of names (set 1 first)."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    except FileNotFoundError as e:
        raise TrainingError(f"people file not found: {path}") from e
    try:
        n_sets, i, sets = int(lines[0]), 1, []
        for _ in range(n_sets):
            count = int(lines[i])
            sets.append([ln.split("\t")[0] for ln in lines[i + 1 : i + 1 + count]])
            i += 1 + count
    except (IndexError, ValueError) as e:
        raise TrainingError(f"{path} is not an LFW people.txt file ({e})") from e
    return sets


@dataclass
class Split:
    train: list[str]
    calibration: list[str]
    skipped_small: int  # identities with fewer than min_images images


def split_identities(folder: ImageFolder, options: TrainOptions) -> Split:
    names = folder.identities()
    if options.include_people is not None:
        names = [n for n in names if n in options.include_people]
    names = [n for n in names if n not in options.exclude_people]
    usable = [n for n in names if len(folder.items[n]) >= options.min_images]
    rng = np.random.default_rng(options.seed)
    order = rng.permutation(len(usable))
    n_cal = round(len(usable) * options.calibration_fraction)
    if options.calibration_fraction > 0:
        n_cal = max(n_cal, 2)
    cal = sorted(usable[i] for i in order[:n_cal])
    train = sorted(usable[i] for i in order[n_cal:])
    if len(train) < options.identities_per_batch:
        raise TrainingError(
            f"only {len(train)} training identities with >= {options.min_images} images in {options.data} "
            f"(after include/exclude and holding out {len(cal)} for calibration); "
            f"a batch needs P={options.identities_per_batch} (set it with --pk P K)"
        )
    return Split(train, cal, len(names) - len(usable))


def images_of(folder: ImageFolder, names: Iterable[str]) -> tuple[list[str], list[int], list[int]]:
    """The image keys of these identities, in order, each key's identity number (0, 1, ... in the order of
    ``names``) and each identity's image count."""
    keys: list[str] = []
    labels: list[int] = []
    counts: list[int] = []
    for j, name in enumerate(names):
        items = folder.items[name]
        keys.extend(items)
        labels.extend([j] * len(items))
        counts.append(len(items))
    return keys, labels, counts


class PKSampler:
    """P identities x K images per batch; every identity once per epoch. State is a numpy Generator.

    With ``world`` > 1 (distributed training) every rank draws the same global batch of ``P * world``
    identities (its generator seeded alike) and yields its own slice, rank ``rank``'s ``P`` of them, labelled
    by their place in the global batch: the ranks' slices, put together in rank order, are the batch one
    process with ``P * world`` identities draws (:mod:`facesearch.training.distributed`)."""

    def __init__(self, offsets: np.ndarray, counts: np.ndarray, p: int, k: int, rng: np.random.Generator,
                 rank: int = 0, world: int = 1):
        self.offsets, self.counts, self.p, self.k, self.rng = offsets, counts, p, k, rng
        self.rank, self.world = rank, world

    def steps_per_epoch(self) -> int:
        return len(self.counts) // (self.p * self.world)  # the remainder identities come first next epoch's shuffle

    def epoch(self) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        order = self.rng.permutation(len(self.counts))
        p_all = self.p * self.world
        mine = slice(self.rank * self.p, (self.rank + 1) * self.p)
        labels = np.repeat(np.arange(p_all)[mine], self.k)
        for s in range(self.steps_per_epoch()):
            ids = order[s * p_all : (s + 1) * p_all]
            idx = np.empty((p_all, self.k), np.int64)
            for j, c in enumerate(ids):
                n = int(self.counts[c])
                pick = self.rng.choice(n, self.k, replace=n < self.k)
                idx[j] = self.offsets[c] + pick
            yield idx[mine].reshape(-1), labels


def image_stem(identity: str, key: str) -> str:
    """How an image of a folder of identities is named across copies of it (the pack and its copy aligned
    for another template): ``<identity>/<file stem>``, whatever the root, the zip's top folder or the
    file's extension."""
    return f"{identity}/{PurePosixPath(key.replace(os.sep, '/')).stem}"


def scan_images(root: str | os.PathLike) -> dict[str, str]:
    """Every image under ``root`` (a directory, at any depth, or a zip), by its relative path without the
    extension (a zip's one top folder left out, as :class:`ImageFolder` reads the LFW pack) -> its key
    (a path, or a zip member), which ``ImageFolder(root).load_prepared`` reads. Hidden files are left out."""
    root = Path(root)
    found: dict[str, str] = {}
    if root.is_file() and zipfile.is_zipfile(root):
        with zipfile.ZipFile(root) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/") and not n.startswith("__MACOSX/")
                     and images.is_image_name(n)]
        parts = [PurePosixPath(n).parts for n in names]
        skip = 1 if parts and len({p[0] for p in parts}) == 1 and all(len(p) >= 2 for p in parts) else 0
        for name, p in zip(names, parts):
            rel = p[skip:]
            if not any(x.startswith(".") for x in rel):
                found[str(PurePosixPath(*rel).with_suffix(""))] = name
    elif root.is_dir():
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and images.is_image_name(path.name) and not any(x.startswith(".") for x in rel.parts):
                found[rel.with_suffix("").as_posix()] = str(path)
    else:
        raise TrainingError(f"{root}: expected a folder of images or a zip of one")
    return found


@dataclass
class Unlabelled:
    """The unlabelled images a run uses: their keys (under ``root``) and relative stems, and what was left out."""

    root: Path
    keys: list[str]
    stems: list[str]
    #: images in a sub-folder named after an identity the run must not see (excluded, not included, or
    #: held out for calibration)
    left_out_people: int
    #: images in a sub-folder named after a training identity: they are in the labelled batches already
    left_out_labelled: int


def unlabelled_images(root: str | os.PathLike, split: Split, options: TrainOptions) -> Unlabelled:
    """The images of ``root`` (:func:`scan_images`) a run may distil on. An image whose first folder is
    named after an identity is that identity's: left out when the identity is excluded (or not included),
    held out for calibration (never trained on) or a training identity (labelled already). Images not in
    such a folder are used as they are: nothing says who they show."""
    held_out, train = set(split.calibration), set(split.train)
    keys, stems, people, labelled = [], [], 0, 0
    for stem, key in sorted(scan_images(root).items()):
        group = stem.split("/", 1)[0] if "/" in stem else None
        if group is not None:
            if (group in options.exclude_people or group in held_out
                    or (options.include_people is not None and group not in options.include_people)):
                people += 1
                continue
            if group in train:
                labelled += 1
                continue
        keys.append(key)
        stems.append(stem)
    if not keys:
        raise TrainingError(f"no unlabelled images to use in {root} (left out: {people} of excluded or held-out "
                            f"people, {labelled} of training identities)")
    return Unlabelled(Path(root), keys, stems, people, labelled)
