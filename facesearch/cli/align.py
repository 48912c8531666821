"""``facesearch align``: photos to aligned face crops."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from facesearch.cli.app import Command, progress
from facesearch.cli.format import echo_json, echo_problems


@click.command(cls=Command)
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

    with progress(None, "align") as bar:
        report = detect.align_folder(src, out, progress=bar.update, total=lambda n: setattr(bar, "total", n))
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(f"aligned crops written: {report.written}  already there: {report.existing}  "
                   f"failed: {len(report.failed)}  (in {out})")
        echo_problems(sorted(report.failed), len(report.several_faces), "kept")
    if report.failed:  # as enroll: 1 nothing was done, 3 the rest was
        sys.exit(1 if not report.written and not report.existing else 3)
