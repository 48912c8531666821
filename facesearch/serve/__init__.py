"""``facesearch serve``: the gallery over HTTP, with a web page (:mod:`facesearch.serve.app`).

One process holds one :class:`~facesearch.gallery.facade.FaceSearch` (the model and the index loaded
once) and serves many clients: uploads are decoded in a thread pool, the face crops of requests that
arrive together are embedded in one forward pass (:mod:`~facesearch.serve.batching`), FAISS and SQL run
off the event loop, and writes go through the store's transactions as on the command line.
"""

from facesearch.serve.service import ServeConfig, Service

__all__ = ["ServeConfig", "Service", "create_app"]


def create_app(service: Service):
    """The ASGI app (imports FastAPI: ``pip install facesearch[serve]``)."""
    from facesearch.serve.app import create_app as make

    return make(service)
