"""Folders of identities (``ROOT/<identity>/<image>``), read from a directory or a zip file.

The LFW pack is such a folder inside a zip (``lfw-deepfunneled-112/<Name>/<Name>_0001.webp``);
it is read member by member, without extraction.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np

from facesearch import images
from facesearch.errors import FaceSearchError
from facesearch.files import write_private_atomic
from facesearch.names import has_surrogates, printable


class ImageFolder:
    """Images grouped by identity. ``items[identity]`` lists keys (paths or zip members), sorted."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._zip: zipfile.ZipFile | None = None
        self._lock = threading.Lock()
        if not self.root.exists():
            raise FaceSearchError(f"{self.root}: no such file or directory")
        self.items: dict[str, list[str]] = {}
        #: ``(path or member, why)`` for files left out that a user may have meant to include: files in
        #: sub-folders of an identity folder, links to nothing (hidden files are left out silently)
        self.ignored: list[tuple[str, str]] = []
        if self.root.is_file() and zipfile.is_zipfile(self.root):
            self._zip = zipfile.ZipFile(self.root)
            members = [PurePosixPath(n).parts for n in self._zip.namelist()
                       if not n.endswith("/") and not n.startswith("__MACOSX/") and images.is_image_name(n)]
            # the zip of a folder holds that folder (``people/<identity>/...``, like the LFW pack), or
            # only its contents (``<identity>/...``). One top-level folder with folders in it is the
            # root, read as a folder on disk is; one with only files is an identity
            skip = 0
            if members and len({p[0] for p in members}) == 1 and any(len(p) >= 3 for p in members):
                skip = 1
            for parts in members:
                rel = parts[skip:]
                name = "/".join(parts)
                if any(x.startswith(".") for x in rel):
                    continue
                if len(rel) < 2:
                    self.ignored.append((name, "not in an identity folder: not enrolled"))
                    continue
                if len(rel) > 2:
                    self.ignored.append((name, "in a sub-folder of an identity folder: not enrolled"))
                    continue
                self.items.setdefault(rel[0], []).append(name)
        elif self.root.is_dir():
            self._list_dir()
        elif self.root.suffix.lower() == ".zip":
            raise FaceSearchError(f"{self.root}: not a readable zip file (damaged or cut short?)")
        else:
            raise FaceSearchError(f"{self.root}: expected a folder of identities or a zip of one")
        for v in self.items.values():
            v.sort()
        self._by_stem = {PurePosixPath(k).stem: k for v in self.items.values() for k in v}

    def _list_dir(self) -> None:
        """``root/<identity>/<files>`` on disk. Names are what the OS gives (``os.fsdecode``): one whose
        bytes are not UTF-8 is reported, not enrolled, and so is a folder or file that cannot be read;
        neither stops the rest."""
        try:
            subs = sorted(self.root.iterdir())
        except OSError as e:
            raise FaceSearchError(f"{printable(str(self.root))}: cannot list the folder: {e.strerror or e}") from None
        for sub in subs:
            if sub.name.startswith("."):
                continue
            shown = printable(str(sub))
            try:
                is_dir = sub.is_dir()
            except OSError as e:
                self.ignored.append((shown, f"cannot read it: {e.strerror or e}"))
                continue
            if not is_dir:
                if images.is_image_name(sub.name):
                    self.ignored.append((shown, "not in an identity folder: not enrolled"))
                continue
            try:
                entries = sorted(sub.iterdir())
            except OSError as e:
                self.ignored.append((shown, f"cannot read the identity folder: {e.strerror or e}"))
                continue
            bad_name = has_surrogates(sub.name)
            files = []
            for f in entries:
                if f.name.startswith("."):
                    continue
                if f.is_file():
                    if bad_name:
                        self.ignored.append((printable(str(f)), "the identity folder's name is not valid UTF-8 text "
                                                                "(bytes in another encoding?); rename the folder"))
                    elif has_surrogates(f.name):
                        self.ignored.append((printable(str(f)), "the file name is not valid UTF-8 text (bytes in "
                                                                "another encoding?); rename the file"))
                    else:
                        files.append(str(f))
                elif f.is_dir():
                    self.ignored.append((printable(str(f)), "a sub-folder of an identity folder: not enrolled"))
                else:
                    self.ignored.append((printable(str(f)), "not a regular file (a link to nothing?)"))
            if files:
                self.items[sub.name] = files

    def __len__(self) -> int:
        return sum(len(v) for v in self.items.values())

    def identities(self) -> list[str]:
        return sorted(self.items)

    def read(self, key: str) -> bytes:
        if self._zip is not None:
            info = self._zip.getinfo(key)
            if info.file_size > images.MAX_FILE_BYTES:
                raise images.InvalidImageError(
                    key, f"file too large ({info.file_size} bytes, limit {images.MAX_FILE_BYTES})")
            try:
                return self._zip.read(info)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
                # a damaged, encrypted or oddly compressed member: that file fails, not the whole folder
                raise images.InvalidImageError(key, f"cannot read it from the zip ({e})") from e
        return images.read_bytes(key)

    def lfw_key(self, name: str, number: int) -> str:
        """The key of LFW image ``<name>_<number:04d>`` (any extension)."""
        try:
            return self._by_stem[f"{name}_{int(number):04d}"]
        except KeyError as e:
            raise FaceSearchError(f"image {name} #{number} not found in {self.root}") from e

    def load_prepared(self, keys: list[str], config, threads: int | None = None, progress=None,
                      cache: str | os.PathLike | None = None, transform=None) -> np.ndarray:
        """Decode and prepare ``keys`` into an N x 3 x S x S uint8 array, decoding in threads.

        ``transform``: a function applied to each decoded image (H x W x 3 uint8) before it is prepared,
        e.g. aligning it again to a model's own template (not with ``cache``).

        With ``cache`` (a directory), every image of the folder is decoded once for this preprocessing
        and kept there as one ``.npy`` file (owner-only); later calls, also from other processes, read
        their rows from it instead of decoding. The file is named after the data (its path, size and
        modification time; for a directory, every image's) and the preprocessing, so a changed data set
        or input size gets a new file.
        """
        if cache is not None:
            if transform is not None:
                raise ValueError("a transform cannot be cached")
            return self._from_cache(Path(cache), keys, config, threads, progress)
        s = config.input_size
        out = np.zeros((len(keys), 3, s, s), np.uint8)

        def work(i: int) -> None:
            with self._lock:  # a ZipFile is not safe across threads; decoding is
                data = self.read(keys[i])
            pixels = images.decode(data, keys[i], check=False)  # a data set is taken as it is
            out[i] = images.prepare(pixels if transform is None else transform(pixels), config)

        with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
            for _ in pool.map(work, range(len(keys))):
                if progress is not None:
                    progress(1)
        return out

    # ------------------------------------------------------------------ decoded-pixel cache

    def cache_path(self, cache_dir: str | os.PathLike, config) -> Path:
        st = self.root.stat()
        files = hashlib.sha256()
        if self._zip is None:  # a directory: every image's size and modification time
            for name in self.identities():
                for key in self.items[name]:
                    fs = os.stat(key)
                    files.update(f"{key}\0{fs.st_size}\0{fs.st_mtime_ns}\n".encode())
        ident = json.dumps({"root": str(self.root.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                            "files": files.hexdigest(), "images": len(self), "input_size": config.input_size,
                            "crop_fraction": config.crop_fraction, "format": 1}, sort_keys=True)
        digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
        return Path(cache_dir) / f"{self.root.stem}-{config.input_size}px-{digest}.npy"

    def _from_cache(self, cache_dir: Path, keys: list[str], config, threads, progress) -> np.ndarray:
        all_keys = [k for name in self.identities() for k in self.items[name]]
        row = {k: i for i, k in enumerate(all_keys)}
        try:
            rows = np.fromiter((row[k] for k in keys), np.int64, len(keys))
        except KeyError as e:
            raise FaceSearchError(f"{e.args[0]} is not an image of {self.root}") from e
        path = self.cache_path(cache_dir, config)
        shape = (len(all_keys), 3, config.input_size, config.input_size)
        arr = None
        if path.is_file():
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):
                arr = None
            if arr is not None and (arr.shape != shape or arr.dtype != np.uint8):
                arr = None  # not ours (or truncated): rebuild it
        if arr is None:  # decode the whole folder (a caller's progress counts its own keys only)
            whole = progress if len(keys) == len(all_keys) else None
            pixels = self.load_prepared(all_keys, config, threads=threads, progress=whole)
            if progress is not None and whole is None:
                progress(len(keys))
            cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # atomic, owner-only, a temp name per writer: readers see the old file or the whole new one
            write_private_atomic(path, lambda f: np.save(f, pixels, allow_pickle=False))
            return pixels[rows]
        out = np.asarray(arr[rows])
        if progress is not None:
            progress(len(keys))
        return out
