"""Which model a gallery handle embeds with, decided when the gallery is opened.

A gallery records the models that embedded it; the active one is its model. A model new to the
gallery is loaded before it is recorded or made active, so damaged weights or an unusable device leave
nothing behind; the gallery's own model is loaded when a face is first embedded (commands that embed
nothing never import torch).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from facesearch import index as vindex
from facesearch.errors import FaceSearchError, ModelFileError, ModelMismatchError, OutdatedModelWarning
from facesearch.gallery.embedding import ModelFiles, onnx_beside
from facesearch.gallery.index_cache import replaced_in_place
from facesearch.model import onnx_runtime
from facesearch.model.onnx_runtime import RUNTIMES
from facesearch.model.files import DEFAULT_MODEL, DEFAULT_SPEC, LEGACY_LOCATIONS, model_key, resolve, stored_location

if TYPE_CHECKING:
    from facesearch.model import encoder
    from facesearch.store import Store

#: device names a gallery accepts (checked at open, without torch; whether it is usable, at loading)
_DEVICE = re.compile(r"auto|cpu|(cuda|mps|xpu)(:\d+)?")


def check_device(device: str | None) -> None:
    if device is not None and not _DEVICE.fullmatch(str(device)):
        raise FaceSearchError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")


def make_home(home: Path) -> Path:
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise FaceSearchError(f"cannot use {home} as the facesearch home: {e.strerror or e}") from None
    return home


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise FaceSearchError(f"unknown runtime {runtime!r}: use {', '.join(RUNTIMES)}")


def choose_model(store: "Store", model: str | os.PathLike | None, device: str | None, strict: bool,
                 index: str, runtime: str = "auto") -> tuple["encoder.Encoder | ModelFiles", str, int]:
    """The handle's model (loaded, or its files), its key and its id in the store; records it and makes
    it active where the gallery has no faces of another model. ``runtime``: what embeds, ``auto`` (ONNX
    Runtime where it can, else torch), ``onnx`` or ``torch`` (:class:`ModelFiles`)."""
    check_runtime(runtime)
    active = store.active_model()
    found = resolve(model if model is not None else stored_location(active.location) if active is not None
                    else DEFAULT_SPEC)
    if model is None and active is not None and active.location in LEGACY_LOCATIONS:
        warnings.warn(
            f"this gallery is embedded by {found.location.split(':', 1)[1]}, the built-in model before "
            f"{DEFAULT_MODEL} became the default ({DEFAULT_MODEL} is far more accurate on people it never saw: "
            "README, 'The built-in models'). It keeps working as it is; `facesearch reindex --model default` "
            "re-embeds it with the new default.", OutdatedModelWarning, stacklevel=2)
    location, directory, config = found.location, found.directory, found.config
    if config.threshold is None:
        raise ModelFileError(f"model {directory} has no calibrated threshold; train or calibrate it first")
    vindex.check_factory(index, config.embedding_dim)
    net: "encoder.Encoder | ModelFiles" = ModelFiles(config, directory, device, runtime)
    sha = found.sha256
    key = model_key(config, sha)
    has_faces = store.count_faces() > 0
    if config.int8 and (active is None or active.key != key):
        # no torch path to load it through: check now that ONNX Runtime embeds it, as it will every face
        if runtime == "torch" or not net.on_cpu() or onnx_runtime.load(directory, config, key) is None:
            why = ("--runtime torch" if runtime == "torch" else "the device is not the CPU" if not net.on_cpu()
                   else onnx_runtime.why_not(directory, config))
            raise ModelFileError(f"{directory} is an int8 model ({config.name}), which embeds through ONNX Runtime "
                                 f"on the CPU only: {why}")
    elif active is None or (model is not None and active.key != key and not (strict and has_faces)):
        files, net = net, net.load()
        sha = net.weights_sha256  # of the bytes loaded
        key = model_key(config, sha)
        if onnx_beside(files, net):  # ONNX Runtime embeds for this handle too, as for every later one
            net = files
    if active is not None and active.key != key and strict and has_faces:
        if model is None:  # the gallery's own model directory holds other weights now
            if not config.int8:
                net.load()  # damaged? then that is the error, not "replaced in place"
            raise ModelMismatchError(replaced_in_place(active.key, location, key))
        raise ModelMismatchError(
            f"this gallery was embedded by model {active.key}, not {key}: embeddings of different "
            f"models cannot be compared. Run `facesearch reindex --model {model}` to re-embed the gallery "
            "with the new model, or leave --model out to use the gallery's model.")
    rec = store.register_model(key, config.to_dict(), sha, location)
    if active is None or (active.key != key and not has_faces):
        store.set_active_model(rec.id)
    return net, key, rec.id
