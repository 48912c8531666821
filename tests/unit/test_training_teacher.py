"""Distillation's data: matching an image across copies, the unlabelled images a run may use, and the
checks a teacher must pass before any image is read. Small real image files written here."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from facesearch.model import encoder
from facesearch.model.config import ModelConfig
from facesearch.training import TrainingError, TrainOptions
from facesearch.training.data import Split, image_stem, scan_images, unlabelled_images
from facesearch.training.teacher import _view_keys, load_teacher

ARCFACE = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]


def write_png(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)


def test_an_image_is_named_by_identity_and_stem_in_every_copy(tmp_path):
    assert image_stem("Ann", "lfw-deepfunneled-112/Ann/Ann_0001.webp") == "Ann/Ann_0001"
    assert image_stem("Ann", str(tmp_path / "copy" / "Ann" / "Ann_0001.png")) == "Ann/Ann_0001"
    # a folder and a zip with one top folder give the same relative stems
    for name in ("Ann/Ann_0001.png", "Ann/Ann_0002.png", "Bob/Bob_0001.png", "flat.png", ".hidden/x.png"):
        write_png(tmp_path / "dir" / name)
    with zipfile.ZipFile(tmp_path / "pack.zip", "w") as z:
        for f in sorted((tmp_path / "dir").rglob("*.png")):
            z.write(f, f"top/{f.relative_to(tmp_path / 'dir').as_posix()}")
        z.writestr("top/notes.txt", "not an image")
    in_dir, in_zip = scan_images(tmp_path / "dir"), scan_images(tmp_path / "pack.zip")
    assert sorted(in_dir) == sorted(in_zip) == ["Ann/Ann_0001", "Ann/Ann_0002", "Bob/Bob_0001", "flat"]
    assert in_zip["Bob/Bob_0001"] == "top/Bob/Bob_0001.png"
    assert in_dir["flat"] == str(tmp_path / "dir" / "flat.png")


def test_unlabelled_images_of_people_the_run_must_not_see_are_left_out(tmp_path):
    for name in ("Held/Held_0001.png", "Excl/Excl_0001.png", "Train/Train_0001.png", "Single/Single_0001.png",
                 "loose.png"):
        write_png(tmp_path / "u" / name)
    split = Split(train=["Train"], calibration=["Held"], skipped_small=0)
    opts = TrainOptions(data=".", out=".", exclude_people=frozenset({"Excl"}))
    u = unlabelled_images(tmp_path / "u", split, opts)
    assert u.stems == ["Single/Single_0001", "loose"]
    assert (u.left_out_people, u.left_out_labelled) == (2, 1)
    only = TrainOptions(data=".", out=".", include_people=frozenset({"Train", "Held"}))
    assert unlabelled_images(tmp_path / "u", split, only).stems == ["loose"]  # nothing says who it shows
    (tmp_path / "u" / "loose.png").unlink()
    with pytest.raises(TrainingError, match="no unlabelled images to use"):
        unlabelled_images(tmp_path / "u", split, only)


def test_a_teacher_copy_missing_images_is_refused_with_examples(tmp_path):
    write_png(tmp_path / "t" / "Ann" / "Ann_0001.png")
    keys = _view_keys(tmp_path / "t", False, ["a", "b"], ["Ann/Ann_0001", "Ann/Ann_0002"][:1], "training")
    assert keys == [str(tmp_path / "t" / "Ann" / "Ann_0001.png")]
    with pytest.raises(TrainingError, match=r"1 of the training images are not in .* e\.g\. Ann/Ann_0002"):
        _view_keys(tmp_path / "t", False, ["a", "b"], ["Ann/Ann_0001", "Ann/Ann_0002"], "training")


def _model_dir(path, **cfg):
    torch.manual_seed(0)
    c = ModelConfig(**({"backbone": "mobilenet_v2", "input_size": 32} | cfg))
    encoder.save(encoder.Encoder(c), path, c)
    return path


def test_a_teacher_whose_embeddings_cannot_be_compared_is_refused_before_training(tmp_path):
    teacher = _model_dir(tmp_path / "t", embedding_dim=64)
    student = ModelConfig(embedding_dim=128)
    with pytest.raises(TrainingError, match=r"gives 64-d embeddings and the student 128-d.*--embedding-dim 64.*"
                                            r"--distill relation"):
        load_teacher(TrainOptions(data=".", out=".", teacher=teacher), student)
    # relation distillation compares distances: any sizes
    assert load_teacher(TrainOptions(data=".", out=".", teacher=teacher, distill="relation"), student).sha256
    with pytest.raises(TrainingError, match="teacher .*nothing"):
        load_teacher(TrainOptions(data=".", out=".", teacher=tmp_path / "nothing"), student)


def test_a_teacher_with_its_own_template_needs_images_aligned_for_it(tmp_path):
    teacher = _model_dir(tmp_path / "t", alignment=ARCFACE)
    student = ModelConfig()
    with pytest.raises(TrainingError, match=r"aligned to its own template, the student's crops are aligned to "
                                            r"the LFW pack's geometry: give .*--teacher-data.*realign_pack\.py"):
        load_teacher(TrainOptions(data=".", out=".", teacher=teacher), student)
    ok = TrainOptions(data=".", out=".", teacher=teacher, teacher_data=tmp_path)
    assert load_teacher(ok, student).config.alignment == ARCFACE
    with pytest.raises(TrainingError, match="--teacher-unlabelled"):
        load_teacher(TrainOptions(data=".", out=".", teacher=teacher, teacher_data=tmp_path, unlabelled=tmp_path),
                     student)
    # a student with the teacher's template (fine-tuned from it) shares its crops
    assert load_teacher(TrainOptions(data=".", out=".", teacher=teacher), ModelConfig(alignment=ARCFACE))


@pytest.mark.parametrize("flip", [False, True])
def test_teacher_targets_through_the_disk_cache_are_its_embeddings(tmp_path, flip):
    """With a decode cache the targets come from the teacher's chain of blocks (stored, or continued
    from a shallower stored cut): the same unit vectors ``encoder.embed`` gives, mirror-averaged or not."""
    from facesearch.datasets import ImageFolder
    from facesearch.training.freeze import build_feature_cache, images_ident
    from facesearch.training.teacher import Teacher, teacher_embeddings

    for i in range(6):
        write_png(tmp_path / "data" / f"P{i % 2}" / f"P{i % 2}_{i:04d}.png", seed=i)
    teacher_dir = _model_dir(tmp_path / "t")
    cfg = ModelConfig.load(teacher_dir / "model.json")
    teacher = Teacher(str(teacher_dir), teacher_dir, cfg, encoder.weights_sha256(teacher_dir))
    folder = ImageFolder(tmp_path / "data")
    keys = [k for n in folder.identities() for k in folder.items[n]]
    stems = [f"{k.split('/')[-2]}/{k.split('/')[-1][:-4]}" for k in keys]
    net = encoder.load(teacher_dir)
    net.config.flip_average = flip
    want = encoder.embed(net, folder.load_prepared(keys, cfg))
    opts = TrainOptions(data=tmp_path / "data", out=tmp_path, teacher=teacher_dir, teacher_flip_average=flip,
                        decode_cache=tmp_path / "cache")
    # a fine-tuning run of the same network stored its first 12 blocks' outputs on these images
    pixels = torch.from_numpy(folder.load_prepared(keys, cfg))
    build_feature_cache(net, 12, pixels, flip, opts.decode_cache, images_ident(tmp_path / "data", keys, cfg))
    got, _, hit = teacher_embeddings(teacher, opts, torch.device("cpu"), tmp_path / "data", keys, stems, None, "x")
    assert not hit  # made from the stored cut, not stored as it is
    np.testing.assert_allclose(got, want, atol=1e-5)
    again, _, hit = teacher_embeddings(teacher, opts, torch.device("cpu"), tmp_path / "data", keys, stems, None, "x")
    assert hit and np.array_equal(again, got)
    plain, _, _ = teacher_embeddings(teacher, TrainOptions(data=".", out=".", teacher=teacher_dir,
                                                           teacher_flip_average=flip),
                                     torch.device("cpu"), tmp_path / "data", keys, stems, None, "x")
    np.testing.assert_allclose(plain, want, atol=1e-5)
