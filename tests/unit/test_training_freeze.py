"""Frozen blocks and training on their cached outputs: real networks (random weights), real steps."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from facesearch import distance
from facesearch.losses import ContrastiveLoss
from facesearch.model import encoder
from facesearch.model.config import ModelConfig
from facesearch.training import TrainingError, TrainOptions, TrainStep, make_optimizer
from facesearch.training.freeze import (
    TrainForward,
    block_names,
    cut_of,
    freeze,
    frozen_features,
    set_train_mode,
    wants_cache,
)
from facesearch.training.inputs import Inputs


def net(backbone="mobilenet_v2", size=48, seed=0):
    torch.manual_seed(seed)
    return encoder.Encoder(ModelConfig(backbone=backbone, input_size=size))


def batch(n=8, size=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


@pytest.mark.parametrize("backbone,size,count", [("mobilenet_v2", 32, 20), ("sface", 112, 15), ("resnet18", 32, 9)])
def test_the_blocks_in_order_are_the_encoder(backbone, size, count):
    m = net(backbone, size).eval()
    x = batch(2, size).float() / 255
    h = m.normalise_input(x)
    for _, b in m.blocks():
        h = b(h)
    assert len(m.blocks()) == count
    assert block_names(m)[-1] == "embedding"
    torch.testing.assert_close(distance.normalize(h), m(x), rtol=0, atol=1e-6)
    # the blocks hold every parameter of the network, each once
    params = {id(p) for _, b in m.blocks() for p in b.parameters()}
    assert params == {id(p) for p in m.parameters()}


def test_sface_blocks_are_named_after_its_layers():
    assert block_names(net("sface", 112)) == ["conv_1"] + [f"conv_{k}" for k in range(2, 15)] + ["embedding"]


def test_asking_for_more_blocks_than_there_are_names_them():
    m = net()
    assert cut_of(m, None) == 0 and cut_of(m, 20) == 0 and cut_of(m, 3) == 17
    with pytest.raises(TrainingError, match=r"has 20 blocks \(features.0, features.1, .*embedding\)"):
        cut_of(m, 21)


def _step(model, forward, x, y, wd=0.05):
    opts = TrainOptions(data=".", out=".", lr=1e-2, weight_decay=wd)
    opt = make_optimizer(model, opts, torch.device("cpu"))
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    step = TrainStep(forward, ContrastiveLoss(0.0, 0.6, "all"), opt, None, torch.device("cpu"))
    return step(x, y)


def test_a_step_leaves_frozen_blocks_as_they_were_and_moves_the_others():
    m = net()
    cut = cut_of(m, 3)
    freeze(m, cut)
    set_train_mode(m, cut)
    before = copy.deepcopy(m.state_dict())
    _step(m, TrainForward(m, cut, cached=False), batch().float() / 255, LABELS)
    after = m.state_dict()
    frozen = {f"trunk.{i}" for i in range(cut)}  # mobilenet_v2's trunk.<i> is block features.<i>
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    assert not {k for k in changed if k.split(".")[0] + "." + k.split(".")[1] in frozen}
    # batch-norm statistics of frozen blocks unchanged too (they are buffers: eval mode keeps them)
    assert torch.equal(before["trunk.16.conv.1.1.running_mean"], after["trunk.16.conv.1.1.running_mean"])
    # every trained block moved: its weights, and its batch-norm statistics (train mode)
    for key in ("trunk.17.conv.0.0.weight", "trunk.18.0.weight", "head.weight", "trunk.18.1.running_mean"):
        assert key in changed, key
    # the frozen parameters are in no optimiser group (no weight decay on them either)
    opt = make_optimizer(m, TrainOptions(data=".", out="."), torch.device("cpu"))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for _, b in m.blocks()[:cut] for p in b.parameters()}


@pytest.mark.parametrize("backbone,size,keep", [
    ("mobilenet_v2", 48, 3), pytest.param("sface", 112, 2, marks=pytest.mark.slow)])  # sface: 5-8 s here
def test_training_on_cached_outputs_is_the_same_step(backbone, size, keep):
    """Same start, same batch: the loss, every gradient and the weights after the step agree between the
    step that runs the frozen blocks and the one that reads their cached outputs (dropout seeded alike)."""
    a = net(backbone, size)
    cut = cut_of(a, keep)
    freeze(a, cut)
    b = copy.deepcopy(a)
    x = batch(8, size)
    feats = frozen_features(b, cut, x)
    assert feats.shape[0] == 8 and not feats.requires_grad
    out = []
    for model, forward, inp in ((a, TrainForward(a, cut, cached=False), x.float() / 255),
                                (b, TrainForward(b, cut, cached=True), feats)):
        set_train_mode(model, cut)
        torch.manual_seed(5)  # the same dropout mask in both
        loss, emb = _step(model, forward, inp, LABELS)
        out.append((loss.item(), emb.detach(), {k: p.grad.clone() for k, p in model.named_parameters()
                                                if p.grad is not None}, model.state_dict()))
    (la, ea, ga, sa), (lb, eb, gb, sb) = out
    assert la == pytest.approx(lb, rel=1e-5, abs=1e-7) and la > 0
    torch.testing.assert_close(ea, eb, rtol=1e-5, atol=1e-6)
    assert ga.keys() == gb.keys() and ga
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-4, atol=1e-6, msg=k)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-6, msg=k)


def test_cached_mirror_images_are_the_frozen_outputs_of_the_flipped_images():
    m = net()
    cut = cut_of(m, 2)
    x = batch(4)
    both = frozen_features(m, cut, x, flip=True)
    assert both.shape[0] == 8
    torch.testing.assert_close(both[4:], frozen_features(m, cut, x.flip(3)))
    # a batch of cached rows: each row is its image's output, or its mirror image's
    inputs = Inputs(labelled=both, n_labelled=4, unlabelled=None, n_unlabelled=0, per_batch_unlabelled=0,
                    cached=True, views=2, augment="flip")
    got, t = inputs.batch(np.array([0, 1, 2, 3, 0, 1, 2, 3]), torch.device("cpu"), torch.Generator().manual_seed(0),
                          np.random.default_rng(0))
    assert t is None
    picks = [next(v for v in (0, 1) if torch.equal(got[j], both[(j % 4) + 4 * v])) for j in range(8)]
    assert set(picks) == {0, 1}  # both views occur


def test_the_cache_is_used_only_when_nothing_random_comes_before_the_cut():
    o = TrainOptions(data=".", out=".", augment="flip")
    assert wants_cache(o, 5) and not wants_cache(o, 0)
    assert not wants_cache(TrainOptions(data=".", out=".", augment="full"), 5)
    assert not wants_cache(TrainOptions(data=".", out=".", augment="off", feature_cache="off"), 5)
    assert TrainOptions(data=".", out=".", augment=False).augment == "off"  # the old bool still works
    assert TrainOptions(data=".", out=".", augment=True).augment == "full"


@pytest.mark.parametrize("kw,message", [
    ({"train_last_blocks": 0}, "at least 1"),
    ({"feature_cache": "on"}, "needs frozen blocks"),
    ({"feature_cache": "on", "train_last_blocks": 2}, "needs augment 'flip' or 'off'"),
    ({"augment": "some"}, "augment must be one of"),
    ({"teacher_data": "x"}, "teacher-data is for distillation: it needs a teacher"),
    ({"unlabelled": "x"}, "unlabelled is for distillation"),
    ({"teacher": "t", "teacher_unlabelled": "x"}, "needs unlabelled"),
    ({"teacher": "t", "distill": "kl"}, "distill must be one of"),
    ({"teacher": "t", "distill_weight": 0}, "distill_weight must be positive"),
])
def test_bad_freezing_and_distillation_options_are_refused(kw, message):
    with pytest.raises(TrainingError, match=message):
        TrainOptions(data=".", out=".", **kw).validate()


def test_the_disk_cache_gives_a_deeper_cut_from_a_shallower_one(tmp_path):
    """Outputs stored for 5 frozen blocks give those of 8 by running blocks 5-7 on them: the same numbers
    as from the images (which the second call does not even get: they are blanked)."""
    from facesearch.training.freeze import build_feature_cache

    m = net()
    x = batch(6)
    five = build_feature_cache(m, 5, x, True, tmp_path, {"data": "x"})
    assert not five.from_disk and five.features.shape[0] == 12
    blank = torch.zeros_like(x)
    eight = build_feature_cache(m, 8, blank, True, tmp_path, {"data": "x"})
    torch.testing.assert_close(eight.features, frozen_features(m, 8, x, flip=True), rtol=1e-5, atol=1e-6)
    again = build_feature_cache(m, 8, blank, False, tmp_path, {"data": "x"})  # without the mirror images
    assert again.from_disk and torch.equal(again.features, eight.features[:6])
    other = build_feature_cache(m, 8, x, True, tmp_path, {"data": "y"})  # other images: computed afresh
    assert not other.from_disk
