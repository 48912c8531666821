"""``facesearch cluster``: group faces of people nobody enrolled, and hand each group to ``enroll``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from facesearch.cli.app import App, Command, detect_option, progress
from facesearch.cli.format import echo_json
from facesearch.names import printable


@click.command(cls=Command)
@click.argument("paths", metavar="IMAGE|FOLDER...", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--threshold", type=click.FloatRange(0, 2, min_open=True, max_open=True), default=None,
              help="Merge groups while the average distance between their faces is within this "
                   "[default: the model's 1:1 threshold].")
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Copy each group into OUT/cluster-NNN/ (a new folder), ready for "
                   "`facesearch enroll --identity NAME OUT/cluster-NNN`.")
@click.option("--min-size", type=click.IntRange(min=2), default=2, show_default=True,
              help="With --out, write only the groups of at least this many faces.")
@detect_option
@click.option("--json", "as_json", is_flag=True, help="Print the groups as JSON.")
@click.pass_obj
def cluster(app: App, paths, threshold, out, min_size, detect, detect_fallback, as_json):
    """Group the faces in IMAGES (files, or folders searched recursively) by person, without enrolling.

    Faces are embedded by the gallery's model (the default one on a new home) and grouped by
    agglomerative clustering (average linkage) on the one distance, cut at the model's 1:1 threshold:
    two groups are merged while their faces would still match on average. A face alone in its group
    was seen once. With --out, each group is copied into a folder to enroll under a name.
    """
    from facesearch.gallery import cluster as _cluster
    from facesearch.cli.gallery import _probe_files

    files = _probe_files(paths)
    if not files:
        raise click.BadParameter("no image files found", param_hint="IMAGE|FOLDER")
    fs = app.open(detect=detect, create=True, fallback=detect_fallback)
    with progress(len(files), "embed") as bar:
        result = _cluster.cluster_images(fs, files, threshold, progress=bar.update)
    written = _cluster.write_groups(result, out, min_size) if out is not None else []
    if as_json:
        d = result.to_dict()
        if out is not None:
            d["written"] = [str(p) for p in written]
        echo_json(d)
    else:
        many = [g for g in result.groups if len(g) > 1]
        click.echo(f"{len(result.sources)} faces: {len(many)} groups of the same person, {len(result.singletons)} "
                   f"seen once (average distance within {result.threshold:.4f})")
        for i, g in enumerate(many, 1):
            click.echo(f"  cluster {i} ({len(g)} faces): " + ", ".join(printable(result.sources[k]) for k in g[:8])
                       + (f", ... ({len(g) - 8} more)" if len(g) > 8 else ""))
        for f in result.failed:
            click.echo(f"  failed: {printable(f.source)}: {f.reason}", err=True)
        if written:
            click.echo(f"wrote {len(written)} folders under {out}; enroll one with: "
                       f"facesearch enroll --identity NAME {written[0]}")
    if result.failed:
        sys.exit(1 if not result.sources else 3)
