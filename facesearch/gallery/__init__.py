"""A gallery: the store, the index and one encoder behind :class:`FaceSearch`."""

from facesearch.gallery.facade import FaceSearch  # noqa: F401
