"""``facesearch evaluate``: LFW verification and open-set identification (thin: parse, call, format)."""

from __future__ import annotations

import math

import sys
from pathlib import Path

import click

from facesearch.cli.app import Group
from facesearch.errors import FaceSearchError


def _progress(quiet: bool):
    """A progress factory for the library: tqdm bars on stderr (hidden when stderr is not a terminal)."""
    if quiet:
        return None
    from tqdm import tqdm

    def make(desc: str, total: int):
        return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True, leave=False,
                    disable=None)

    return make


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _builtin_sha() -> str | None:
    """The weights hash of the built-in model trained on every LFW fold's people (lfw-mobilenet)."""
    from facesearch.model import files

    try:
        return files.resolve(files.BUILTIN_PREFIX + files.LFW_MOBILENET).sha256
    except (OSError, FaceSearchError):  # not installed
        return None


def _training_note(model: dict) -> list[str]:
    t = model.get("training") or {}
    lines = []
    if t:
        data = t.get("data")
        desc = f"trained on {data}" if data else "trained"
        if t.get("people") is not None:
            desc += f", {t['people']} people"
        if t.get("images") is not None:
            desc += f", {t['images']} images"
        lines.append(desc)
        if t.get("notes"):
            lines.append(f"training notes: {t['notes']}")
        seen, shas = [data], {model.get("weights_sha256")}
        init = t.get("init_model")
        while init:  # fine-tuned: what the model it started from (and that one's start) was trained on
            before = init.get("trained_on") or {}
            lines.append(f"fine-tuned from {init.get('name')} (trained on {before.get('data')}, "
                         f"{before.get('people')} people)")
            seen.append(before.get("data"))
            shas.add(init.get("weights_sha256"))
            init = before.get("init_model")
        if _builtin_sha() in shas:
            lines.append("warning: this is, or was fine-tuned from, the built-in model, which was trained on LFW "
                         "people of every fold: none of its LFW numbers is honest (see README)")
        elif any(d and "lfw" in str(d).lower() for d in seen):
            lines.append(
                "warning: this model was trained on LFW images; its numbers are honest only on folds whose "
                "people it never saw (see shared/docs/data.md)"
            )
    elif model.get("source"):
        src = model["source"]
        lines.append(f"imported from {src.get('package')} ({src.get('licence')}); trained on: {src.get('trained_on')}")
        lines.append(f"includes LFW's people: {src.get('includes_lfw_people')}")
    else:
        lines.append("no training recorded (e.g. an untrained or ImageNet-initialised encoder)")
    return lines


def format_lfw(r) -> str:
    m = r.model
    out = [
        f"LFW verification: {r.pairs_file} ({r.protocol}, {r.n_pairs} pairs: {r.n_genuine} genuine, "
        f"{r.n_impostor} impostor)",
        f"images: {r.images} ({r.n_images} images, each embedded once)",
        f"model:  {m.get('name')} ({m.get('backbone')}, {m.get('embedding_dim')}-d) at {m.get('path')}; "
        f"device {r.device}",
    ]
    out += [f"        {ln}" for ln in _training_note(m)]
    out.append("distance: cosine, lower is more similar; a match when distance <= threshold")
    out.append("")
    if r.folds:
        out.append("fold  threshold  accuracy   (threshold chosen on the other folds)")
        for f in r.folds:
            out.append(f"{f['fold']:>4}  {f['threshold']:9.4f}  {100 * f['accuracy']:7.2f}%")
        out.append(f"accuracy (mean ± std over {r.n_folds} folds): {_pct(r.mean_accuracy)} ± {_pct(r.std_accuracy)}")
    width = 30
    out.append(f"{'ROC AUC':<{width}} {r.auc:.4f}")
    out.append(f"{'EER':<{width}} {_pct(r.eer)} (at distance {r.eer_threshold:.4f})")
    for key, v in r.tar_at_far.items():
        out.append(f"{'TAR @ FAR = ' + key:<{width}} {_pct(v['tar'])} (threshold {v['threshold']:.4f})")
    out.append(f"{'best global threshold':<{width}} {r.best_threshold:.4f} (accuracy {_pct(r.best_threshold_accuracy)} "
               "on all pairs; optimistic)")
    if r.model_threshold is None:
        out.append(f"{'model threshold':<{width}} not calibrated")
    else:
        out.append(f"{'model threshold':<{width}} {r.model_threshold:.4f} "
                   f"(accuracy {_pct(r.model_threshold_accuracy)})")
    s = r.seconds
    out.append(f"{'time':<{width}} {s['total']:.1f} s (embedding {s['embed']:.1f} s)")
    return "\n".join(out)


def _warning_lines(model: dict) -> list[str]:
    """The honesty warnings of the text output about the model, for the HTML report."""
    return [ln[len("warning: "):] for ln in _training_note(model) if ln.startswith("warning:")]


def format_identify(r) -> str:
    m = r.model
    out = [
        f"open-set identification: {r.images}" + (" (faces detected and aligned: --detect)" if r.detect else "")
        + (f", people of {r.people}" if r.people else ""),
        f"model:  {m.get('name')} at {m.get('path')}; device {r.device}"
        + ("; crops moved onto the model's template" if r.realigned else ""),
        f"gallery: {r.n_enrolled_identities} people x {r.gallery_per_identity} image(s) = {r.n_gallery_images} images",
        f"probes:  {r.n_known_probes} of enrolled people, {r.n_unknown_probes} of {r.n_unknown_identities} "
        "never-enrolled people",
    ]
    if r.detect:
        out.append(f"left out, no face found: {r.no_face['gallery']} gallery photo(s), {r.no_face['probes']} probe(s)")
    if r.trained_people_left_out:
        out.append(f"left out: {r.trained_people_left_out} people the model was trained on (its training record "
                   "names them for this folder); the people kept are ones it never trained on")
    elif (r.trained_people_left_out is None and "lfw" in str(r.images).lower()
          and any(ln.startswith("warning:") for ln in _training_note(m))):
        out.append("warning: these are LFW images, and this model was trained on LFW people: these rates say "
                   "nothing about people it never saw")
    out += [f"warning: {w}" for w in r.warnings]
    if m.get("identification_source"):
        out.append(f"the model's FPIR thresholds were calibrated on {m['identification_source']}: honest only if "
                   "none of those people is in this run")
    out += [
        "",
    ]
    width = 36
    out.append(f"{'rank-1 identification rate':<{width}} {_pct(r.rank1)}")
    out.append(f"{'rank-5 identification rate':<{width}} {_pct(r.rank5)}")
    out.append("")
    out += identify_table(r)
    out.append("")
    d = r.default_decision or {}
    if d:
        how = (f"FPIR {d['fpir']:g} at {d['gallery_identities']} identities, {d['status']}" if d["rule"] == "fpir"
               else "the 1:1 threshold: the model has no identification calibration")
        out.append(f"{'query by default':<{width}} threshold {d['threshold']:.4f} ({how}): unknown rejected "
                   f"{_pct(r.unknown_rejected_by_default)}, DIR {_pct(r.dir_by_default)}")
    if r.model_threshold is None:
        out.append(f"{'model threshold':<{width}} not calibrated")
    else:
        out.append(f"{'unknown probes rejected':<{width}} {_pct(r.unknown_rejected)} "
                   f"(at the 1:1 threshold {r.model_threshold:.4f})")
        out.append(f"{'DIR at the 1:1 threshold':<{width}} {_pct(r.dir_at_model_threshold)}")
    for key, v in r.at_operating_points.items():
        out.append(f"{'--far ' + key + ': unknown rejected':<{width}} {_pct(v['unknown_rejected'])}, "
                   f"DIR {_pct(v['dir'])} (threshold {v['threshold']:.4f})")
    out.append(f"{'time':<{width}} {r.seconds['total']:.1f} s")
    return "\n".join(out)


def identify_table(r) -> list[str]:
    """DIR against FPIR: with thresholds chosen on this run (the oracle curve) and with the model's stored
    FPIR thresholds at this gallery's size (the FPIR they gave here against their target)."""
    lines = [f"{'FPIR':<8} {'oracle: DIR':>12} {'threshold':>10}   {'model: threshold':>16} {'how':<15} "
             f"{'FPIR here':>10} {'DIR':>8}"]
    need = []
    for key, v in r.dir_at_fpir.items():
        if v.get("measurable", True):
            left = f"{_pct(v['dir']):>12} {v['threshold']:>10.4f}"
        else:
            left = f"{'-':>12} {'-':>10}"
            need.append(f"{key} needs at least {math.ceil(1 / v['fpir'])}")
        mv = r.at_model_fpir.get(key)
        if mv is None:
            right = f"{'-':>16} {'(not stored)' if r.at_model_fpir else '(no curve)':<15} {'':>10} {'':>8}"
        else:
            here = _pct(mv["measured_fpir"]) + ("" if mv["measurable"] else "*")
            right = f"{mv['threshold']:>16.4f} {mv['status']:<15} {here:>10} {_pct(mv['dir']):>8}"
        lines.append(f"{key:<8} {left}   {right}".rstrip())
    if need:
        lines.append(f"oracle '-': not measurable with {r.n_unknown_probes} unknown probes: {', '.join(need)}")
    if any(not v["measurable"] for v in r.at_model_fpir.values()):
        lines.append("*: too few unknown probes here to measure that FPIR")
    return lines


def _emit(result, paths, as_json: bool, formatter) -> None:
    """Print a result as JSON (with the report's files) or as the readable table."""
    from facesearch.evaluation import report

    if as_json:
        data = result.summary()
        if paths:
            data["report"] = {k: str(v) for k, v in paths.items()}
        click.echo(report.dumps(data))
    else:
        click.echo(formatter(result))
        if paths:
            click.echo(f"report: {paths['html']}")


def _model_or_global(model):
    """``--model`` of the subcommand, else the global ``facesearch --model``, else None (the shipped model)."""
    if model is not None:
        return model
    return getattr(click.get_current_context().find_root().obj, "model", None)


_model_opt = click.option("--model", "model", metavar="NAME|DIR", default=None,
                          help="a built-in model (sface, lfw-mobilenet) or a model directory (model.json + "
                               "weights.pt); default: the default built-in model (sface)")
_device_opt = click.option("--device", default="auto", show_default=True,
                           help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...")
_json_opt = click.option("--json", "as_json", is_flag=True, help="print the numbers as JSON")
_quiet_opt = click.option("--quiet", "-q", is_flag=True, help="no progress bars")
_images_opt = click.option("--images", "images", required=True, type=click.Path(exists=True, path_type=Path),
                           help="folder of identities (ROOT/<name>/<image>) or a zip of one, e.g. the LFW zip")


@click.group("evaluate", cls=Group)
def evaluate():
    """Measure a model: LFW verification (10-fold) and open-set identification."""


@evaluate.command("lfw")
@click.option("--pairs", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="LFW pairs file: pairs.txt (View 2, 10 folds) or pairsDevTest.txt (View 1)")
@_images_opt
@_model_opt
@_device_opt
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(1), help="images per forward pass")
@click.option("--realign/--no-realign", default=None,
              help="Align each crop again to the model's own template (yuface landmarks) before embedding "
                   "[default: when the model has a template of its own, e.g. an imported one].")
@_json_opt
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write report.json, roc.png, hist.png and report.html into this folder")
@_quiet_opt
def lfw(pairs, images, model, device, batch_size, realign, as_json, report_dir, quiet):
    """LFW verification. View 2 (pairs.txt): for each of the 10 folds the threshold is chosen on the
    other 9 and accuracy is measured on the held-out fold; mean ± std over folds. Also ROC AUC, EER,
    TAR at FAR 1e-2 / 1e-3 and the best global threshold. View 1 (pairsDevTest.txt): one set, accuracy
    at the model's stored threshold and at the best threshold."""
    from facesearch import evaluation as ev
    from facesearch.evaluation import report

    try:
        result = ev.evaluate_lfw(pairs, images, model=_model_or_global(model), device=device, batch_size=batch_size,
                                 progress=_progress(quiet), realign=realign)
        paths = (report.write_lfw_report(result, report_dir, warnings=_warning_lines(result.model))
                 if report_dir is not None else None)
    except FaceSearchError as e:
        raise click.ClickException(str(e)) from e
    _emit(result, paths, as_json, format_lfw)


@evaluate.command("identify")
@_images_opt
@_model_opt
@_device_opt
@click.option("--gallery-per-identity", default=1, show_default=True, type=click.IntRange(1),
              help="images enrolled per enrolled person")
@click.option("--probes-per-identity", default=2, show_default=True, type=click.IntRange(1),
              help="probe images per person (enrolled or not)")
@click.option("--enrolled-fraction", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True,
              max_open=True), help="share of the people with >= 2 images that are enrolled")
@click.option("--max-identities", default=None, type=click.IntRange(2),
              help="use at most this many people (a random sample), for a quick run")
@click.option("--seed", default=0, show_default=True, type=int, help="seed of the people/image split")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(1), help="probes per search batch")
@click.option("--detect", is_flag=True,
              help="the images are photos: find and align the faces first, as `query --detect` does "
                   "(needs facesearch[detect])")
@click.option("--people", "people", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="only these people (an LFW people file such as peopleDevTest.txt, or one name per line): "
                   "people the model was neither trained nor calibrated on")
@click.option("--singletons", is_flag=True,
              help="also search the people with a single image, as never-enrolled people (more strangers: "
                   "an FPIR of 1e-3 needs 1,000 of them)")
@_json_opt
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write report.json and report.html into this folder")
@_quiet_opt
def identify(images, model, device, gallery_per_identity, probes_per_identity, enrolled_fraction, max_identities,
             seed, batch_size, detect, people, singletons, as_json, report_dir, quiet):
    """Open-set identification on the people with at least 2 images: some are enrolled (a gallery of
    N images each) in a temporary facesearch home, probes of enrolled and never-enrolled people are
    searched with the same code as `facesearch query`. Rank-1/rank-5 identification rate; DIR
    (right and accepted) at FPIR 1e-1, 1e-2, 1e-3 (strangers accepted), with thresholds chosen on this run
    and with the model's own FPIR thresholds at the gallery's size (the FPIR they give here against their
    target); what query's default rule and the 1:1 threshold give."""
    from facesearch import evaluation as ev
    from facesearch.evaluation import report

    try:
        result = ev.evaluate_identify(
            images, model=_model_or_global(model), device=device, gallery_per_identity=gallery_per_identity,
            probes_per_identity=probes_per_identity, enrolled_fraction=enrolled_fraction,
            max_identities=max_identities, seed=seed, batch_size=batch_size, progress=_progress(quiet),
            detect=detect, people=people, singletons=singletons,
        )
        # the record's warning about LFW people is the run's own business once it left them out
        told = _warning_lines(result.model) if result.trained_people_left_out is None else []
        paths = (report.write_identify_report(result, report_dir, warnings=told) if report_dir is not None else None)
    except FaceSearchError as e:
        raise click.ClickException(str(e)) from e
    _emit(result, paths, as_json, format_identify)
