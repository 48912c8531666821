"""``facesearch info``: what a gallery holds and how it is set up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from facesearch import index as vindex
from facesearch.errors import FaceSearchError, ModelMismatchError
from facesearch.gallery import thresholds
from facesearch.index import faiss_install

if TYPE_CHECKING:
    from facesearch.gallery.facade import FaceSearch

#: up to this many faces ``info`` compares every id of the store with the vector database's (8 bytes a face
#: each side); above, it compares the counts only and ``reindex --check`` does the full comparison
DRIFT_IDS_MAX = 2_000_000


def device_name(g: "FaceSearch") -> str:
    """Where faces are (or will be) embedded, without importing torch where no GPU can be there."""
    files = g.encoder.files
    if files is not None:
        if files.device == "cpu" or (files.device in (None, "auto") and not vindex.gpu_driver_present()):
            return "cpu"
    try:
        return str(g.device)
    except FaceSearchError as e:  # only a model not loaded yet can get here; info says so, not fails
        return f"{getattr(files, 'device', '?')} (not usable here: {e})"


def identification(g: "FaceSearch", identities: int) -> dict:
    """The 1:N decision at this gallery's size: each stored FPIR target's threshold and how it was obtained
    (measured, interpolated, extrapolated, not measurable), which one ``query`` uses by default; or, for a
    model without an identification curve, the warning that 1:N decisions use the 1:1 threshold."""
    table = g.identification_thresholds(identities)
    if not table:
        return {"available": False, "warning": thresholds.no_curve_warning(g.config)}
    ident = g.config.calibration.identification
    return {"available": True, "gallery_identities": identities, "source": ident.source,
            "default_fpir": next(r["fpir"] for r in table if r["default"]), "thresholds": table}


def describe(g: "FaceSearch") -> dict:
    """What the gallery holds and how it is set up (``facesearch info``)."""
    try:
        idx, index_error = g.index(), None
    except ModelMismatchError as e:  # info still answers, and says what to do
        idx, index_error = None, str(e)
    cfg = g.config
    n_identities = g.store.count_identities()
    where = {"vectors": g.vectors.show()}
    if g.vectors.shared:
        drift = None
        if idx is not None:
            n_store, n_held = g.store.count_faces(), idx.ntotal
            if max(n_store, n_held) <= DRIFT_IDS_MAX:
                d = g.check_index()
                drift = {k: d[k] for k in ("missing", "extra", "stale_in_sample", "in_sync")}
            else:  # counts only: equal counts can still hide drift, which reindex --check finds
                drift = {"missing": max(n_store - n_held, 0), "extra": max(n_held - n_store, 0),
                         "stale_in_sample": 0, "in_sync": n_store == n_held, "ids_compared": False}
        where["drift"] = drift
    else:
        where["file"] = str(g.index_path)
    return {
        "home": str(g.home),
        "database": g.store.engine.url.render_as_string(hide_password=True),
        "schema_revision": g.store.current_revision(),
        "model": {"key": g.model_key, "name": cfg.name, "backbone": cfg.backbone,
                  "embedding_dim": cfg.embedding_dim, "input_size": cfg.input_size,
                  "distance": cfg.distance, "threshold": g.threshold,
                  "operating_points": g.operating_points(),
                  "identification": identification(g, n_identities),
                  "training": {k: v for k, v in cfg.training.to_dict().items() if k != "people"},
                  "quantization": dict(cfg.quantization) if cfg.quantization is not None else None},
        "identities": n_identities,
        "faces": g.store.count_faces(),
        "index": ({"type": idx.factory, "backend": idx.backend, "size": idx.ntotal,
                   "nprobe": getattr(idx, "nprobe", None), **where} if idx is not None
                  else {"error": index_error, **where}),
        "device": device_name(g),
        "detector": g.detector.describe(),
        "faiss": faiss_install.describe(),
    }
