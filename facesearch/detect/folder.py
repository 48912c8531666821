"""``facesearch align``: a folder of photos, one folder per identity, turned into a folder of aligned crops.

The crops follow a template (where the five landmarks go): a model's own (``facesearch align --model M``
passes it), else the LFW pack's :data:`~facesearch.detect.align.TEMPLATE_112`. With ``realign`` the
sources are aligned crops already (the LFW pack, say) and are aligned again to the template
(:func:`~facesearch.detect.align.realign_or_warp`).

The output folder remembers its geometry in ``OUT/.facesearch-align.json``: a later run that would add
crops of another geometry to it is refused, so a resumed run never mixes two templates.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from facesearch.detect.align import ALIGNED_SIZE, TEMPLATE_112, align, realign_or_warp
from facesearch.detect.base import Detector, faces_or_fail, get_detector
from facesearch.errors import FaceSearchError, InvalidImageError

#: the file in an output folder that records the geometry of its crops (hidden: not an identity)
MANIFEST = ".facesearch-align.json"
#: photos in flight at once: decoded, aligned, encoded and written by this many threads (the detector
#: itself runs one call at a time, under its lock)
WORKERS = 2


@dataclass
class AlignReport:
    """What :func:`align_folder` did: crops written, photos already done, photos it could not use."""

    written: int = 0
    existing: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    several_faces: list[tuple[str, int]] = field(default_factory=list)  # (source, faces found): largest kept
    #: with realign: crops in which no face was found, moved from the LFW pack's mean geometry onto the
    #: template instead (counted in ``written``)
    warped: list[str] = field(default_factory=list)
    realign: bool = False
    size: int = ALIGNED_SIZE
    template: list[list[float]] = field(default_factory=lambda: TEMPLATE_112.tolist())

    def to_dict(self) -> dict:
        d = {"written": self.written, "existing": self.existing, "failed": len(self.failed),
             "failures": [{"source": s, "reason": r} for s, r in sorted(self.failed)],
             "several_faces": [{"source": s, "faces": n} for s, n in sorted(self.several_faces)],
             "size": self.size, "template": [[round(x, 4), round(y, 4)] for x, y in self.template],
             "realign": self.realign}
        if self.realign:
            d["no_face_found_warped"] = len(self.warped)
            d["warped"] = sorted(self.warped)
        return d


def _same_geometry(a: dict, b: dict) -> bool:
    return a.get("size") == b.get("size") and np.allclose(np.asarray(a.get("template"), np.float64),
                                                          np.asarray(b.get("template"), np.float64), atol=1e-3)


def _claim_output(out: Path, geometry: dict) -> None:
    """Create ``out`` (owner-only) and record the crops' geometry in it; refuse a folder whose crops have
    another (its manifest says so, or it has crops and no manifest: those of a facesearch before
    templates, made with TEMPLATE_112)."""
    from facesearch.files import write_private_atomic

    path = out / MANIFEST
    if path.is_file():
        try:
            had = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise FaceSearchError(f"{path} is not readable ({e}); remove it or write to another folder") from e
    elif out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        had = {"size": ALIGNED_SIZE, "template": TEMPLATE_112.tolist(), "model": "the LFW pack's template"}
    else:
        had = None
    if had is not None:
        if not _same_geometry(had, geometry):
            raise FaceSearchError(
                f"{out} holds crops aligned to another template ({had.get('model') or 'unnamed'}, "
                f"{had.get('size')} px) than this run's ({geometry.get('model') or 'unnamed'}, "
                f"{geometry['size']} px): write to another folder, so that no folder mixes two geometries")
        if path.is_file():
            return
    out.mkdir(parents=True, exist_ok=True, mode=0o700)  # mode applies to the last part only
    write_private_atomic(path, json.dumps(geometry, indent=1).encode() + b"\n")


@functools.cache
def _bundled_openmp():
    """yuface's own OpenMP runtime (its wheel bundles a libgomp), or None when it cannot be found."""
    try:
        import ctypes
        import glob
        import os

        import yuface

        libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(yuface.__file__)), "yuface.libs",
                                      "libgomp*.so*"))
        return ctypes.CDLL(libs[0]) if libs else None
    except (ImportError, OSError, AttributeError):
        return None


def _openmp_runtimes() -> list:
    """The OpenMP runtimes yuface's parallel regions may run on: once torch is imported, the process's
    global one (torch loads its libgomp globally, and yuface's calls bind to it: measured, yuface then
    follows ``torch.set_num_threads``), else yuface's bundled one; both, to be sure."""
    import ctypes

    found = []
    try:
        glob_scope = ctypes.CDLL(None)
        glob_scope.omp_set_num_threads  # noqa: B018 - raises AttributeError when no runtime is loaded globally
        found.append(glob_scope)
    except (AttributeError, OSError):
        pass
    bundled = _bundled_openmp()
    if bundled is not None:
        found.append(bundled)
    return found


@contextlib.contextmanager
def one_detector_thread(detector: Detector | None = None):
    """The calling thread's detector calls, inside, run on one core. yuface runs its network on an OpenMP
    team of one thread per core, and on a machine whose cores are busy the team waits for them: measured
    15-28 ms per 224 px crop with one thread against 240-470 ms with two (2-core machine, load 6; and 17.6
    against 89 ms at load 4 with torch imported). One detector call runs at a time anyway (under yuface's
    lock), so photos are worked on in parallel instead (:data:`WORKERS`), and enroll embeds on the other
    core meanwhile. OpenMP's thread count belongs to the calling thread and is restored on leaving, so
    torch's own count in this thread is as it was. Other detectors are left as they are."""
    if getattr(detector or get_detector(), "name", None) != "yuface":
        yield
        return
    runtimes = _openmp_runtimes()
    before = [rt.omp_get_max_threads() for rt in runtimes]
    for rt in runtimes:
        rt.omp_set_num_threads(1)
    try:
        yield
    finally:
        for rt, n in zip(runtimes, before):
            rt.omp_set_num_threads(n)


def align_folder(src, out, progress=None, total=None, detector: Detector | None = None,
                 template: np.ndarray | None = None, size: int = ALIGNED_SIZE, realign: bool = False,
                 label: str | None = None, workers: int = WORKERS) -> AlignReport:
    """Write the aligned crop (``size`` px PNG) of the largest face of every photo in ``src/<identity>/``
    (a folder or a zip of one) to ``out/<identity>/<photo name>.png``: a folder of identities that
    ``facesearch train``, ``calibrate`` and ``evaluate`` read as they read the LFW pack.

    ``template`` (5 x 2, pixels of a ``size`` crop; default :data:`TEMPLATE_112` at 112) is where the
    landmarks go: a model's own (:func:`~facesearch.detect.align.crop_geometry`), so the crops are those
    ``--detect`` gives that model. ``realign``: the sources are aligned crops already; each is aligned
    again to ``template`` (the face nearest its centre, found on the crop upscaled), or, when no face is
    found there, moved from the LFW pack's mean geometry onto it (listed in ``warped``). ``label`` names the template in ``out``'s manifest
    and its messages (the model's name).

    Identity names are checked as enroll checks them (no path separators, no leading dot); folders and
    files are created owner-only; a crop already there is kept, so a second run only adds new photos (and an
    interrupted one carries on), and a folder holding crops of another geometry is refused
    (FaceSearchError). ``progress(n)`` is called as photos are done, ``total(n)`` once with their number;
    ``detector``: the one :func:`~facesearch.detect.get_detector` gives unless another is passed."""
    from facesearch import images
    from facesearch.datasets import ImageFolder
    from facesearch.errors import InvalidIdentityError
    from facesearch.files import write_private_atomic
    from facesearch.names import validate_identity

    template = TEMPLATE_112 if template is None else np.asarray(template, np.float64)
    if template.shape != (5, 2) or size < 16:
        raise FaceSearchError("an alignment template gives the five landmarks' (x, y), in pixels of a crop of at "
                              "least 16 px")
    detector = detector or get_detector()
    detector.require()
    folder, out = ImageFolder(src), Path(out)
    report = AlignReport(realign=realign, size=int(size), template=template.tolist())
    _claim_output(out, {"size": int(size), "template": template.tolist(), "model": label, "realign": realign})
    # sub-folders, files outside identity folders: listed, as enroll does
    report.failed.extend((k, why.replace("not enrolled", "left out")) for k, why in folder.ignored)
    if total is not None:
        total(len(folder))

    def one(key: str, dest: Path):
        """One photo to its crop file: (outcome, detail); outcome written / warped / failed."""
        try:
            pixels = images.decode(folder.read(key), key)
            faces = 1
            if realign:
                with one_detector_thread(detector):
                    crop, found = realign_or_warp(pixels, template, size, detector)
            else:
                with one_detector_thread(detector):
                    found_faces = faces_or_fail(pixels, key, detector)
                faces, found = len(found_faces), True
                crop = align(pixels, found_faces[0], size=size, template=template, template_size=size)
            buf = io.BytesIO()
            Image.fromarray(crop).save(buf, format="PNG")
            write_private_atomic(dest, buf.getvalue())
            return ("written" if found else "warped"), faces
        except InvalidImageError as e:
            return "failed", e.reason
        except OSError as e:
            return "failed", f"cannot write the crop: {e.strerror or e}"

    def todo():
        """The photos still to align, as (key, dest); the rest reported here."""
        for ident in folder.identities():
            keys = folder.items[ident]
            try:
                validate_identity(ident)
            except InvalidIdentityError as e:
                report.failed.extend((k, str(e)) for k in keys)
                if progress:
                    progress(len(keys))
                continue
            taken: set[str] = set()
            made = False
            for key in keys:
                name = f"{Path(key).stem}.png"
                dest = out / ident / name
                if name in taken:
                    report.failed.append((key, f"another photo of {ident} is named {Path(key).stem} too"))
                elif dest.exists():
                    report.existing += 1
                else:
                    if not made:
                        dest.parent.mkdir(exist_ok=True, mode=0o700)
                        made = True
                    taken.add(name)
                    yield key, dest
                    continue
                taken.add(name)
                if progress:
                    progress(1)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: list = []
        for key, dest in todo():
            pending.append((key, pool.submit(one, key, dest)))
            if len(pending) >= 8 * max(1, workers):  # a bounded number in flight, done in order
                _collect(pending.pop(0), report, progress)
        for item in pending:
            _collect(item, report, progress)
    return report


def _collect(item, report: AlignReport, progress) -> None:
    key, future = item
    outcome, detail = future.result()
    if outcome == "failed":
        report.failed.append((key, detail))
    else:
        report.written += 1
        if outcome == "warped":
            report.warped.append(key)
        elif detail > 1:
            report.several_faces.append((key, detail))
    if progress:
        progress(1)
