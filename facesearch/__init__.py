"""facesearch: face verification and face search on one distance.

The public API lives in :mod:`facesearch.gallery` (``FaceSearch``); every error class in
:mod:`facesearch.errors`; the CLI
(``facesearch ...``) is a thin layer over it.
"""

__version__ = "0.1.0"

from facesearch.errors import (  # noqa: E402
    DetectorUnavailable,
    FaceSearchError,
    FaceSearchWarning,
    InvalidIdentityError,
    InvalidImageError,
    ModelFileError,
    ModelMismatchError,
    NoFaceError,
    OutdatedModelWarning,
    PairsFileError,
    SchemaError,
    ThresholdError,
    TrainingError,
    UnknownIdentityError,
)


def __getattr__(name):
    # Lazy: importing facesearch must not import torch, faiss or SQLAlchemy.
    if name == "FaceSearch":
        from facesearch.gallery.facade import FaceSearch

        return FaceSearch
    raise AttributeError(name)


__all__ = ["DetectorUnavailable", "FaceSearch", "FaceSearchError", "FaceSearchWarning", "InvalidIdentityError",
           "InvalidImageError", "ModelFileError", "ModelMismatchError", "NoFaceError", "OutdatedModelWarning",
           "PairsFileError", "SchemaError", "ThresholdError",
           "TrainingError", "UnknownIdentityError", "__version__"]
