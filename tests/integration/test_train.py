"""Training: a few seconds of CPU training on a handful of LFW identities from ../shared."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from facesearch import distance, metrics
from facesearch.model import encoder
from facesearch.cli.train import train as train_cmd
from facesearch.model.config import TRAIN_INPUT_SIZE, ModelConfig
from facesearch.datasets import ImageFolder
from facesearch.losses import ContrastiveLoss
from facesearch.training import (
    PKSampler,
    TrainingError,
    TrainOptions,
    TrainStep,
    augment_batch,
    calibration_pairs,
    lr_factor,
    make_optimizer,
    read_lfw_people,
    run,
    split_identities,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
LFW_ZIP = SHARED / "data" / "lfw" / "lfw-deepfunneled-112.zip"
PEOPLE = SHARED / "data" / "lfw" / "people.txt"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-b0353104.pth"

needs_lfw = pytest.mark.skipif(
    not (LFW_ZIP.is_file() and WEIGHTS.is_file()),
    reason=f"needs the shared LFW pack and ImageNet MobileNetV2 checkpoint under {SHARED}",
)


@pytest.fixture(scope="module")
def people():
    """80 identities with 4 to 10 images each (the first by name: deterministic)."""
    folder = ImageFolder(LFW_ZIP)
    return frozenset([n for n in folder.identities() if 4 <= len(folder.items[n]) <= 10][:80])


def tiny_options(out, people, **kw):
    base = dict(
        data=LFW_ZIP, out=out, backbone="mobilenet_v2", pretrained=str(WEIGHTS), input_size=48, epochs=4,
        identities_per_batch=8, images_per_identity=4, include_people=people, calibration_fraction=0.25,
        lr=1e-3, neg_margin=0.6, seed=0, device="cpu", threads=2, calibration_pairs=500,
        checkpoint_interval_s=0,
    )
    base.update(kw)
    return TrainOptions(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, people):
    if not (LFW_ZIP.is_file() and WEIGHTS.is_file()):
        pytest.skip(f"needs the shared LFW pack and ImageNet checkpoint under {SHARED}")
    out = tmp_path_factory.mktemp("model")
    opts = tiny_options(out, people, keep_checkpoint=True)
    torch.manual_seed(opts.seed)
    initial = encoder.build(ModelConfig(backbone=opts.backbone, input_size=opts.input_size), pretrained=WEIGHTS)
    summary = run(opts, progress=False)
    return opts, summary, initial


def held_out_and_train_images(opts):
    folder = ImageFolder(opts.data)
    split = split_identities(folder, opts)
    cfg = ModelConfig(input_size=opts.input_size)

    def load(names):
        keys = [k for n in names for k in folder.items[n]]
        labels = np.array([i for i, n in enumerate(names) for _ in folder.items[n]])
        return folder.load_prepared(keys, cfg, threads=2), labels

    return split, load(split.calibration), load(split.train)


def auc(dist, same):
    """Probability that a random genuine pair is closer than a random impostor pair (ties count half)."""
    g, i = dist[same][:, None], dist[~same][None, :]
    return float(((g < i).sum() + 0.5 * (g == i).sum()) / (g.size * i.size))


@needs_lfw
def test_training_lowers_the_loss_and_separates_held_out_identities(trained):
    opts, summary, initial = trained
    model = encoder.load(opts.out)
    split, (cal_x, cal_y), (tr_x, tr_y) = held_out_and_train_images(opts)
    assert not set(split.calibration) & set(split.train)
    assert summary["training"]["people"] == len(split.train)

    # the training loss went down (epoch means; train mode, augmented batches, as the optimiser saw it)
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == opts.epochs
    assert losses[-1] < 0.9 * losses[0]

    def pair_auc(model, x, y, seed):
        pairs, same = calibration_pairs(y, 500, np.random.default_rng(seed))
        emb = encoder.embed(model, x)
        d = distance.paired(emb[pairs[:, 0]], emb[pairs[:, 1]])
        return auc(d, same), d, same

    # on the training identities the embedding now separates genuine from impostor pairs better than at init
    assert pair_auc(model, tr_x, tr_y, 7)[0] > pair_auc(initial, tr_x, tr_y, 7)[0] + 0.05

    # on identities never trained on: genuine pairs closer than impostor pairs, better than chance (0.5)
    held_out_auc, d, same = pair_auc(model, cal_x, cal_y, 123)
    assert d[same].mean() < d[~same].mean()
    assert held_out_auc > 0.6


@needs_lfw
def test_stored_threshold_is_the_one_calibrated_on_held_out_pairs(trained):
    opts, summary, _ = trained
    stored = json.loads((Path(opts.out) / "model.json").read_text())
    assert stored["threshold"] == summary["threshold"]
    assert stored["calibration"]["pairs"] == summary["calibration"]["pairs"]
    assert stored["training"]["people"] == summary["training"]["people"]
    assert "held-out" in stored["calibration"]["source"]
    # recompute: embed the held-out identities with the saved model and choose the threshold again
    _, (cal_x, cal_y), _ = held_out_and_train_images(opts)
    pairs, same = calibration_pairs(cal_y, opts.calibration_pairs, np.random.default_rng(opts.seed + 1))
    emb = encoder.embed(encoder.load(opts.out), cal_x)
    d = distance.paired(emb[pairs[:, 0]], emb[pairs[:, 1]])
    thr, acc = metrics.best_threshold(d, same)
    assert stored["threshold"] == pytest.approx(thr, abs=1e-6)
    assert stored["calibration"]["accuracy"] == pytest.approx(acc)
    assert 0.0 <= stored["threshold"] <= 2.0
    # the stricter operating points: on these same pairs, each threshold's false accept rate is within its FAR
    # each stored only where the impostor pairs can measure it (at least 1/FAR of them), the rest listed
    ops = stored["calibration"]["operating_points"]
    impostors = int((~same).sum())
    assert [op["far"] for op in ops] == [f for f in (1e-2, 1e-3) if impostors * f >= 1]
    assert [op["far"] for op in stored["calibration"]["operating_points_not_measurable"]] == \
        [f for f in (1e-2, 1e-3) if impostors * f < 1]
    for op in ops:
        accepted = distance.is_match(d, op["threshold"])
        assert accepted[~same].mean() <= op["far"] + 1e-12
        assert accepted[same].mean() == pytest.approx(op["tar"], abs=1e-6)
    assert all(b["threshold"] <= a["threshold"] <= stored["threshold"] for a, b in zip(ops, ops[1:] + ops[-1:]))


@pytest.mark.slow  # over 5 s here
@needs_lfw
def test_resume_continues_to_the_same_weights(trained, tmp_path, people):
    opts, summary, _ = trained
    out = tmp_path / "interrupted"

    class Interrupt(Exception):
        pass

    def stop_after_three(line):
        if json.loads(line)["epoch"] == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tiny_options(out, people), progress=False, log=stop_after_three)
    assert (out / "checkpoint.pt").is_file() and not (out / "weights.pt").exists()
    resumed = run(tiny_options(out, people, resume=True), progress=False)
    assert resumed["training"]["epochs"] == 4
    assert resumed["training"]["steps"] == summary["training"]["steps"]
    assert not (out / "checkpoint.pt").exists()  # removed after success (keep_checkpoint=False)
    a = torch.load(Path(opts.out) / "weights.pt", weights_only=True)
    b = torch.load(out / "weights.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert resumed["threshold"] == pytest.approx(summary["threshold"], abs=1e-4)


@needs_lfw
def test_resume_refuses_a_checkpoint_of_other_data(trained, people):
    opts, _, _ = trained
    other = frozenset(sorted(people)[:70])
    with pytest.raises(TrainingError, match="other data or options.*train_people_sha256"):
        run(tiny_options(opts.out, other, resume=True), progress=False)
    # another learning-rate schedule (e.g. a run started under older defaults) is refused too, and named
    with pytest.raises(TrainingError, match=r"epochs 4 \(checkpoint\) vs 70; lr 0.001 \(checkpoint\) vs 0.0005\)"):
        run(tiny_options(opts.out, people, resume=True, lr=5e-4, epochs=70), progress=False)


@needs_lfw
def test_a_model_in_out_is_not_replaced_unless_asked(trained, people):
    """Training into a directory that holds a model would silently change the weights a gallery was
    embedded with; it is refused before any work, and the model stays as it was."""
    opts, _, _ = trained
    before = (Path(opts.out) / "weights.pt").read_bytes()
    with pytest.raises(TrainingError, match="holds a model already.*--overwrite"):
        run(tiny_options(opts.out, people, epochs=1), progress=False)
    assert (Path(opts.out) / "weights.pt").read_bytes() == before


@needs_lfw
def test_excluded_people_are_never_used(people):
    folder = ImageFolder(LFW_ZIP)
    excluded = frozenset(sorted(people)[::2])
    split = split_identities(folder, tiny_options("unused", people, exclude_people=excluded))
    assert not (set(split.train) | set(split.calibration)) & excluded
    assert len(split.train) + len(split.calibration) == len(people) - len(excluded)


@pytest.mark.skipif(not PEOPLE.is_file(), reason=f"needs LFW people.txt under {SHARED}")
def test_read_lfw_people_gives_ten_disjoint_sets():
    sets = read_lfw_people(PEOPLE)
    assert len(sets) == 10
    names = [n for s in sets for n in s]
    assert len(names) == len(set(names)) == 5749


def test_pk_sampler_gives_p_identities_with_k_images_each():
    counts = np.array([2, 5, 3, 8, 4, 2])
    offsets = np.r_[0, np.cumsum(counts)[:-1]]
    sampler = PKSampler(offsets, counts, p=3, k=4, rng=np.random.default_rng(0))
    seen = set()
    for idx, lab in sampler.epoch():
        assert idx.shape == (12,) and lab.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        ident = np.searchsorted(offsets, idx, side="right") - 1
        groups = ident.reshape(3, 4)
        assert all(len(set(g)) == 1 for g in groups) and len({g[0] for g in groups}) == 3
        seen.update(int(g[0]) for g in groups)
        for g, ix in zip(groups, idx.reshape(3, 4)):  # no repeats when the identity has K images or more
            if counts[g[0]] >= 4:
                assert len(set(ix)) == 4
    assert seen == set(range(6))  # every identity once per epoch


def test_augmentation_keeps_shape_and_range_and_varies():
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    a, b = augment_batch(x, g), augment_batch(x, g)
    assert a.shape == (6, 3, 32, 32) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, b)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    assert lr_factor(0.0, 0.1, 0.01) < lr_factor(0.05, 0.1, 0.01) < lr_factor(0.1, 0.1, 0.01) == pytest.approx(1.0)
    assert lr_factor(0.5, 0.1, 0.01) < 1.0
    assert lr_factor(1.0, 0.1, 0.01) == pytest.approx(0.01)


def test_bad_options_are_rejected(tmp_path):
    with pytest.raises(TrainingError, match="images_per_identity"):
        run(TrainOptions(data=tmp_path, out=tmp_path / "m", images_per_identity=1), progress=False)
    with pytest.raises(TrainingError, match="margins"):
        run(TrainOptions(data=tmp_path, out=tmp_path / "m", pos_margin=0.7, neg_margin=0.5), progress=False)


def test_cuda_graph_step_is_refused_where_it_cannot_run(tmp_path):
    with pytest.raises(TrainingError, match="fp16"):
        TrainOptions(data=tmp_path, out=tmp_path / "m", cuda_graph=True, amp="fp16").validate()
    with pytest.raises(TrainingError, match="CUDA device"):
        run(TrainOptions(data=tmp_path, out=tmp_path / "m", cuda_graph=True, device="cpu"), progress=False)
    model = encoder.build(ModelConfig(input_size=32), pretrained=None)
    opts = TrainOptions(data=".", out=".")
    with pytest.raises(TrainingError, match="CUDA device"):
        TrainStep(model, ContrastiveLoss(), make_optimizer(model, opts, torch.device("cpu")), None,
                  torch.device("cpu"), cuda_graph=True)


def _tiny_trainer(lr_scale: float = 1.0):
    """A random-init 32 px model and its eager TrainStep, the same start every call."""
    torch.manual_seed(0)
    model = encoder.build(ModelConfig(input_size=32), pretrained=None).train()
    model.dropout.p = 0.0
    opt = make_optimizer(model, TrainOptions(data=".", out="."), torch.device("cpu"))
    for g in opt.param_groups:
        g["base_lr"] *= lr_scale
    return model, TrainStep(model, ContrastiveLoss(), opt, None, torch.device("cpu"))


def test_step_comparison_passes_the_same_step_and_catches_one_that_does_not_train():
    # the check the GPU run uses to trust the CUDA graph step (benchmarks/train_speed.py graph_check)
    from benchmarks.train_speed import compare_trainers

    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(8, 3, 32, 32, generator=gen) for _ in range(4)]
    labels = torch.arange(4).repeat_interleave(2)
    factors = [1.0, 0.7, 0.4, 0.1]
    same = compare_trainers(_tiny_trainer, _tiny_trainer, batches, labels, factors)
    assert same["ok"] and same["param_diff_ratio"] < 1e-6 and same["update_norm"] > 0
    frozen = compare_trainers(_tiny_trainer, lambda: _tiny_trainer(0.0), batches, labels, factors)
    assert not frozen["ok"] and frozen["param_diff_ratio"] > 0.5
    slower = compare_trainers(_tiny_trainer, lambda: _tiny_trainer(0.5), batches, labels, factors)
    assert not slower["ok"]  # half the learning rate: the set_lr schedule did not arrive

    def stale_statistics():  # trains the same weights but never updates BatchNorm's running statistics
        model, step = _tiny_trainer()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = 0.0
        return model, step

    stale = compare_trainers(_tiny_trainer, stale_statistics, batches, labels, factors)
    assert stale["param_diff_ratio"] < 1e-6 and stale["buffer_diff_ratio"] > 0.5 and not stale["ok"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_step_trains_like_the_eager_step():
    from benchmarks.train_speed import graph_check

    pixels = np.random.default_rng(0).integers(0, 256, (64, 3, 64, 64), dtype=np.uint8)
    res = graph_check(torch.device("cuda"), pixels, 8, 4, steps=10, weights=WEIGHTS)
    assert res["ok"], res


def _hub_with_the_setup_checkpoint(tmp_path, monkeypatch) -> Path:
    """A torch hub cache holding what `make setup` copies there: torchvision's IMAGENET1K_V1 checkpoint
    of mobilenet_v2 (its default is IMAGENET1K_V2, another file)."""
    hub = tmp_path / "torch-home"
    (hub / "hub" / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(hub))
    return hub / "hub" / "checkpoints"


def test_imagenet_start_is_found_under_any_of_torchvision_s_names(tmp_path, monkeypatch):
    checkpoints = _hub_with_the_setup_checkpoint(tmp_path, monkeypatch)
    with pytest.raises(encoder.ModelFileError, match=f"not found in {checkpoints}"):
        encoder.build(ModelConfig(input_size=32), pretrained="imagenet")
    shutil.copy(WEIGHTS, checkpoints / WEIGHTS.name)
    trunk = encoder.build(ModelConfig(input_size=32), pretrained="imagenet").trunk.state_dict()
    state = torch.load(WEIGHTS, weights_only=True)
    assert all(torch.equal(v, state[f"features.{k}"]) for k, v in trunk.items())


@needs_lfw
def test_cli_trains_and_reports_json(tmp_path, people, monkeypatch):
    """`facesearch train DATA` with the default ImageNet start, as the README runs it after `make setup`."""
    shutil.copy(WEIGHTS, _hub_with_the_setup_checkpoint(tmp_path, monkeypatch) / WEIGHTS.name)
    names = tmp_path / "people.txt"
    names.write_text("\n".join(sorted(people)[:36]) + "\n")
    out = tmp_path / "cli-model"
    result = CliRunner().invoke(train_cmd, [
        str(LFW_ZIP), "--out", str(out), "--input-size", "48", "--epochs", "1",
        "--pk", "8", "2", "--include-people", str(names), "--calibration-fraction", "0.2", "--device", "cpu",
        "--no-flip-average", "--json",
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    cfg = ModelConfig.load(out / "model.json")
    assert cfg.threshold == summary["threshold"]
    assert cfg.training["options"]["pretrained"] == f"imagenet:{WEIGHTS.name}"  # which file the cache gave
    assert cfg.flip_average is False
    assert summary["training"]["images_per_s"] > 0


@needs_lfw
def test_fine_tuning_starts_from_the_given_model_and_records_it(trained, tmp_path, people):
    """--init-model: every weight (embedding head included) comes from the given model, its architecture
    too (48 px here, never passed), and the new model records what the old one was trained on."""
    opts, first, _ = trained
    names = tmp_path / "people.txt"
    names.write_text("\n".join(sorted(people)[:36]) + "\n")
    common = [str(LFW_ZIP), "--init-model", str(opts.out), "--epochs", "1", "--pk", "8", "2", "--include-people",
              str(names), "--calibration-fraction", "0.2", "--device", "cpu", "--no-augment"]
    out = tmp_path / "tuned"
    result = CliRunner().invoke(train_cmd, common + ["--out", str(out), "--lr", "1e-7", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert ModelConfig.load(out / "model.json").input_size == 48
    # the Python API likewise: input_size left out is the given model's, not the recipe's default
    api = TrainOptions(data=LFW_ZIP, out=tmp_path / "api", init_model=opts.out, pretrained=None)
    api.validate()
    assert api.input_size == 48 != TRAIN_INPUT_SIZE
    assert TrainOptions(data=LFW_ZIP, out=tmp_path / "api").input_size == TRAIN_INPUT_SIZE
    base, tuned = encoder.load(opts.out), encoder.load(out)
    fresh = encoder.build(ModelConfig(input_size=48), pretrained=WEIGHTS)

    def max_diff(a, b):
        return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))

    assert max_diff(tuned, base) < 1e-4  # a vanishing lr: still the given model's weights
    assert max_diff(fresh, base) > 1e-2  # which an ImageNet start would not have been
    init = summary["training"]["init_model"]
    assert init["weights_sha256"] == encoder.weights_sha256(opts.out)
    assert init["trained_on"]["people"] == first["training"]["people"]
    assert init["trained_on"]["people_sha256"] == first["training"]["people_sha256"]

    # the evaluation warns that the fine-tuned model has seen LFW through the model it started from
    from facesearch.cli.evaluate import _training_note

    assert any("fine-tuned from" in ln for ln in _training_note({"training": summary["training"]}))
    assert any(ln.startswith("warning: this model was trained on LFW")
               for ln in _training_note({"training": dict(summary["training"], data="my-people")}))
    # fine-tuned from the built-in model (which saw every fold's people): no fold is honest, said plainly
    from facesearch.model.config import BUILTIN_MODELS

    builtin = {"name": "facesearch-mobilenet_v2-lfw-all", "weights_sha256": encoder.weights_sha256(BUILTIN_MODELS /
               "lfw-mobilenet"), "trained_on": {"data": "lfw-deepfunneled-112.zip", "people": 1512}}
    note = _training_note({"training": dict(summary["training"], data="my-people", init_model=builtin)})
    assert any(ln.startswith("warning: this is, or was fine-tuned from, the built-in model") for ln in note)

    # a resume continues the same lineage: the ImageNet-started run's checkpoint is refused as a fine-tune
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(Path(opts.out) / "checkpoint.pt", resumed / "checkpoint.pt")
    with pytest.raises(TrainingError, match="other data or options"):
        run(dataclasses.replace(opts, out=resumed, resume=True, init_model=opts.out, pretrained=None),
            progress=False)

    clash = CliRunner().invoke(train_cmd, common + ["--out", str(tmp_path / "x"), "--input-size", "64"])
    assert clash.exit_code != 0 and "use its settings" in clash.output
    both = CliRunner().invoke(train_cmd, common + ["--out", str(tmp_path / "y"), "--pretrained", str(WEIGHTS)])
    assert both.exit_code == 2 and "give one" in both.output
    missing = CliRunner().invoke(train_cmd, common[:1] + ["--init-model", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "not a facesearch model directory" in missing.output


@needs_lfw
def test_cli_decode_cache_is_filled_once_and_reused(tmp_path):
    from tests.conftest import extract_people

    data = extract_people(tmp_path / "faces", {n: 3 for n in _people_with(3)[:8]})
    args = [str(data), "--pretrained", str(WEIGHTS), "--input-size", "32", "--epochs", "1", "--pk", "4", "2",
            "--calibration-fraction", "0.25", "--device", "cpu", "--decode-cache", str(tmp_path / "cache"), "--json"]
    first = CliRunner().invoke(train_cmd, [*args, "--out", str(tmp_path / "m1")])
    assert first.exit_code == 0, first.output
    cfg = ModelConfig.load(tmp_path / "m1" / "model.json")
    path = ImageFolder(data).cache_path(tmp_path / "cache", cfg)
    assert np.load(path, mmap_mode="r").shape == (24, 3, 32, 32)
    stamp = path.stat().st_mtime_ns
    second = CliRunner().invoke(train_cmd, [*args, "--out", str(tmp_path / "m2")])
    assert second.exit_code == 0, second.output
    assert path.stat().st_mtime_ns == stamp  # read, not rewritten
    assert json.loads(second.output)["threshold"] == pytest.approx(json.loads(first.output)["threshold"], abs=1e-4)


def _people_with(n: int) -> list[str]:
    folder = ImageFolder(LFW_ZIP)
    return [p for p in folder.identities() if len(folder.items[p]) >= n]


@needs_lfw
def test_models_trained_by_default_embed_a_single_view(trained):
    opts, summary, _ = trained
    assert ModelConfig.load(Path(opts.out) / "model.json").flip_average is False
    assert summary["training"]["options"]["flip_average"] is False


def test_cli_reports_errors_clearly(tmp_path):
    (tmp_path / "a").mkdir()
    result = CliRunner().invoke(train_cmd, [str(tmp_path), "--out", str(tmp_path / "m"), "--exclude-lfw-fold", "3"])
    assert result.exit_code != 0 and "people.txt" in result.output
    result = CliRunner().invoke(train_cmd, [str(tmp_path), "--out", str(tmp_path / "m"), "--pretrained", "none"])
    assert result.exit_code == 1 and "training identities" in result.output


@needs_lfw
def test_calibrate_rebuilds_the_held_out_identities_and_can_switch_mirror_averaging(trained, tmp_path, people):
    import shutil

    from facesearch.cli.train import calibrate as calibrate_cmd

    opts, summary, _ = trained
    model = tmp_path / "model"
    shutil.copytree(opts.out, model, ignore=shutil.ignore_patterns("checkpoint.pt"))
    names = tmp_path / "people.txt"
    names.write_text("\n".join(sorted(people)) + "\n")
    base = [str(model), str(LFW_ZIP), "--include-people", str(names), "--device", "cpu", "--json"]
    on = CliRunner().invoke(calibrate_cmd, [*base, "--flip-average"])
    assert on.exit_code == 0, on.output
    cfg = ModelConfig.load(model / "model.json")
    assert cfg.flip_average is True and cfg.threshold == json.loads(on.output)["threshold"]
    assert cfg.calibration["recalibrated"]["previous_threshold"] == summary["threshold"]
    # the threshold is the best one for mirror-averaged embeddings of the held-out identities
    _, (cal_x, cal_y), _ = held_out_and_train_images(opts)
    pairs, same = calibration_pairs(cal_y, opts.calibration_pairs, np.random.default_rng(opts.seed + 1))
    emb = encoder.embed(encoder.load(model), cal_x)
    assert cfg.threshold == pytest.approx(metrics.best_threshold(distance.paired(emb[pairs[:, 0]], emb[pairs[:, 1]]),
                                                                 same)[0], abs=1e-6)
    # back to single-view embeddings: the very threshold training chose
    off = CliRunner().invoke(calibrate_cmd, [*base, "--no-flip-average"])
    assert off.exit_code == 0, off.output
    assert ModelConfig.load(model / "model.json").threshold == pytest.approx(summary["threshold"], abs=1e-6)
    # other identities than training used: refused, model.json unchanged
    names.write_text("\n".join(sorted(people)[:-5]) + "\n")
    before = (model / "model.json").read_bytes()
    bad = CliRunner().invoke(calibrate_cmd, base)
    assert bad.exit_code == 1 and "could not be rebuilt" in bad.output
    assert (model / "model.json").read_bytes() == before
