"""Folders of identities (``ROOT/<identity>/<image>``), read from a directory or a zip file.

The LFW pack is such a folder inside a zip (``lfw-deepfunneled-112/<Name>/<Name>_0001.webp``);
it is read member by member, without extraction.
"""

from __future__ import annotations

import os
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np

from facesearch import images
from facesearch.errors import FaceSearchError


class ImageFolder:
    """Images grouped by identity. ``items[identity]`` lists keys (paths or zip members), sorted."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._zip: zipfile.ZipFile | None = None
        self._lock = threading.Lock()
        if not self.root.exists():
            raise FaceSearchError(f"{self.root}: no such file or directory")
        self.items: dict[str, list[str]] = {}
        if self.root.is_file() and zipfile.is_zipfile(self.root):
            self._zip = zipfile.ZipFile(self.root)
            for name in self._zip.namelist():
                parts = PurePosixPath(name).parts
                if name.endswith("/") or len(parts) < 2 or not images.is_image_name(name):
                    continue
                self.items.setdefault(parts[-2], []).append(name)
        elif self.root.is_dir():
            for sub in sorted(self.root.iterdir()):
                if sub.is_dir() and not sub.name.startswith("."):
                    files = [str(f) for f in sorted(sub.iterdir()) if f.is_file() and not f.name.startswith(".")]
                    if files:
                        self.items[sub.name] = files
        else:
            raise FaceSearchError(f"{self.root}: expected a folder of identities or a zip of one")
        for v in self.items.values():
            v.sort()
        self._by_stem = {PurePosixPath(k).stem: k for v in self.items.values() for k in v}

    def __len__(self) -> int:
        return sum(len(v) for v in self.items.values())

    def identities(self) -> list[str]:
        return sorted(self.items)

    def read(self, key: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(key)
        return images.read_bytes(key)

    def lfw_key(self, name: str, number: int) -> str:
        """The key of LFW image ``<name>_<number:04d>`` (any extension)."""
        try:
            return self._by_stem[f"{name}_{int(number):04d}"]
        except KeyError as e:
            raise FaceSearchError(f"image {name} #{number} not found in {self.root}") from e

    def load_prepared(self, keys: list[str], config, threads: int | None = None, progress=None) -> np.ndarray:
        """Decode and prepare ``keys`` into an N x 3 x S x S uint8 array, decoding in threads."""
        s = config.input_size
        out = np.zeros((len(keys), 3, s, s), np.uint8)

        def work(i: int) -> None:
            with self._lock:  # a ZipFile is not safe across threads; decoding is
                data = self.read(keys[i])
            out[i] = images.prepare(images.decode(data, keys[i]), config)

        with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
            for _ in pool.map(work, range(len(keys))):
                if progress is not None:
                    progress(1)
        return out
