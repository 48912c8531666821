"""Folders of identities and the decoded-pixel cache, on real LFW images."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from facesearch.model import encoder
from facesearch.model.config import ModelConfig
from facesearch.datasets import ImageFolder

from tests.conftest import LFW_ZIP, extract_people, needs_lfw

CFG = ModelConfig(input_size=48)


@pytest.fixture()
def folder_dir(tmp_path):
    return extract_people(tmp_path / "faces", {"Bill_Gates": 3, "Colin_Powell": 3, "Tony_Blair": 2})


@needs_lfw
def test_cache_gives_the_same_pixels_and_is_owner_only(folder_dir, tmp_path):
    folder = ImageFolder(folder_dir)
    keys = [k for n in folder.identities() for k in folder.items[n]][::-1]  # any order, any subset
    plain = folder.load_prepared(keys, CFG)
    cache = tmp_path / "cache"
    first = folder.load_prepared(keys[:3], CFG, cache=cache)  # builds the cache for the whole folder
    path = folder.cache_path(cache, CFG)
    assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    np.testing.assert_array_equal(first, plain[:3])
    again = ImageFolder(folder_dir).load_prepared(keys, CFG, cache=cache)  # read from the cache
    np.testing.assert_array_equal(again, plain)
    assert list(cache.iterdir()) == [path]  # no temporary files left behind


@needs_lfw
def test_cache_follows_changes_to_the_images_and_the_preprocessing(folder_dir, tmp_path):
    cache = tmp_path / "cache"
    folder = ImageFolder(folder_dir)
    key = folder.items["Bill_Gates"][0]
    before = folder.load_prepared([key], CFG, cache=cache)
    # replace the image's content in place (same name): the cache must not serve the old pixels
    other = folder.items["Tony_Blair"][0]
    with open(key, "wb") as f:
        f.write(open(other, "rb").read())
    st = os.stat(key)
    os.utime(key, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    folder = ImageFolder(folder_dir)
    after = folder.load_prepared([key], CFG, cache=cache)
    assert not np.array_equal(after, before)
    np.testing.assert_array_equal(after, folder.load_prepared([other], CFG))
    # another input size is another cache file
    assert folder.cache_path(cache, ModelConfig(input_size=64)) != folder.cache_path(cache, CFG)
    assert folder.load_prepared([key], ModelConfig(input_size=64), cache=cache).shape == (1, 3, 64, 64)


@needs_lfw
def test_a_damaged_cache_file_is_rebuilt(folder_dir, tmp_path):
    cache = tmp_path / "cache"
    folder = ImageFolder(folder_dir)
    keys = [k for n in folder.identities() for k in folder.items[n]]
    good = folder.load_prepared(keys, CFG, cache=cache)
    path = folder.cache_path(cache, CFG)
    path.write_bytes(path.read_bytes()[:1000])  # truncated, e.g. by a full disk
    np.testing.assert_array_equal(folder.load_prepared(keys, CFG, cache=cache), good)
    assert path.stat().st_size > 1000


@pytest.mark.slow  # over 5 s here
@needs_lfw
def test_cache_works_for_the_lfw_zip(tmp_path):
    folder = ImageFolder(LFW_ZIP)
    keys = folder.items["Bill_Gates"][:2] + folder.items["Aaron_Eckhart"]
    cfg = ModelConfig(input_size=32)
    np.testing.assert_array_equal(folder.load_prepared(keys, cfg, cache=tmp_path), folder.load_prepared(keys, cfg))
    with pytest.raises(Exception, match="not an image of"):
        folder.load_prepared(["nope/x.webp"], cfg, cache=tmp_path)


@needs_lfw
def test_flip_average_embeds_the_face_and_its_mirror_image(model_dir):
    model = encoder.load(model_dir)  # ImageNet trunk (a random network barely depends on its input)
    folder = ImageFolder(LFW_ZIP)
    x = folder.load_prepared(folder.items["Bill_Gates"][:3] + folder.items["Tony_Blair"][:2], model.config)
    plain = encoder.embed(model, x)
    mirrored = encoder.embed(model, x[..., ::-1].copy())
    assert not np.allclose(plain, mirrored, atol=1e-3)  # the network itself is not mirror-symmetric
    model.config.flip_average = True
    both = encoder.embed(model, x, batch_size=2)  # batches of 2 + a last one of 1
    expect = plain + mirrored
    expect /= np.linalg.norm(expect, axis=1, keepdims=True)
    np.testing.assert_allclose(both, expect, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-5)
    # a mirrored face now has the same embedding as the face
    np.testing.assert_allclose(encoder.embed(model, x[..., ::-1].copy()), both, atol=1e-5)
    # and the setting travels with the model's config
    assert ModelConfig.from_dict(model.config.to_dict()).flip_average is True
