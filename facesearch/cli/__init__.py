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
from facesearch.cli.app import CONTEXT, App, LazyGroup, Output, show_notes
from facesearch.settings import Settings

#: every command: the module of facesearch.cli that holds it and its name there. A module is imported when
#: one of its commands runs (or ``--help`` lists them), so a ``query`` process does not import training's,
#: serving's or evaluation's modules (~50 ms of a one-image query's start-up)
COMMANDS = {
    "enroll": ("gallery", "enroll"), "query": ("gallery", "query"), "verify": ("gallery", "verify"),
    "identities": ("gallery", "identities"), "faces": ("gallery", "faces"), "info": ("gallery", "info"),
    "reindex": ("gallery", "reindex"), "align": ("align", "align"), "cluster": ("cluster", "cluster"),
    "db": ("db", "db"), "model": ("model", "model"), "serve": ("serve", "serve"), "keys": ("serve", "keys"),
    "train": ("train", "train"), "calibrate": ("train", "calibrate"), "evaluate": ("evaluate", "evaluate"),
}
#: modules an installation may leave out (training and evaluation): their commands are listed only where the
#: module is there, as before; any other import error of theirs is raised
OPTIONAL_MODULES = ("train", "evaluate")


@click.group(cls=LazyGroup, context_settings=CONTEXT, lazy_commands=COMMANDS, optional_modules=OPTIONAL_MODULES)
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


def main() -> None:
    import sys

    for stream in (sys.stdout, sys.stderr):  # a name whose bytes are not UTF-8 prints escaped, never a traceback
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        cli(prog_name="facesearch")
    except SystemExit as e:
        code = e.code
    else:
        code = 0
    _exit_without_teardown(code)


def _exit_without_teardown(code) -> None:
    """End the process once the command is done, skipping the interpreter's teardown of every module and
    object: with ONNX Runtime, FAISS and the detector loaded it took ~0.4 s of a one-image query's ~1.5 s
    on this 2-core machine (measured: the same query with and without, in fresh processes taking turns).

    Everything a normal exit does that matters still happens, in its order: the command's own cleanup has
    run (click closes the context: the store's connections), other non-daemon threads are waited for, the
    ``atexit`` handlers run (logging's flush, temporary files), and stdout and stderr are flushed. The code is
    what ``sys.exit`` would give: None is 0, a message is printed to stderr and gives 1."""
    import atexit
    import os
    import sys
    import threading

    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe (`facesearch query ... | head`): nothing left to say
            code = code or 1
    os._exit(code)


if __name__ == "__main__":
    main()
