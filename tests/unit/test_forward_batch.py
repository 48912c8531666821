"""The forward batch that suits a model on the CPU (facesearch.model.inference.forward_batch), and the
gallery's embedding splitting its batches into it; on real (randomly initialised) networks."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from facesearch.gallery.embedding import GalleryModel
from facesearch.model import encoder, inference
from facesearch.model.config import ModelConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a busy 2-core machine a 2-thread region waits for the other core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def net(**kw) -> encoder.Encoder:
    torch.manual_seed(0)
    return encoder.build(ModelConfig(**kw), pretrained=None).eval()


def test_largest_activation_is_measured_from_the_network():
    """MobileNetV2 at 112 px: its largest layer output is the first block's 96 x 56 x 56 expansion;
    SFace keeps 64 channels at full resolution (3x as large: why batch 64 suits it badly)."""
    mnv2 = inference.largest_activation_bytes(inference.inference_copy(net()))
    assert mnv2 == 96 * 56 * 56 * 4
    sface = inference.largest_activation_bytes(net(backbone="sface", input_size=112, embedding_dim=128))
    assert sface == 64 * 112 * 112 * 4
    assert inference.largest_activation_bytes(net(input_size=224)) == 4 * mnv2


def test_forward_batch_follows_the_activation_budget():
    mnv2 = net()
    assert inference.forward_batch(mnv2) == 16  # 1.15 MB an image, 32 MiB
    assert inference.forward_batch(net(backbone="sface", embedding_dim=128)) == 8  # 3.06 MB
    assert inference.forward_batch(net(input_size=224)) == 4
    assert inference.forward_batch(net(flip_average=True)) == 8  # each image embedded with its mirror
    assert inference.forward_batch(mnv2, budget=1) == 1  # at least one
    assert inference.forward_batch(mnv2, budget=2**40) == inference.MAX_FORWARD_BATCH
    assert inference.forward_batch(mnv2, most=12) == 8  # a power of two


class Passes:
    """Counts the forward passes of a network and the images in each (a hook on the real module)."""

    def __init__(self, module):
        self.sizes: list[int] = []
        module.register_forward_pre_hook(lambda _m, args: self.sizes.append(len(args[0])))


@pytest.mark.parametrize("given", [None, 64, 5])
def test_gallery_embeds_in_the_models_forward_batch_unless_told(given):
    model = GalleryModel(encoder.build(ModelConfig(), pretrained=None).eval())
    model.forward_batch = given
    crops = list(np.random.default_rng(0).integers(0, 256, (20, 3, 112, 112), dtype=np.uint8))
    first = model.embed_crops(crops[:1], "")  # builds the inference copy
    passes = Passes(model._fast[1])
    emb = model.embed_crops(crops, "")
    want = {None: [16, 4], 64: [20], 5: [5] * 4}[given]
    assert passes.sizes == want
    # the same embeddings whatever the split
    assert np.allclose(emb[:1], first, atol=1e-5)
    assert np.allclose(emb, encoder.embed(model._fast[1], np.stack(crops), batch_size=20), atol=1e-5)
