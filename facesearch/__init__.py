"""facesearch: face verification and face search on one distance.

The public API lives in :mod:`facesearch.gallery` (``FaceSearch``); the CLI
(``facesearch ...``) is a thin layer over it.
"""

__version__ = "0.1.0"

from facesearch.errors import (  # noqa: E402
    FaceSearchError,
    InvalidIdentityError,
    InvalidImageError,
    ModelFileError,
    ModelMismatchError,
    SchemaError,
    ThresholdError,
    UnknownIdentityError,
)


def __getattr__(name):
    # Lazy: importing facesearch must not import torch, faiss or SQLAlchemy.
    if name == "FaceSearch":
        from facesearch.gallery.facade import FaceSearch

        return FaceSearch
    raise AttributeError(name)


__all__ = ["FaceSearch", "FaceSearchError", "InvalidIdentityError", "InvalidImageError", "ModelFileError",
           "ModelMismatchError", "SchemaError", "ThresholdError", "UnknownIdentityError", "__version__"]
