"""The gallery commands: enroll, query, verify, identities, info, reindex (parse, call, format)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from facesearch import images
from facesearch.cli.app import App, Command, Group, Output, detect_option, progress, threshold_options
from facesearch.cli.format import echo_json, echo_outcome, print_enroll, print_info, print_result
from facesearch.names import printable


# ---- enroll ----------------------------------------------------------------------------------
@click.command(cls=Command)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--identity", "-i", metavar="NAME",
              help="Enroll the given image files, or the images in the given folders, as this identity.")
@detect_option
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Processes that read, decode, embed and store in parallel (each loads the model; batched "
                   "writes). Several enrolls, on several machines, may share one PostgreSQL gallery at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def enroll(app: App, paths, identity, detect, detect_fallback, workers, as_json):
    """Enroll faces.

    \b
    facesearch enroll DIR                   DIR/<identity>/<image files> (or a zip of that)
    facesearch enroll -i NAME FILE...       files of one identity
    facesearch enroll -i NAME FOLDER        the images in one person's folder (not its sub-folders)
    facesearch enroll --detect DIR          photos: the largest face of each is found and enrolled

    Content enrolled before is skipped; a bad file is reported and never stops the rest.
    """
    if identity is None:
        if len(paths) != 1:
            raise click.UsageError("give one folder of identities, or --identity NAME with image files")
        root = paths[0]
        if not root.exists():
            raise click.BadParameter(f"{root} does not exist", param_hint="DIR")
        fs = app.open(detect=detect, create=True, fallback=detect_fallback)
        with progress(None, "enroll") as bar:
            report = fs.enroll_folder(root, progress=bar.update, total=lambda n: setattr(bar, "total", n),
                                      workers=workers)
    else:
        files = []
        for p in paths:  # a folder holds one person's photos: its image files, in name order
            if p.is_dir():
                found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                               and images.is_image_name(f))
                if not found:
                    raise click.BadParameter(f"{p} holds no image files", param_hint="FILE|FOLDER")
                files.extend(found)
            else:
                files.append(p)
        paths = files
        fs = app.open(detect=detect, create=True, fallback=detect_fallback)
        with progress(len(paths), f"enroll {identity}") as bar:
            report = fs.enroll_files(identity, paths, progress=bar.update, workers=workers)
    if as_json:
        echo_json(report.to_dict())
    else:
        print_enroll(report)
    if report.failed:  # 1: nothing could be enrolled; 3: the rest was, these files were not
        sys.exit(1 if not report.added and not report.skipped else 3)


# ---- query -----------------------------------------------------------------------------------
def _probe_files(paths) -> list[Path]:
    files = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and images.is_image_name(f)))
        else:
            files.append(p)
    return files


@click.command(cls=Command)
@click.argument("images_", metavar="IMAGE...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", "-k", default=5, show_default=True, type=click.IntRange(1, 1000),
              help="How many identities to list.")
@click.option("--fpir", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Accept the closest identity with the model's identification threshold for this false "
                   "positive identification rate (the share of searches by never-enrolled people that return "
                   "anyone) at the gallery's size [default: the model's, 1e-2]; `facesearch info` lists them.")
@threshold_options
@detect_option
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: a list with one entry per probe (however many), each with its probe; "
                   "with --detect each entry lists the faces found under 'faces'.")
@click.pass_obj
def query(app: App, images_, top_k, fpir, threshold, far, detect, detect_fallback, as_json):
    """Who is in IMAGE? Ranked identities (best face each), with distance and match decision.

    The closest identity is accepted ("match") when its distance is within the model's identification
    threshold for FPIR 1e-2 at the gallery's number of identities (--fpir for another); --far and
    --threshold decide with a 1:1 threshold instead. Each result says which rule decided.

    Several images or a folder are embedded and searched in batches. With --detect, every face found in
    each photo is searched, largest first, and its box (x, y, width, height) is shown.
    """
    from facesearch.errors import InvalidImageError
    from facesearch.gallery.results import Failure

    if sum(x is not None for x in (fpir, far, threshold)) > 1:
        raise click.UsageError("give one of --fpir, --far and --threshold")
    files = _probe_files(images_)
    if not files:
        raise click.BadParameter("no image files found", param_hint="IMAGE")
    fs = app.open(detect=detect, fallback=detect_fallback)
    decision = fs.decision(fpir=fpir, far=far, threshold=threshold)  # a rule the model lacks fails before embedding
    if decision.warning and not Output.quiet:
        click.echo(f"warning: {decision.warning}", err=True)
    if len(files) == 1:
        try:
            results = fs.query_faces(files[0], top_k, threshold=threshold, far=far, fpir=fpir)
        except InvalidImageError as e:  # reported like one probe among many: same shape, exit 1
            results = [Failure(str(files[0]), e.reason)]
    else:
        with progress(len(files), "query") as bar:
            results = fs.query_many(files, top_k, progress=bar.update, threshold=threshold, far=far, fpir=fpir,
                                    every=True)
    if as_json:
        echo_json(query_json(files, results, detect))
    else:
        for r in results:
            print_result(r, r.threshold if not isinstance(r, Failure) else decision.threshold)
    failed = len({r.source for r in results if isinstance(r, Failure)})
    if failed:  # 1: nothing could be searched; 3: some probes were, the others are reported
        sys.exit(1 if failed == len(files) else 3)


def query_json(files: list[Path], results: list, detect: bool) -> list[dict]:
    """``query --json``: always a list, one entry per probe (:func:`facesearch.gallery.results.query_entries`,
    which the HTTP service answers with too)."""
    from facesearch.gallery.results import query_entries

    return query_entries([str(f) for f in files], results, detect)


# ---- verify ----------------------------------------------------------------------------------
@click.command(cls=Command)
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@threshold_options
@detect_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def verify(app: App, a, b, threshold, far, detect, detect_fallback, as_json):
    """Are A and B the same person? same = distance <= the model's threshold.

    With --detect, A and B are photos and the largest face of each is compared.
    """
    fs = app.open(detect=detect, create=True, fallback=detect_fallback)  # needs no enrolled faces: the model of the home, else the default
    r = fs.verify(a, b, threshold=fs.threshold_at(far=far, threshold=threshold))
    if as_json:
        echo_json(r.to_dict())
    else:
        rel = "<=" if r.same else ">"
        click.echo(f"{'same person' if r.same else 'different people'}: distance {r.distance:.4f} {rel} "
                   f"threshold {r.threshold:.4f}")


# ---- identities ------------------------------------------------------------------------------
@click.group(cls=Group)
def identities():
    """List, show, rename and remove enrolled identities."""


@identities.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def identities_list(app: App, as_json):
    """List the enrolled identities and their face counts."""
    rows = app.open().identities()
    if as_json:
        echo_json([{"identity": r.name, "faces": r.faces, "created_at": r.created_at} for r in rows])
        return
    for r in rows:
        click.echo(f"{r.name}\t{r.faces}")
    click.echo(f"{len(rows)} identities, {sum(r.faces for r in rows)} faces", err=True)


def complete_identity(ctx, param, incomplete: str) -> list:
    """Shell completion of identity names from the gallery the command line points at (never created)."""
    from click.shell_completion import CompletionItem

    from facesearch.settings import DB_FILE, Settings

    root = ctx.find_root().params
    settings = Settings.from_env().override(home=root.get("home"), db_url=root.get("db"))
    url = settings.db_url or f"sqlite:///{settings.home / DB_FILE}"
    if settings.db_url is None and not (settings.home / DB_FILE).is_file():
        return []
    try:
        from facesearch.store import Store

        store = Store.open(url, upgrade=False)
        try:
            names = [row.name for row in store.identities()]
        finally:
            store.close()
    except Exception:  # noqa: BLE001 - completion must never print a traceback into the shell
        return []
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


@identities.command("show")
@click.argument("name", shell_complete=complete_identity)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def identities_show(app: App, name, as_json):
    """Show the faces of identity NAME: face id and source."""
    faces = app.open().identity_faces(name)
    if as_json:
        echo_json({"identity": name, "faces": [{"face_id": f.face_id, "source": f.source} for f in faces]})
        return
    click.echo(f"{name}: {len(faces)} faces")
    for f in faces:
        click.echo(f"  {f.face_id}\t{f.source}")


@identities.command("rename")
@click.argument("old", shell_complete=complete_identity)
@click.argument("new")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def identities_rename(app: App, old, new, as_json):
    """Rename identity OLD to NEW (face ids and embeddings are kept; to join two identities, use merge)."""
    app.open().rename_identity(old, new)
    echo_outcome(as_json, {"renamed": old, "to": new}, f"renamed {old} -> {new}")


@identities.command("remove")
@click.argument("name", shell_complete=complete_identity)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (needs --yes: nothing is asked).")
@click.pass_obj
def identities_remove(app: App, name, yes, as_json):
    """Remove identity NAME and all its faces, from the store and the index."""
    if as_json and not yes:
        raise click.UsageError("--json asks nothing: add --yes")
    fs = app.open()
    if not yes:
        click.confirm(f"remove {name} and its {len(fs.identity_faces(name))} faces?", abort=True)
    removed = fs.remove_identity(name)
    echo_outcome(as_json, {"removed": name, "faces": removed}, f"removed {name} ({removed} faces)")


@identities.command("merge")
@click.argument("source", shell_complete=complete_identity)
@click.argument("into", shell_complete=complete_identity)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def identities_merge(app: App, source, into, as_json):
    """Merge identity SOURCE into INTO: its faces become INTO's, and SOURCE is removed (two names that
    turned out to be one person; face ids and embeddings are kept)."""
    moved = app.open().merge_identities(source, into)
    echo_outcome(as_json, {"merged": source, "into": into, "faces": moved},
                 f"merged {source} into {into} ({moved} faces)")


# ---- faces -----------------------------------------------------------------------------------
@click.group(cls=Group)
def faces():
    """List and remove single enrolled faces (a wrong photo in an identity)."""


@faces.command("list")
@click.option("--identity", "-i", metavar="NAME", shell_complete=complete_identity,
              help="Only the faces of this identity.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def faces_list(app: App, identity, as_json):
    """List the enrolled faces: face id, identity and source."""
    rows = app.open().faces(identity)
    if as_json:
        echo_json([{"face_id": f.face_id, "identity": f.identity, "source": f.source} for f in rows])
        return
    for f in rows:
        click.echo(f"{f.face_id}\t{f.identity}\t{printable(f.source)}")


@faces.command("remove")
@click.argument("face_ids", metavar="FACE_ID...", nargs=-1, required=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def faces_remove(app: App, face_ids, as_json):
    """Remove faces by id (from `faces list`, `identities show` or a query's face column), from the store
    and the index. An id that is not enrolled is reported; exit code 3 when some were and others not."""
    wanted = sorted(set(face_ids))
    removed = app.open().remove_faces(wanted)
    echo_outcome(as_json, {"removed": removed, "not_enrolled": len(wanted) - removed}, f"removed {removed} face(s)")
    if removed < len(wanted):
        click.echo(f"not enrolled: {len(wanted) - removed} of the {len(wanted)} face ids given", err=True)
        sys.exit(1 if removed == 0 else 3)


# ---- info, reindex ---------------------------------------------------------------------------
@click.command(cls=Command)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def info(app: App, as_json):
    """The model, its thresholds (1:1, and 1:N for each FPIR at the gallery's size), the counts, the index
    and the device."""
    d = app.open(create=True).info()  # also what a new home would use: model, device, detector
    if as_json:
        echo_json(d)
        return
    print_info(d)


@click.command(cls=Command)
@click.option("--model", "new_model", metavar="NAME|DIR",
              help="Re-embed every face with this model (a built-in one: sface, lfw-mobilenet, default; or a "
                   "model directory) and make it the gallery's model.")
@click.option("--check", is_flag=True,
              help="Change nothing: say whether the index (or the --vectors database) matches the store: faces "
                   "missing from it, ids it has that the store does not. Exit code 1 when they differ.")
@click.option("--repair", is_flag=True,
              help="Make the index match the store: write the missing faces' embeddings, remove the extra ids "
                   "(after a crash between the store and the vectors database); no full rebuild when none is needed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def reindex(app: App, new_model, check, repair, as_json):
    """Rebuild the index from the store (or re-embed the gallery with --model); --check / --repair find and
    remove drift between the store and the index."""
    if sum(map(bool, (new_model, check, repair))) > 1:
        raise click.UsageError("--model, --check and --repair go one at a time")
    fs = app.open(strict=False)
    if check or repair:
        r = fs.check_index() if check else fs.repair_index()
        last = r if check else r["after"]
        if as_json:
            echo_json(r)
        else:
            click.echo(_drift_line(r if check else r["before"]))
            if repair:
                done = "rebuilt" if r.get("rebuilt") else f"added {r.get('added', 0)}, removed {r.get('removed', 0)}"
                click.echo(f"repaired ({done}): {_drift_line(last)}")
        if check and not last["in_sync"]:
            sys.exit(1)
        return
    with progress(None, "re-embed", "face", disable=None if new_model else True) as bar:

        def left(n: int) -> None:  # before each pass: what is left (a rerun skips what was staged)
            bar.total = bar.n + n
            bar.refresh()

        r = fs.reindex(model=new_model, progress=bar.update, total=left)
    if as_json:
        echo_json(r)
    else:
        click.echo(f"index rebuilt: {r['faces']} faces, {r['index']}, model {r['model']}"
                   + (f" ({r['reembedded']} re-embedded)" if new_model else ""))


def _drift_line(r: dict) -> str:
    if "missing" not in r:  # the index file
        return ("index file in sync with the store" if r["in_sync"] else
                f"index file out of date ({r['reason']}): the next search rebuilds it, or --repair now")
    state = "in sync" if r["in_sync"] else "DRIFT"
    return (f"{r['vectors']}: {state}: {r['store_faces']} faces in the store, {r['backend_faces']} vectors; "
            f"{r['missing']} missing, {r['extra']} extra, {r['stale_in_sample']} stale of {r['sample']} sampled")
