"""The ``facesearch`` command line: a thin layer over :class:`facesearch.gallery.FaceSearch`.

It parses, calls one library function, and formats; errors from the library become a message and an
exit code (:mod:`facesearch.cli.app`). Each command lives with its kind: :mod:`~facesearch.cli.gallery`
(enroll, query, verify, identities, info, reindex), :mod:`~facesearch.cli.db`,
:mod:`~facesearch.cli.align`, :mod:`~facesearch.cli.train` (train, calibrate),
:mod:`~facesearch.cli.evaluate` and :mod:`~facesearch.cli.serve` (serve, keys).
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

from facesearch import __version__
from facesearch.cli import align as _align
from facesearch.cli import cluster as _cluster
from facesearch.cli import db as _db
from facesearch.cli import gallery as _gallery
from facesearch.cli import model as _model
from facesearch.cli import serve as _serve
from facesearch.cli.app import CONTEXT, App, Group, Output, show_notes
from facesearch.settings import Settings


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="facesearch")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the SQLite database and the index [env FACESEARCH_HOME; default ~/.facesearch].")
@click.option("--db", "db", metavar="URL",
              help="SQLAlchemy URL of another database, e.g. postgresql+psycopg://u@host/db [env FACESEARCH_DB].")
@click.option("--model", metavar="NAME|DIR",
              help="A built-in model (sface, lfw-mobilenet; 'default': sface) or a model directory "
                   "(model.json + weights.pt; write ./NAME for a directory named like a built-in one) "
                   "[env FACESEARCH_MODEL; default: the gallery's model, else the default one].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--index", "index", default="auto", show_default=True, metavar="FACTORY",
              help="Index type: auto (exact, then IVF for large galleries) or a FAISS factory string; "
                   "used when the index is built (`facesearch --index F reindex` rebuilds it).")
@click.option("--backend", type=click.Choice(["auto", "faiss-cpu", "faiss-gpu", "torch-cuda"]), default="auto",
              show_default=True, help="Where the index searches.")
@click.option("--vectors", metavar="URL",
              help="Where the vectors live: pgvector (in the --db PostgreSQL), milvus://HOST:PORT/COLLECTION, "
                   "milvus-lite:///PATH.db [env FACESEARCH_VECTORS; default: the FAISS index file in --home].")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens (index rebuilds, ...).")
@click.pass_context
def cli(ctx, home, db, model, device, index, backend, vectors, verbose):
    """facesearch: face verification and face search on one distance.

    Distances are cosine distances between embeddings, in [0, 2], lower is more similar;
    two faces match when distance <= the model's calibrated threshold.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)  # (basicConfig sets it once)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines are tracebacks of CPU probing
    Output.quiet = False  # a command's own -q sets it, after this
    show_notes()
    settings = Settings.from_env().override(home=home, db_url=db, model=model, vectors=vectors)
    ctx.obj = App(settings, device, index, backend)
    ctx.call_on_close(ctx.obj.close)


for _command in (_gallery.enroll, _gallery.query, _gallery.verify, _align.align, _gallery.identities, _gallery.faces,
                 _gallery.info, _gallery.reindex, _cluster.cluster, _db.db, _model.model, _serve.serve, _serve.keys):
    cli.add_command(_command)


def _register_optional() -> None:
    for mod, name in (("facesearch.cli.train", "train"), ("facesearch.cli.train", "calibrate"),
                      ("facesearch.cli.evaluate", "evaluate")):
        try:
            module = __import__(mod, fromlist=[name])
        except ImportError as e:
            if e.name != mod:
                raise
            continue
        cli.add_command(getattr(module, name))


_register_optional()


def main() -> None:
    import sys

    for stream in (sys.stdout, sys.stderr):  # a name whose bytes are not UTF-8 prints escaped, never a traceback
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    cli(prog_name="facesearch")


if __name__ == "__main__":
    main()
