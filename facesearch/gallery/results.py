"""What the gallery's calls return: ranked matches, verification, enroll reports. Plain records with
``to_dict()`` for the CLI's ``--json`` (the shapes are part of the public contract)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Match:
    """One enrolled identity: its closest face to the probe. ``match``: accepted as the probe's identity (the
    closest identity, within the threshold; never more than one per probe)."""

    identity: str
    distance: float
    match: bool
    face_id: int
    source: str


#: the rules a 1:N decision can be taken by (``Decision.rule``)
RULES = ("fpir", "far", "threshold", "verification")
#: how sure an FPIR threshold is (``Decision.status``): measured at this gallery size, interpolated between two
#: measured sizes, extrapolated beyond them (the independence rule on the impostor tail), or beyond what the
#: calibration's comparisons can measure (the strictest threshold they measure; FPIR may exceed the target)
STATUSES = ("measured", "interpolated", "extrapolated", "not measurable")


@dataclass
class Decision:
    """Which rule accepted or rejected the closest identity, and with what distance threshold.

    ``rule``: ``"fpir"`` (the model's identification threshold for ``fpir`` at ``gallery_identities``,
    with its ``status``), ``"far"`` (the 1:1 operating point for ``far``), ``"threshold"`` (given by the
    caller), or ``"verification"`` (the model's 1:1 threshold: a model whose calibration has no
    identification curve; ``warning`` says so)."""

    rule: str
    threshold: float
    fpir: float | None = None
    gallery_identities: int | None = None
    status: str | None = None
    far: float | None = None
    warning: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        """A few words for people: ``FPIR 1e-02 at 1200 identities (interpolated)``."""
        if self.rule == "fpir":
            return f"FPIR {self.fpir:g} at {self.gallery_identities} identities, {self.status}"
        if self.rule == "far":
            return f"the 1:1 threshold for FAR {self.far:g}"
        if self.rule == "threshold":
            return "the threshold given"
        return "the model's 1:1 threshold (no identification calibration)"


@dataclass
class QueryResult:
    """Ranked identities for one probe, closest first. ``identity`` is None when nobody matches.
    ``decision``: the rule that decided (:class:`Decision`, as a dict), where the search knew it."""

    matches: list[Match]
    threshold: float
    probe: str = ""
    face: dict | None = None  # with detect: where in the probe the face is (box, score, landmarks)
    decision: dict | None = None

    @property
    def identity(self) -> str | None:
        return self.matches[0].identity if self.matches and self.matches[0].match else None

    def to_dict(self) -> dict:
        out = {"probe": self.probe, "identity": self.identity, "unknown": self.identity is None,
               "threshold": self.threshold, "matches": [asdict(m) for m in self.matches]}
        if self.face is not None:  # only with detect: without it, the JSON is as it always was
            out["face"] = self.face
        if self.decision is not None:
            out["decision"] = dict(self.decision)
        return out


@dataclass
class VerifyResult:
    """``same`` is ``distance <= threshold``."""

    distance: float
    threshold: float
    same: bool
    faces: tuple[dict | None, dict | None] = (None, None)  # with detect: the face used in A and in B

    def to_dict(self) -> dict:
        out = asdict(self)
        if out["faces"] == (None, None):  # only with detect: without it, the JSON is as it always was
            del out["faces"]
        return out


@dataclass
class Failure:
    source: str
    reason: str


@dataclass
class EnrollReport:
    identities: set[str] = field(default_factory=set)
    added: int = 0
    face_ids: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, already enrolled as identity)
    failed: list[Failure] = field(default_factory=list)
    #: with detect: photos enrolled now that held several faces, and how many; their largest face was taken
    several_faces: list[tuple[str, int]] = field(default_factory=list)
    #: skipped files whose content is enrolled as another identity than the one asked for (a mislabelled
    #: or duplicated photo): ``(source, identity asked for, identity that has it)``
    elsewhere: list[tuple[str, str, str]] = field(default_factory=list)
    #: without detect: files enrolled as aligned crops that do not look like ones (a photo given without
    #: ``--detect``): ``(source, why)``
    unlike_crops: list[tuple[str, str]] = field(default_factory=list)
    #: with ``detect_fallback``: photos without a face found, enrolled whole as aligned crops: ``(source, why)``
    fell_back: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"identities": sorted(self.identities), "added": self.added, "skipped": len(self.skipped),
                "failed": len(self.failed), "face_ids": self.face_ids,
                "skipped_files": [{"source": s, "identity": i} for s, i in self.skipped],
                "failures": [asdict(f) for f in self.failures_sorted()],
                "several_faces": [{"source": s, "faces": n} for s, n in sorted(self.several_faces)],
                "enrolled_as_another_identity": [{"source": s, "asked": a, "identity": i}
                                                 for s, a, i in sorted(self.elsewhere)],
                "unlike_aligned_crops": [{"source": s, "why": w} for s, w in sorted(self.unlike_crops)],
                "detect_fallback": [{"source": s, "why": w} for s, w in sorted(self.fell_back)]}

    def failures_sorted(self) -> list[Failure]:
        return sorted(self.failed, key=lambda f: f.source)


def query_entries(probes: list[str], results: list, detect: bool) -> list[dict]:
    """``query --json`` (and the HTTP service's ``/v1/query``): always a list, one entry per probe in the
    order given, each with its ``probe``. A probe that failed is ``{probe, error}``; otherwise its
    :class:`QueryResult` (``identity``, ``unknown``, ``threshold``, ``decision``, ``matches``), or with
    ``detect`` ``{probe, faces: [result with its face, ...]}``, largest face first. ``results`` holds
    QueryResults (with their ``probe``) and Failures (with their ``source``) in any order."""
    by_probe: dict[str, list] = {p: [] for p in probes}
    for r in results:
        by_probe.setdefault(r.source if isinstance(r, Failure) else r.probe, []).append(r)
    out = []
    for probe, rs in by_probe.items():
        bad = next((r for r in rs if isinstance(r, Failure)), None)
        if bad is not None or not rs:
            out.append({"probe": probe, "error": bad.reason if bad is not None else "no result"})
        elif detect:
            out.append({"probe": probe, "faces": [r.to_dict() for r in rs]})
        else:
            out.append(rs[0].to_dict())
    return out
