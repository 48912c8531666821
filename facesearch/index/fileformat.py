"""The index file: a header (magic, length, JSON stamp with the payload's size and SHA-256), then the
index's own payload. Written atomically and owner-only; read back only when its stamp matches the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

from facesearch.files import write_private_atomic
from facesearch.index.backends import REGISTRY
from facesearch.index.base import Stamp, StaleIndex, VectorIndex

MAGIC = b"FACESEARCH-INDEX\n"
FORMAT = 1


def save(index: VectorIndex, path: str | os.PathLike, stamp: Stamp) -> None:
    """Write index + stamp atomically, owner-only; a checksum guards the payload.

    The payload is streamed twice (once to hash it for the header, once into the file) rather than
    held in memory: at 1M faces a serialised copy would be as big as the index itself."""
    digest, size = hashlib.sha256(), 0

    def hash_chunk(b):
        nonlocal size
        digest.update(b)
        size += len(b)

    index.write_payload(hash_chunk)
    header = dict(stamp.__dict__, format=FORMAT, sha256=digest.hexdigest(), size=size)
    hb = json.dumps(header, sort_keys=True).encode()
    written = hashlib.sha256()

    def body(f):
        f.write(MAGIC + struct.pack("<I", len(hb)) + hb)

        def write(b):
            written.update(b)
            f.write(b)

        index.write_payload(write)
        if written.hexdigest() != header["sha256"]:  # the index changed between the two passes
            raise RuntimeError("index changed while it was being saved")

    write_private_atomic(Path(path), body)


def _read_header(f, path) -> tuple[Stamp, dict]:
    """The stamp and header at the start of open file ``f``; leaves ``f`` at the payload."""
    head = f.read(len(MAGIC) + 4)
    if len(head) < len(MAGIC) + 4 or not head.startswith(MAGIC):
        raise StaleIndex(f"{path} is not a facesearch index file")
    (hl,) = struct.unpack("<I", head[len(MAGIC):])
    try:
        header = json.loads(f.read(hl))
        stamp = Stamp(**{k: header[k] for k in Stamp.__dataclass_fields__})
    except KeyError as e:
        raise StaleIndex(f"{path} has no {e.args[0]} in its header (an older facesearch wrote it)") from e
    except (ValueError, TypeError) as e:
        raise StaleIndex(f"{path} has a damaged header") from e
    return stamp, header


def read_stamp(path: str | os.PathLike) -> tuple[Stamp, dict]:
    with open(path, "rb") as f:
        return _read_header(f, path)


def load(path: str | os.PathLike, expect: Stamp, backend: str) -> VectorIndex:
    """Load an index file whose stamp must equal ``expect`` (model, revision, size...); else StaleIndex."""
    path = Path(path)
    # one open file for the header and both passes over the payload: a writer replaces the file by
    # rename, so all three read the same bytes. First the checksum, in 1 MiB pieces, then (only if it
    # matches) the index straight from the file: no copy of the payload is held besides the index.
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise StaleIndex("no index file") from None
    with f:
        stamp, header = _read_header(f, path)
        if header.get("format") != FORMAT:
            raise StaleIndex("index file format differs")
        for field in ("model_key", "change_id", "revision", "ntotal", "dim"):
            if getattr(stamp, field) != getattr(expect, field):
                raise StaleIndex(f"index {field} is {getattr(stamp, field)!r}, store has {getattr(expect, field)!r}")
        built_by = REGISTRY.get(stamp.backend)
        if built_by is None:
            raise StaleIndex(f"index was built for {stamp.backend!r}, a backend this facesearch does not know")
        if not built_by.loads_on(backend):
            raise StaleIndex(f"index was built for {stamp.backend}")
        off = f.tell()
        digest, size = hashlib.sha256(), 0
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        if size != header.get("size") or digest.hexdigest() != header.get("sha256"):
            raise StaleIndex("index file is truncated or corrupt (checksum mismatch)")
        f.seek(off)
        try:
            index = built_by.read(f.read, stamp, backend)
        except StaleIndex:
            raise
        except Exception as e:
            raise StaleIndex(f"index file cannot be read: {e}") from e
    if index.ntotal != expect.ntotal:
        raise StaleIndex("index size differs from its stamp")
    return index
