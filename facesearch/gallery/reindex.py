"""Re-embedding a gallery with another model, from the face crops kept in the store.

The new embeddings are staged beside the faces: until the switch the gallery keeps its model and
embeddings, and other processes go on searching and enrolling. What they add meanwhile is picked up by
the next pass; the switch is one transaction, made only when every face has a new embedding. An
interrupted run leaves the gallery as it was, and running it again skips the faces staged already.
Asked for the gallery's own model (how a change in preparing faces is picked up), every face is
embedded again, by this code: what an earlier interrupted run of it staged, perhaps by another
version, is dropped first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from facesearch import detect as fdetect
from facesearch import images
from facesearch.errors import FaceSearchError, InvalidImageError, ModelFileError
from facesearch.gallery.embedding import align_face, model_crop
from facesearch.gallery.results import Failure
from facesearch.model.files import model_key, resolve

if TYPE_CHECKING:
    from facesearch.gallery.facade import FaceSearch

log = logging.getLogger("facesearch")
Progress = Callable[[int], None]


def switch_model(g: "FaceSearch", model: str | os.PathLike, progress: Progress | None,
                 total: Progress | None) -> int:
    """Re-embed every face with ``model`` and make it the gallery's model; returns how many were
    embedded. On any failure the handle keeps its model."""
    from facesearch.model import encoder

    found = resolve(model)
    if found.config.threshold is None:
        raise ModelFileError(f"model {found.directory} has no calibrated threshold")
    net = encoder.load_for_embedding(found.directory, g.device, config=found.config)  # int8: ONNX Runtime
    key = model_key(net.config, net.weights_sha256)  # of the bytes loaded
    rec = g.store.register_model(key, net.config.to_dict(), net.weights_sha256, found.location)
    before = g.encoder.raw, g.model_key, g.model_id
    g.encoder.set(net)
    g.model_key, g.model_id = key, rec.id
    reembedded = 0
    try:
        active = g.store.active_model()
        everything = active is not None and active.id == rec.id
        # stored crops of detected faces are in the geometry of the model that enrolled them, taken to be
        # the gallery's until now (the crops users gave are kept as given, in the LFW pack's geometry)
        given = (active.config or {}).get("alignment") if active is not None else None
        dropped = g.store.unstage_others(rec.id, own_too=everything)
        if dropped:
            log.info("dropped %d embeddings staged by an earlier reindex", dropped)
        while True:
            if total is not None:
                total(g.store.count_pending(rec.id, own_too=everything))
            reembedded += _pass(g, rec.id, progress, everything, given)
            everything = False
            if g.store.switch_model(rec.id) == 0:
                return reembedded
    except BaseException:
        g.encoder.set(before[0])
        g.model_key, g.model_id = before[1], before[2]
        raise


def _crop_of(g: "FaceSearch", source: str, png: bytes | None, found: dict | None, given) -> np.ndarray:
    """The new model's input for a face: its stored crop moved into the new model's geometry (from the
    LFW pack's for a crop the user gave; from ``given``, the 5 x 2 template of the model that aligned
    it, for a detected face); else the face aligned again from its source."""
    if png:
        # a crop the gallery holds already is re-embedded as it is: the input checks are for new images (a
        # gallery enrolled before them may hold a crop they would refuse, and must not lose it here)
        pixels = model_crop(images.decode(png, source, check=False), g.config, g.detector, given if found else None)
    elif found:  # a face detected in a photo: align it again from the recorded landmarks
        pixels = align_face(images.load(source).pixels, fdetect.Face.from_dict(found), g.config)
    else:  # the aligned crop the user gave, still on disk
        pixels = model_crop(images.load(source).pixels, g.config, g.detector)
    return images.prepare(pixels, g.config)


def _pass(g: "FaceSearch", model_id: int, progress: Progress | None, everything: bool = False,
          given=None) -> int:
    """Embed, with the current model, every face with no embedding staged for it that it did not
    embed (``everything``: even if it did), and stage the results; returns how many."""
    done, missing = 0, []
    for chunk in g.store.iter_crops(pending_for=model_id, own_too=everything):
        crops, fids, shas = [], [], {}
        for fid, source, png, found, sha in chunk:
            shas[fid] = sha
            try:
                crops.append(_crop_of(g, source, png, found, given))
                fids.append(fid)
            except InvalidImageError as e:
                missing.append(Failure(source, str(e)))
        if missing:
            break
        g.store.stage_embeddings(model_id, list(zip(fids, g.embed_crops(crops))), shas)
        done += len(fids)
        if progress is not None:
            progress(len(chunk))
    if missing:
        raise FaceSearchError(
            f"cannot re-embed {len(missing)} face(s) (no stored crop and the source is unreadable), "
            f"e.g. {missing[0].source}: {missing[0].reason}. Remove them or restore the files.")
    return done
