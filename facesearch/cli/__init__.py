"""The ``facesearch`` command line: a thin layer over :class:`facesearch.gallery.FaceSearch`.

It parses, calls one library function, and formats; errors from the library become a
message and exit code 1 (usage errors: 2).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from facesearch import __version__, images
from facesearch.errors import FaceSearchError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """Turns library errors into clear messages instead of tracebacks."""

    def invoke(self, ctx):
        from sqlalchemy.exc import DBAPIError

        try:
            return super().invoke(ctx)
        except FaceSearchError as e:
            raise click.ClickException(str(e)) from e
        except DBAPIError as e:  # e.g. a database locked past the busy timeout, a full disk, a lost server
            logging.getLogger("facesearch").info("database error", exc_info=True)
            why = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
            raise click.ClickException(f"database error: {why}") from e
        except BrokenPipeError:  # the reader went away (``| head``): click exits quietly, as other tools do
            raise
        except OSError as e:
            logging.getLogger("facesearch").info("system error", exc_info=True)
            where = f": {e.filename}" if e.filename else ""
            raise click.ClickException(f"{e.strerror or e}{where}") from e


class App:
    """What the group puts on ``ctx.obj``: options, and the gallery opened on first use."""

    def __init__(self, home, db, model, device, index, backend):
        self.home, self.db, self.model, self.device, self.index, self.backend = home, db, model, device, index, backend
        self._fs = None

    def open(self, strict: bool = True, detect: bool = False):
        if self._fs is None:
            from facesearch.gallery.facade import FaceSearch

            self._fs = FaceSearch.open(home=self.home, db_url=self.db, model=self.model, device=self.device,
                                       index=self.index, backend=self.backend, strict=strict, detect=detect)
        return self._fs

    def close(self):
        if self._fs is not None:
            self._fs.close()


def _progress(total: int | None, desc: str, unit: str = "img", disable: bool | None = None):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True)


def _detect_option(f):
    return click.option("--detect", is_flag=True,
                        help="The images are photos: find the faces and align them first (needs "
                             "facesearch[detect]). Without it, images must be aligned face crops.")(f)


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="facesearch")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="FACESEARCH_HOME",
              help="Folder for the SQLite database and the index [env FACESEARCH_HOME; default ~/.facesearch].")
@click.option("--db", "db", envvar="FACESEARCH_DB", metavar="URL",
              help="SQLAlchemy URL of another database, e.g. postgresql+psycopg://u@host/db [env FACESEARCH_DB].")
@click.option("--model", type=click.Path(file_okay=False, exists=True, path_type=Path), envvar="FACESEARCH_MODEL",
              help="Model directory (model.json + weights.pt) [default: the gallery's model, else the built-in one].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--index", "index", default="auto", show_default=True, metavar="FACTORY",
              help="Index type: auto (exact, then IVF for large galleries) or a FAISS factory string; "
                   "used when the index is built (`facesearch --index F reindex` rebuilds it).")
@click.option("--backend", type=click.Choice(["auto", "faiss-cpu", "faiss-gpu", "torch-cuda"]), default="auto",
              show_default=True, help="Where the index searches.")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens (index rebuilds, ...).")
@click.pass_context
def cli(ctx, home, db, model, device, index, backend, verbose):
    """facesearch: face verification and face search on one distance.

    Distances are cosine distances between embeddings, in [0, 2], lower is more similar;
    two faces match when distance <= the model's calibrated threshold.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s: %(message)s")
    ctx.obj = App(home, db, model, device, index, backend)
    ctx.call_on_close(ctx.obj.close)


# ---- enroll ----------------------------------------------------------------------------------
@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--identity", "-i", metavar="NAME", help="Enroll the given image FILES as this identity.")
@_detect_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def enroll(app: App, paths, identity, detect, as_json):
    """Enroll faces.

    \b
    facesearch enroll DIR                   DIR/<identity>/<image files> (or a zip of that)
    facesearch enroll -i NAME FILE...       files of one identity
    facesearch enroll --detect DIR          photos: the largest face of each is found and enrolled

    Content enrolled before is skipped; a bad file is reported and never stops the rest.
    """
    if identity is None:
        if len(paths) != 1:
            raise click.UsageError("give one folder of identities, or --identity NAME with image files")
        root = paths[0]
        if not root.exists():
            raise click.BadParameter(f"{root} does not exist", param_hint="DIR")
        fs = app.open(detect=detect)
        with _progress(None, "enroll") as bar:
            report = fs.enroll_folder(root, progress=bar.update, total=lambda n: setattr(bar, "total", n))
    else:
        for p in paths:
            if p.is_dir():
                raise click.BadParameter(f"{p} is a folder; with --identity give image files", param_hint="FILE")
        fs = app.open(detect=detect)
        with _progress(len(paths), f"enroll {identity}") as bar:
            report = fs.enroll_files(identity, paths, progress=bar.update)
    if as_json:
        _echo_json(report.to_dict())
    else:
        click.echo(f"identities: {len(report.identities)}  added: {report.added}  "
                   f"skipped (already enrolled): {len(report.skipped)}  failed: {len(report.failed)}")
        _echo_problems([(f.source, f.reason) for f in report.failures_sorted()], len(report.several_faces),
                       "enrolled")
        if report.elsewhere:
            click.echo(f"{len(report.elsewhere)} file(s) are enrolled already as another identity, and were "
                       "not added to the one asked for:")
            for source, asked, has in sorted(report.elsewhere)[:20]:
                click.echo(f"  {source}: asked {asked}, enrolled as {has}")
            if len(report.elsewhere) > 20:
                click.echo(f"  ... and {len(report.elsewhere) - 20} more (--json lists them all)")
    if report.failed:  # 1: nothing could be enrolled; 3: the rest was, these files were not
        sys.exit(1 if not report.added and not report.skipped else 3)


def _echo_problems(failures: list[tuple[str, str]], several_faces: int, taken: str) -> None:
    """After an enroll or align summary: each failed file with its reason, and how many photos held
    several faces (of which the largest was ``taken``)."""
    for source, reason in failures:
        click.echo(f"  failed: {source}: {reason}", err=True)
    if several_faces:
        click.echo(f"  {several_faces} photo(s) held several faces; the largest face of each was {taken} "
                   "(--json lists them)", err=True)


# ---- query -----------------------------------------------------------------------------------
def _probe_files(paths) -> list[Path]:
    files = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and images.is_image_name(f)))
        else:
            files.append(p)
    return files


def _threshold_options(f):
    """--threshold / --far for the commands that decide match or not."""
    f = click.option("--far", type=click.FloatRange(0, 1, min_open=True), default=None,
                     help="Decide with the model's stored threshold for this false accept rate (e.g. 1e-3: "
                          "stricter, for searching many people) instead of its balanced one.")(f)
    f = click.option("--threshold", type=click.FloatRange(0, 2), default=None,
                     help="Decide with this distance instead of the model's threshold.")(f)
    return f


def _decision_threshold(fs, threshold, far) -> float:
    try:
        return fs.threshold_at(far=far, threshold=threshold)
    except ValueError as e:
        raise click.UsageError(str(e)) from e


@cli.command()
@click.argument("images_", metavar="IMAGE...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", "-k", default=5, show_default=True, type=click.IntRange(1, 1000),
              help="How many identities to list.")
@_threshold_options
@_detect_option
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: one object, or a list for several probes; with --detect always a list, one "
                   "object per face found.")
@click.pass_obj
def query(app: App, images_, top_k, threshold, far, detect, as_json):
    """Who is in IMAGE? Ranked identities (best face each), with distance and match decision.

    Several images or a folder are embedded and searched in batches. With --detect, every face found in
    each photo is searched, largest first, and its box (x, y, width, height) is shown.
    """
    from facesearch.gallery.facade import Failure

    files = _probe_files(images_)
    if not files:
        raise click.BadParameter("no image files found", param_hint="IMAGE")
    fs = app.open(detect=detect)
    thr = _decision_threshold(fs, threshold, far)
    if len(files) == 1:
        results = fs.query_faces(files[0], top_k, threshold=thr)
    else:
        with _progress(len(files), "query") as bar:
            results = fs.query_many(files, top_k, progress=bar.update, threshold=thr, every=True)
    if as_json:
        out = [r.to_dict() if not isinstance(r, Failure) else {"probe": r.source, "error": r.reason}
               for r in results]
        _echo_json(out if detect or len(out) != 1 else out[0])  # --detect: a list, however many faces
    else:
        for r in results:
            _print_result(r, thr)
    if all(isinstance(r, Failure) for r in results):
        sys.exit(1)


def _print_result(r, threshold) -> None:
    from facesearch.gallery.facade import Failure

    if isinstance(r, Failure):
        click.echo(f"{r.source}: error: {r.reason}", err=True)
        return
    if not r.matches:
        click.echo(f"{r.probe}: unknown (the gallery is empty)")
        return
    top = r.matches[0]
    probe = r.probe if r.face is None else f"{r.probe} face at {tuple(r.face['box'])}"
    if r.identity is None:
        click.echo(f"{probe}: unknown (nearest {top.identity} at distance {top.distance:.4f} "
                   f"> threshold {threshold:.4f})")
    else:
        click.echo(f"{probe}: {r.identity} (distance {top.distance:.4f} <= threshold {threshold:.4f})")
    click.echo(f"  {'rank':>4}  {'identity':<32} {'distance':>8}  match  face")
    for i, m in enumerate(r.matches, 1):
        click.echo(f"  {i:>4}  {m.identity[:32]:<32} {m.distance:>8.4f}  {'yes' if m.match else 'no ':<5}  {m.face_id}")


# ---- verify ----------------------------------------------------------------------------------
@cli.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@_threshold_options
@_detect_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def verify(app: App, a, b, threshold, far, detect, as_json):
    """Are A and B the same person? same = distance <= the model's threshold.

    With --detect, A and B are photos and the largest face of each is compared.
    """
    fs = app.open(detect=detect)
    r = fs.verify(a, b, threshold=_decision_threshold(fs, threshold, far))
    if as_json:
        _echo_json(r.to_dict())
    else:
        rel = "<=" if r.same else ">"
        click.echo(f"{'same person' if r.same else 'different people'}: distance {r.distance:.4f} {rel} "
                   f"threshold {r.threshold:.4f}")


# ---- align -----------------------------------------------------------------------------------
@cli.command()
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def align(src, out, as_json):
    """Turn photos into aligned face crops: SRC/<identity>/<photos> (or a zip of that) becomes
    OUT/<identity>/<photo>.png, the largest face of each photo aligned like the LFW pack (112 px).

    For `facesearch train`, `calibrate` and `evaluate`, which read aligned crops: fine-tune on your own
    photos with `facesearch align photos/ crops/` then `facesearch train crops/ --init-model default`.
    Crops already in OUT are kept; needs facesearch[detect].
    """
    from facesearch import detect

    with _progress(None, "align") as bar:
        report = detect.align_folder(src, out, progress=bar.update, total=lambda n: setattr(bar, "total", n))
    if as_json:
        _echo_json(report.to_dict())
    else:
        click.echo(f"aligned crops written: {report.written}  already there: {report.existing}  "
                   f"failed: {len(report.failed)}  (in {out})")
        _echo_problems(sorted(report.failed), len(report.several_faces), "kept")
    if report.failed:  # as enroll: 1 nothing was done, 3 the rest was
        sys.exit(1 if not report.written and not report.existing else 3)


# ---- identities ------------------------------------------------------------------------------
@cli.group(cls=_Group)
def identities():
    """List, show, rename and remove enrolled identities."""


@identities.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def identities_list(app: App, as_json):
    rows = app.open().identities()
    if as_json:
        _echo_json([{"identity": r.name, "faces": r.faces, "created_at": r.created_at} for r in rows])
        return
    for r in rows:
        click.echo(f"{r.name}\t{r.faces}")
    click.echo(f"{len(rows)} identities, {sum(r.faces for r in rows)} faces", err=True)


@identities.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def identities_show(app: App, name, as_json):
    faces = app.open().identity_faces(name)
    if as_json:
        _echo_json({"identity": name, "faces": [{"face_id": f.face_id, "source": f.source} for f in faces]})
        return
    click.echo(f"{name}: {len(faces)} faces")
    for f in faces:
        click.echo(f"  {f.face_id}\t{f.source}")


@identities.command("rename")
@click.argument("old")
@click.argument("new")
@click.pass_obj
def identities_rename(app: App, old, new):
    app.open().rename_identity(old, new)
    click.echo(f"renamed {old} -> {new}")


@identities.command("remove")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def identities_remove(app: App, name, yes):
    fs = app.open()
    n = len(fs.identity_faces(name))
    if not yes:
        click.confirm(f"remove {name} and its {n} faces?", abort=True)
    removed = fs.remove_identity(name)
    click.echo(f"removed {name} ({removed} faces)")


# ---- info, reindex, db -----------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def info(app: App, as_json):
    """The model, its threshold, the counts, the index and the device."""
    d = app.open().info()
    if as_json:
        _echo_json(d)
        return
    m = d["model"]
    click.echo(f"home:        {d['home']}")
    click.echo(f"database:    {d['database']} (schema {d['schema_revision']})")
    click.echo(f"model:       {m['key']} ({m['backbone']}, {m['embedding_dim']}-d, {m['input_size']} px)")
    click.echo(f"threshold:   {m['threshold']:.4f} ({m['distance']} distance; match when distance <= threshold)")
    for op in m.get("operating_points") or []:
        click.echo(f"  --far {op['far']:g}: {op['threshold']:.4f} (accepts {100 * op['tar']:.1f}% of genuine "
                   f"held-out pairs)")
    click.echo(f"identities:  {d['identities']}")
    click.echo(f"faces:       {d['faces']}")
    ix = d["index"]
    if "error" in ix:
        click.echo(f"index:       unusable: {ix['error']}")
    else:
        probe = f", {ix['nprobe']} lists probed" if ix.get("nprobe") else ""
        click.echo(f"index:       {ix['type']} on {ix['backend']}, {ix['size']} vectors{probe} ({ix['file']})")
    click.echo(f"device:      {d['device']}")
    click.echo(f"detector:    {d['detector']}")


@cli.command()
@click.option("--model", "new_model", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Re-embed every face with this model and make it the gallery's model.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def reindex(app: App, new_model, as_json):
    """Rebuild the index from the store (or re-embed the gallery with --model)."""
    fs = app.open(strict=False)
    with _progress(None, "re-embed", "face", disable=None if new_model else True) as bar:

        def left(n: int) -> None:  # before each pass: what is left (a rerun skips what was staged)
            bar.total = bar.n + n
            bar.refresh()

        r = fs.reindex(model=new_model, progress=bar.update, total=left)
    if as_json:
        _echo_json(r)
    else:
        click.echo(f"index rebuilt: {r['faces']} faces, {r['index']}, model {r['model']}"
                   + (f" ({r['reembedded']} re-embedded)" if new_model else ""))


@cli.group(cls=_Group)
def db():
    """Schema migrations. facesearch also upgrades the schema itself when it opens a database."""


def _store(app: App, upgrade: bool, must_exist: bool = False):
    import os

    from facesearch.gallery.facade import DB_FILE, default_home
    from facesearch.store import Store

    home = app.home or default_home()
    url = app.db or os.environ.get("FACESEARCH_DB") or f"sqlite:///{Path(home).expanduser() / DB_FILE}"
    if must_exist and url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        raise FaceSearchError(f"no gallery at {url[len('sqlite:///'):]} (check --home or --db)")
    return Store.open(url, upgrade=upgrade)


@db.command("upgrade")
@click.argument("revision", default="head")
@click.pass_obj
def db_upgrade(app: App, revision):
    """Upgrade the schema (to the newest revision by default)."""
    store = _store(app, upgrade=False)
    try:
        store.upgrade(revision)
        click.echo(f"schema at {store.current_revision()}")
    finally:
        store.close()


@db.command("current")
@click.pass_obj
def db_current(app: App):
    """Print the schema revision of the database and the newest one this facesearch knows."""
    store = _store(app, upgrade=False, must_exist=True)
    try:
        click.echo(f"current: {store.current_revision()}  head: {store.head_revision()}")
    finally:
        store.close()


@db.command("backup")
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def db_backup(app: App, dest, as_json):
    """Copy the SQLite gallery to DEST (a new file), consistent even while others enroll.

    The copy holds every face, its embedding, its crop and the identities: all a gallery needs,
    the index is rebuilt from it. To use it, put it as facesearch.db in an empty home
    (facesearch --home NEW ...) or open it with --db sqlite:///DEST. A model directory other
    than the built-in one is not in the copy: keep it too. PostgreSQL: use pg_dump.
    """
    store = _store(app, upgrade=False, must_exist=True)
    try:
        r = store.backup(dest)
    finally:
        store.close()
    if as_json:
        _echo_json(r)
    else:
        click.echo(f"backed up {r['faces']} faces of {r['identities']} identities to {r['path']} "
                   f"({r['bytes'] / 2**20:.1f} MiB, schema {r['schema']})")


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
    cli(prog_name="facesearch")


if __name__ == "__main__":
    main()
