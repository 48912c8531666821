"""``facesearch align``: a folder of photos, one folder per identity, turned into a folder of aligned crops."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image

from facesearch.detect.align import align
from facesearch.detect.base import Detector, faces_or_fail, get_detector
from facesearch.errors import InvalidImageError


@dataclass
class AlignReport:
    """What :func:`align_folder` did: crops written, photos already done, photos it could not use."""

    written: int = 0
    existing: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    several_faces: list[tuple[str, int]] = field(default_factory=list)  # (source, faces found): largest kept

    def to_dict(self) -> dict:
        return {"written": self.written, "existing": self.existing, "failed": len(self.failed),
                "failures": [{"source": s, "reason": r} for s, r in sorted(self.failed)],
                "several_faces": [{"source": s, "faces": n} for s, n in sorted(self.several_faces)]}


def align_folder(src, out, progress=None, total=None, detector: Detector | None = None) -> AlignReport:
    """Write the aligned crop (112 px PNG, the LFW pack's geometry) of the largest face of every photo in
    ``src/<identity>/`` (a folder or a zip of one) to ``out/<identity>/<photo name>.png``: a folder of
    identities that ``facesearch train``, ``calibrate`` and ``evaluate`` read as they read the LFW pack.
    Identity names are checked as enroll checks them (no path separators, no leading dot); folders and
    files are created owner-only; a crop already there is kept, so a second run only adds new photos.
    ``progress(n)`` is called as photos are done, ``total(n)`` once with their number; ``detector``: the one
    :func:`~facesearch.detect.get_detector` gives unless another is passed."""
    from pathlib import Path

    from facesearch import images
    from facesearch.datasets import ImageFolder
    from facesearch.errors import InvalidIdentityError
    from facesearch.files import write_private_atomic
    from facesearch.names import validate_identity

    detector = detector or get_detector()
    detector.require()
    folder, out, report = ImageFolder(src), Path(out), AlignReport()
    # sub-folders, files outside identity folders: listed, as enroll does
    report.failed.extend((k, why.replace("not enrolled", "left out")) for k, why in folder.ignored)
    if total is not None:
        total(len(folder))
    for ident in folder.identities():
        try:
            validate_identity(ident)
        except InvalidIdentityError as e:
            report.failed.extend((k, str(e)) for k in folder.items[ident])
            if progress:
                progress(len(folder.items[ident]))
            continue
        taken: set[str] = set()
        for key in folder.items[ident]:
            name = f"{Path(key).stem}.png"
            dest = out / ident / name
            try:
                if name in taken:
                    raise InvalidImageError(f"another photo of {ident} is named {Path(key).stem} too")
                taken.add(name)
                if dest.exists():
                    report.existing += 1
                    continue
                pixels = images.decode(folder.read(key), key)
                faces = faces_or_fail(pixels, key, detector)
                if len(faces) > 1:
                    report.several_faces.append((key, len(faces)))
                buf = io.BytesIO()
                Image.fromarray(align(pixels, faces[0])).save(buf, format="PNG")
                out.mkdir(parents=True, exist_ok=True, mode=0o700)  # mode applies to the last part only
                dest.parent.mkdir(exist_ok=True, mode=0o700)
                write_private_atomic(dest, buf.getvalue())
                report.written += 1
            except InvalidImageError as e:
                report.failed.append((key, e.reason))
            except OSError as e:
                report.failed.append((key, f"cannot write the crop: {e.strerror or e}"))
            finally:
                if progress:
                    progress(1)
    return report
