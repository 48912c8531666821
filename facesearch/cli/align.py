"""``facesearch align``: photos to aligned face crops, in a model's own geometry."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from facesearch.cli.app import Command, progress
from facesearch.cli.format import echo_json, echo_problems


@click.command(cls=Command)
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "model", metavar="NAME|DIR", default=None,
              help="Align as --detect does for this model: to its own alignment template and input size "
                   "(sface: 112 px, ArcFace's five points), or to the LFW pack's 112 px geometry for a model "
                   "without one (lfw-mobilenet, models trained by facesearch). Default: the global --model "
                   "[env FACESEARCH_MODEL], else the LFW pack's geometry.")
@click.option("--realign", is_flag=True,
              help="SRC holds aligned crops already (e.g. the LFW pack): align each again to the template "
                   "(the face nearest its centre, found on the crop upscaled 2x); a crop in which no face is "
                   "found is moved from the LFW pack's mean geometry onto the template instead, and counted "
                   "(as enroll, query and evaluate lfw --realign do).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def align(ctx, src, out, model, realign, as_json):
    """Turn photos into aligned face crops: SRC/<identity>/<photos> (or a zip of that) becomes
    OUT/<identity>/<photo>.png, the largest face of each photo aligned as `enroll --detect` aligns it for
    --model (its own template; else, and without --model, the LFW pack's, 112 px).

    For `facesearch train`, `calibrate` and `evaluate`, which read aligned crops: fine-tune on your own
    photos with `facesearch align photos/ crops/ --model sface` then
    `facesearch train crops/ --init-model sface`.
    A re-aligned copy of the LFW pack for a model with its own template:
    `facesearch align lfw-deepfunneled-112.zip lfw-sface/ --model sface --realign`.
    Crops already in OUT are kept (an interrupted run carries on); OUT remembers its template and refuses
    crops of another. Needs facesearch[detect].
    """
    from facesearch import detect
    from facesearch.detect.align import crop_geometry
    from facesearch.model.files import location_for_user, resolve

    if model is None:
        model = getattr(ctx.find_root().obj, "model", None)
    if model is None:  # no model named: the LFW pack's geometry, as before models brought templates
        name, (template, size) = None, crop_geometry(None, 0)
        geometry = f"the LFW pack's template, {size} px; --model M aligns for M"
    else:
        resolved = resolve(model)
        template, size = crop_geometry(resolved.config.alignment, resolved.config.input_size)
        name = location_for_user(resolved.location)
        geometry = (f"{name}'s own template, {size} px" if resolved.config.alignment is not None
                    else f"the LFW pack's template, {size} px ({name} has none of its own)")
    with progress(None, "realign" if realign else "align") as bar:
        report = detect.align_folder(src, out, progress=bar.update, total=lambda n: setattr(bar, "total", n),
                                     template=template, size=size, realign=realign, label=name)
    if as_json:
        echo_json(dict(report.to_dict(), model=name))
    else:
        click.echo(f"aligned crops written: {report.written}  already there: {report.existing}  "
                   f"failed: {len(report.failed)}  (in {out}; {geometry})")
        if realign:
            click.echo(f"  no face found, moved by the pack's mean geometry instead: {len(report.warped)}"
                       + (" (--json lists them)" if report.warped else ""))
        echo_problems(sorted(report.failed), len(report.several_faces), "kept")
    if report.failed:  # as enroll: 1 nothing was done, 3 the rest was
        sys.exit(1 if not report.written and not report.existing else 3)
