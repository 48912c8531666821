"""``facesearch train``: the thin CLI over :func:`facesearch.training.run`.

Register it on the main group with ``cli.add_command(train)``. The options' defaults are those of
:class:`~facesearch.training.TrainOptions` (whose module imports no torch); the rest of training is
imported when a command runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from facesearch.cli.app import Command
from facesearch.errors import FaceSearchError
from facesearch.training.options import TrainOptions

DEFAULT_OUT = "facesearch-model"
#: the options a run gets when none is given: every option's default below
DEFAULTS = TrainOptions(data=".", out=DEFAULT_OUT)


def _people_file(data: Path, people: Path | None) -> Path:
    if people is not None:
        return people
    for cand in (data.parent / "people.txt", data / "people.txt"):
        if cand.is_file():
            return cand
    raise click.ClickException(
        f"--exclude-lfw-fold needs LFW's people.txt: none next to {data}; pass it with --people FILE"
    )


def _names_file(path: Path) -> frozenset[str]:
    names = [ln.strip() for ln in path.read_text().splitlines()]
    return frozenset(n for n in names if n and not n.startswith("#"))


@click.command("train", cls=Command)
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default=True, help="Model directory to write (model.json + weights.pt).")
@click.option("--overwrite", is_flag=True, help="Replace a model already in OUT (refused otherwise).")
@click.option("--backbone", default=DEFAULTS.backbone, show_default=True,
              help="torchvision backbone (mobilenet_v2, mobilenet_v3_small, mobilenet_v3_large, resnet18, ...).")
@click.option("--pretrained", default=DEFAULTS.pretrained, show_default=True,
              help="'imagenet' (torchvision's checkpoint in the torch hub cache), a checkpoint path, or 'none'.")
@click.option("--init-model", default=None, metavar="MODEL_DIR|default",
              help="Fine-tune: start from this facesearch model's weights (embedding head included; "
                   "'default': the built-in model) instead of --pretrained. Its backbone, embedding size "
                   "and input size are used; its training data is recorded in the new model.")
@click.option("--embedding-dim", type=click.IntRange(min=2), default=DEFAULTS.embedding_dim, show_default=True,
              help="Size of the embedding (the encoder's last layer).")
@click.option("--input-size", type=click.IntRange(min=32), default=DEFAULTS.input_size, show_default=True,
              help="Side of the square input, in pixels (aligned crops are 112 px; the default upsamples them).")
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULTS.epochs, show_default=True,
              help="Most epochs (an epoch visits every training identity once).")
@click.option("--time-budget", type=float, default=None,
              help="Minutes for the whole run (decoding, training, calibration, saving); the lr schedule "
                   "follows elapsed time and training stops when it is spent.")
@click.option("--pk", type=(click.IntRange(min=2), click.IntRange(min=2)), default=None, metavar="P K",
              help="Batch shape: P identities x K images each (same as the two options below).")
@click.option("--identities-per-batch", "-P", type=click.IntRange(min=2),
              default=DEFAULTS.identities_per_batch, show_default=True,
              help="P: identities in each batch (P x K faces).")
@click.option("--images-per-identity", "-K", type=click.IntRange(min=2),
              default=DEFAULTS.images_per_identity, show_default=True,
              help="K: faces of each identity in a batch.")
@click.option("--pos-margin", type=click.FloatRange(0, 2), default=DEFAULTS.pos_margin, show_default=True,
              help="Positive pairs are pulled within this cosine distance.")
@click.option("--margin", "--neg-margin", "neg_margin", type=click.FloatRange(0, 2), default=DEFAULTS.neg_margin,
              show_default=True, help="Negative pairs are pushed beyond this cosine distance.")
@click.option("--mining", type=click.Choice(["all", "hard", "semihard"]), default=DEFAULTS.mining,
              show_default=True, help="Which pairs of a batch the contrastive loss uses: all, the hardest, or semi-hard.")
@click.option("--lr", type=float, default=DEFAULTS.lr, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--backbone-lr-factor", type=click.FloatRange(min=0), default=DEFAULTS.backbone_lr_factor,
              show_default=True, help="The backbone's learning rate is --lr times this (the head's is --lr).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=DEFAULTS.weight_decay, show_default=True,
              help="AdamW weight decay.")
@click.option("--warmup", type=click.FloatRange(0, 1, max_open=True), default=DEFAULTS.warmup_fraction,
              show_default=True, help="Share of the schedule spent in linear warmup.")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True,
              help="Random seed (batches, augmentation, the head's initial weights).")
@click.option("--device", default=DEFAULTS.device, show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "off"]), default=DEFAULTS.amp,
              show_default=True, help="Mixed precision on CUDA (ignored on the CPU).")
@click.option("--cuda-graph", is_flag=True,
              help="On CUDA, capture the training step once as a CUDA graph and replay it (faster for small "
                   "batches; needs --amp bf16/auto or off).")
@click.option("--augment", type=click.Choice(["full", "flip", "off"]), default=DEFAULTS.augment, show_default=True,
              help="On-device augmentation: full (flip, scale/shift/rotate, brightness/contrast), flip (mirror "
                   "images only: frozen blocks' outputs can then be cached) or off.")
@click.option("--no-augment", is_flag=True, help="Turn off on-device augmentation (--augment off).")
@click.option("--train-last-blocks", type=click.IntRange(min=1), default=DEFAULTS.train_last_blocks, metavar="N",
              help="Train only the network's last N blocks and freeze the rest (weights and batch-norm statistics). "
                   "sface has 15: conv_1, conv_2 ... conv_14, embedding (its bn1, pre_fc1, fc1); mobilenet_v2 20: "
                   "features.0 ... features.18, embedding (the pooled head). Default: train all.")
@click.option("--feature-cache", type=click.Choice(["auto", "on", "off"]), default=DEFAULTS.feature_cache,
              show_default=True,
              help="With --train-last-blocks: compute the frozen blocks' outputs once and train the rest on them "
                   "(auto: when --augment is flip or off; on: refuse otherwise; off: never). With --decode-cache "
                   "they are kept there for later runs.")
@click.option("--teacher", default=None, metavar="MODEL_DIR|NAME",
              help="Distil: also pull the student towards this frozen model's embeddings (computed once, before "
                   "training). The student's model.json records the teacher and what it was trained on.")
@click.option("--teacher-data", type=click.Path(exists=True, path_type=Path), default=None,
              help="DATA's images aligned for the teacher's own template (same identity folders and file stems; "
                   "scripts/realign_pack.py makes them). Needed when the teacher's template differs from the "
                   "student's; pass DATA itself to let the teacher see the crops as they are.")
@click.option("--distill", type=click.Choice(["embedding", "relation"]), default=DEFAULTS.distill, show_default=True,
              help="embedding: 1 - cos(student, teacher) per image (same embedding size); relation: squared "
                   "difference of the batch's distance matrices (any sizes).")
@click.option("--distill-weight", type=click.FloatRange(min=0, min_open=True), default=DEFAULTS.distill_weight,
              show_default=True, help="Weight of the distillation term next to the contrastive loss.")
@click.option("--teacher-flip-average/--no-teacher-flip-average", default=DEFAULTS.teacher_flip_average,
              help="The teacher's targets average each image with its mirror image (default: as the teacher "
                   "embeds, its model.json's flip_average).")
@click.option("--unlabelled", type=click.Path(exists=True, path_type=Path), default=None,
              help="A folder or zip of aligned photos without labels (any depth): with --teacher they get the "
                   "distillation term only. Photos in a folder named after an excluded, held-out or training "
                   "identity are left out.")
@click.option("--teacher-unlabelled", type=click.Path(exists=True, path_type=Path), default=None,
              help="--unlabelled's photos aligned for the teacher (same relative paths and stems).")
@click.option("--unlabelled-per-batch", type=click.IntRange(min=1), default=DEFAULTS.unlabelled_per_batch,
              show_default=True, help="Unlabelled photos added to every P x K batch.")
@click.option("--flip-average/--no-flip-average", default=DEFAULTS.flip_average, show_default=True,
              help="The model embeds each face and its mirror image and averages the two (stored in "
                   "model.json; enroll, query and verify then do the same).")
@click.option("--decode-cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory that keeps the decoded images between runs (and processes): repeated "
                   "trainings on the same data skip decoding.")
@click.option("--checkpoint-every", type=click.FloatRange(min=0), default=DEFAULTS.checkpoint_interval_s,
              show_default=True,
              help="Seconds between resumable checkpoints (written at the end of an epoch; 0: every epoch).")
@click.option("--calibration-fraction", type=click.FloatRange(0, 1, max_open=True),
              default=DEFAULTS.calibration_fraction, show_default=True,
              help="Share of identities held out to calibrate the match threshold.")
@click.option("--exclude-lfw-fold", "exclude_folds", type=click.IntRange(1, 10), multiple=True,
              help="Leave out the people of this LFW View 2 set (repeatable), so the model can be scored "
                   "honestly on that fold of pairs.txt.")
@click.option("--people", "people_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="LFW people.txt for --exclude-lfw-fold (default: next to DATA).")
@click.option("--exclude-people", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="File of identity names (one per line) never to use.")
@click.option("--include-people", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="File of identity names (one per line): use only these.")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt.")
@click.option("--keep-checkpoint", is_flag=True, help="Keep OUT/checkpoint.pt after a successful run.")
@click.option("--name", default=None, help="Model name stored in model.json.")
@click.option("--notes", default=None, help="Free text stored in model.json (e.g. what it was trained on).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def train(data, out, overwrite, backbone, pretrained, init_model, embedding_dim, input_size, epochs, time_budget, pk,
          identities_per_batch, images_per_identity, pos_margin, neg_margin, mining, lr, backbone_lr_factor,
          weight_decay, warmup, seed, device, amp, cuda_graph, augment, no_augment, train_last_blocks, feature_cache,
          teacher, teacher_data, distill, distill_weight, teacher_flip_average, unlabelled, teacher_unlabelled, unlabelled_per_batch,
          flip_average, decode_cache, checkpoint_every, calibration_fraction, exclude_folds, people_file,
          exclude_people, include_people, resume, keep_checkpoint, name, notes, quiet, as_json):
    """Train a face encoder on DATA (a folder of identities, or a zip of one such as the LFW pack).

    Contrastive loss on cosine distance over P x K batches; the match threshold is calibrated on
    held-out identities and stored in OUT/model.json.
    """
    from facesearch.training import TrainOptions, read_lfw_people, run

    if pk is not None:
        identities_per_batch, images_per_identity = pk
    excluded, fold_note = _excluded(data, exclude_folds, people_file, exclude_people, read_lfw_people)
    if notes is None:
        notes = fold_note
    elif fold_note:
        notes = f"{notes} ({fold_note})"
    if pretrained.lower() == "none":
        pretrained = None
    if init_model is not None:
        backbone, embedding_dim, input_size, pretrained = _fine_tune_settings(
            init_model, backbone, embedding_dim, input_size, pretrained)
    options = TrainOptions(
        data=data, out=out, backbone=backbone, pretrained=pretrained, init_model=init_model,
        embedding_dim=embedding_dim,
        input_size=input_size, epochs=epochs, identities_per_batch=identities_per_batch,
        images_per_identity=images_per_identity, pos_margin=pos_margin, neg_margin=neg_margin, mining=mining,
        lr=lr, backbone_lr_factor=backbone_lr_factor, weight_decay=weight_decay, warmup_fraction=warmup,
        seed=seed, device=device, amp=amp, cuda_graph=cuda_graph,
        time_budget=time_budget * 60.0 if time_budget else None,
        resume=resume, overwrite=overwrite, keep_checkpoint=keep_checkpoint, exclude_people=frozenset(excluded),
        include_people=_names_file(include_people) if include_people is not None else None,
        calibration_fraction=calibration_fraction, augment="off" if no_augment else augment,
        train_last_blocks=train_last_blocks, feature_cache=feature_cache, teacher=teacher, teacher_data=teacher_data,
        distill=distill, distill_weight=distill_weight, teacher_flip_average=teacher_flip_average, unlabelled=unlabelled, teacher_unlabelled=teacher_unlabelled,
        unlabelled_per_batch=unlabelled_per_batch, flip_average=flip_average,
        decode_cache=decode_cache, checkpoint_interval_s=checkpoint_every, name=name, notes=notes,
    )
    log = None if (quiet or as_json) else (lambda line: click.echo(_epoch_line(line), err=True))
    try:
        summary = run(options, progress=not quiet and not as_json, log=log)
    except FaceSearchError as e:
        raise click.ClickException(str(e)) from e
    except RuntimeError as e:  # e.g. CUDA out of memory, an unknown device string
        raise click.ClickException(f"training failed: {e}") from e
    if summary.get("rank", 0) != 0:  # under torchrun, rank 0 reports for every rank
        return
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    t, c = summary["training"], summary["calibration"]
    click.echo(f"model written to {summary['out']}")
    click.echo(f"trained on {t['people']} people, {t['images']} images; {t['epochs']} epochs, {t['steps']} steps, "
               f"{t['images_per_s']:.0f} images/s on {t['device']}")
    cv = c.get("cross_validated_accuracy")
    click.echo(f"threshold (cosine distance, match when <=): {summary['threshold']:.4f}, chosen on "
               f"{c['pairs']} pairs of {c['source']}; accuracy there {c['accuracy']:.3f}"
               + (f" (cross-validated {cv:.3f})" if cv is not None else ""))


def _fine_tune_settings(init_model, backbone, embedding_dim, input_size, pretrained):
    """--init-model's architecture, unless the same option was given explicitly (then it must agree,
    which TrainOptions.validate checks); --pretrained does not apply."""
    from click.core import ParameterSource

    from facesearch.training import init_model_config

    ctx = click.get_current_context()
    try:
        cfg = init_model_config(init_model)
    except FaceSearchError as e:
        raise click.BadParameter(str(e), param_hint="--init-model") from e
    given = lambda name: ctx.get_parameter_source(name) != ParameterSource.DEFAULT  # noqa: E731
    if given("pretrained"):
        raise click.UsageError("--init-model and --pretrained both say where the weights start: give one")
    return (backbone if given("backbone") else cfg.backbone,
            embedding_dim if given("embedding_dim") else cfg.embedding_dim,
            input_size if given("input_size") else cfg.input_size, None)


def _excluded(data: Path, exclude_folds, people_file, exclude_people, reader) -> tuple[set[str], str | None]:
    """Names left out by --exclude-lfw-fold and --exclude-people, and a note saying which folds."""
    excluded: set[str] = set()
    fold_note = None
    if exclude_folds:
        sets = _read_people(_people_file(data, people_file), reader)
        for k in exclude_folds:
            if k > len(sets):
                raise click.BadParameter(f"people file has {len(sets)} sets", param_hint="--exclude-lfw-fold")
            excluded.update(sets[k - 1])
        fold_note = f"people of LFW View 2 set(s) {sorted(set(exclude_folds))} excluded from training"
    if exclude_people is not None:
        excluded.update(_names_file(exclude_people))
    return excluded, fold_note


def _read_people(path: Path, reader):
    try:
        return reader(path)
    except FaceSearchError as e:
        raise click.ClickException(str(e)) from e


def _epoch_line(line: str) -> str:
    r = json.loads(line)
    distill = f" (distillation {r['distill']:.4f})" if r.get("distill") is not None else ""
    return (f"epoch {r['epoch']}: loss {r['loss']:.4f}{distill}, pair accuracy {r['pair_accuracy']:.3f} at threshold "
            f"{r['threshold']:.3f}, {r['images_per_s']:.0f} images/s, {r['elapsed_s'] / 60:.1f} min")


@click.command("calibrate", cls=Command)
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("data", type=click.Path(exists=True, path_type=Path), required=False)
@click.option("--flip-average/--no-flip-average", default=None,
              help="Change whether the model averages each face with its mirror image (default: keep).")
@click.option("--exclude-lfw-fold", "exclude_folds", type=click.IntRange(1, 10), multiple=True,
              help="As given to `facesearch train` (repeatable).")
@click.option("--people", "people_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="LFW people.txt for --exclude-lfw-fold (default: next to DATA).")
@click.option("--exclude-people", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="As given to `facesearch train`.")
@click.option("--include-people", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="As given to `facesearch train`.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def calibrate(model_dir, data, flip_average, exclude_folds, people_file, exclude_people, include_people, device,
              as_json):
    """Choose MODEL_DIR's match threshold again on its held-out identities (from DATA, default: the data
    it was trained on) and store it in MODEL_DIR/model.json. The weights are not changed.

    A gallery enrolled with the model before a --flip-average change must be re-embedded:
    `facesearch reindex --model MODEL_DIR`.
    """
    from facesearch.model.config import ModelConfig
    from facesearch.training import read_lfw_people, recalibrate

    try:
        if data is None:
            data = Path((ModelConfig.load(model_dir / "model.json").training.options or {}).get("data", ""))
        excluded, _ = _excluded(data, exclude_folds, people_file, exclude_people, read_lfw_people)
        res = recalibrate(model_dir, data, flip_average=flip_average, exclude_people=excluded,
                          include_people=_names_file(include_people) if include_people is not None else None,
                          device=device)
    except FaceSearchError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(res, indent=2))
        return
    c = res["calibration"]
    prev = res["previous_threshold"]
    click.echo(f"threshold {res['threshold']:.4f} (was {'none' if prev is None else f'{prev:.4f}'}), flip average "
               f"{'on' if res['flip_average'] else 'off'}; chosen on {c['pairs']} pairs of {c['source']}: "
               f"accuracy {c['accuracy']:.3f}")
