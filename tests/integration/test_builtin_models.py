"""The built-in models: SFace is the default and sees every aligned crop in its own geometry; a gallery
of the old default keeps its model and is told how to move; reindex moves stored crops between the
two models' geometries. Real LFW crops, the real detector, the shipped weights."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests.conftest import extract_people, needs_lfw

pytestmark = needs_lfw

yuface = pytest.importorskip("yuface")

PEOPLE = {"Bill_Gates": 3, "Colin_Powell": 3, "Tony_Blair": 3}


def _landmarks(crop: np.ndarray) -> np.ndarray:
    """The five landmarks found again on a crop, in its pixels (as realign finds them)."""
    from facesearch.detect.align import crop_face

    face = crop_face(crop)
    assert face is not None, "no face found on the crop"
    return np.asarray(face.landmarks, np.float64)


def _crop_png(fs, identity: str) -> np.ndarray:
    from facesearch import images
    from sqlalchemy import select

    from facesearch.store.schema import Face, FaceCrop, Identity

    with fs.store.Session() as s:
        png = s.scalar(select(FaceCrop.crop_png).join(Face, Face.id == FaceCrop.face_id)
                       .join(Identity, Identity.id == Face.identity_id).where(Identity.name == identity)
                       .order_by(Face.id).limit(1))
    return images.decode(png, identity)


def _gap(crop: np.ndarray, template: np.ndarray) -> float:
    """How far a crop's face sits from a template: the distance between the centroids of its five
    landmarks (found again) and of the template's, in pixels. A similarity warp onto the template puts
    the fitted centroid on it exactly; what is left is the detector's own noise (~1-3 px here)."""
    return float(np.linalg.norm(_landmarks(crop).mean(0) - np.asarray(template).mean(0)))


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    return extract_people(tmp_path_factory.mktemp("people"), PEOPLE)


def test_the_default_is_sface_and_aligned_crops_are_put_in_its_geometry(tmp_path, people):
    from facesearch.detect.align import TEMPLATE_112
    from facesearch.gallery import FaceSearch
    from facesearch.gallery.embedding import model_crop
    from facesearch import images
    from facesearch.model.files import resolve

    sface = resolve("default").config
    template = np.asarray(sface.alignment)
    given = [images.load(people / n / f"{n}_0001.webp").pixels for n in PEOPLE]
    moved = [model_crop(px, sface) for px in given]
    assert all(m.shape == (112, 112, 3) for m in moved)
    # the pack's crops are not in SFace's geometry (its eyes sit ~6 px higher); moved, they are
    before = np.mean([_gap(px, template) for px in given])
    after = np.mean([_gap(m, template) for m in moved])
    assert before > 5 and after < before / 2, (before, after)
    # a model in the pack's geometry takes the crop as it is
    mobilenet = resolve("lfw-mobilenet").config
    assert model_crop(given[0], mobilenet) is given[0]
    assert np.mean([_gap(px, TEMPLATE_112) for px in given]) < before / 2

    with FaceSearch.open(home=tmp_path / "g") as fs:
        assert fs.config.name == "sface" and fs.store.active_model().location == "builtin:sface"
        fs.enroll_folder(people)
        # the store keeps the crop as given (any model can take it from there); SFace embedded it moved
        assert np.array_equal(_crop_png(fs, "Bill_Gates"), given[0])
        assert np.allclose(fs.embed([people / "Bill_Gates" / "Bill_Gates_0001.webp"]),
                           fs.embed_crops([images.prepare(moved[0], sface)]), atol=1e-5)
        res = fs.query(people / "Colin_Powell" / "Colin_Powell_0002.webp")
        assert res.identity == "Colin_Powell"
        assert [m.match for m in res.matches].count(True) == 1


class _NoFaces:
    """A detector that finds nothing (one whose faces are all missed): the fallback is the fixed warp."""

    def detect(self, pixels, min_score=0.0):
        return []

    def available(self):
        return True

    def require(self):
        pass

    def describe(self):
        return "finds no face"


def test_without_landmarks_the_crop_is_warped_from_the_pack_s_mean_geometry(people):
    from facesearch import images
    from facesearch.gallery.embedding import model_crop
    from facesearch.model.files import resolve

    sface = resolve("default").config
    template = np.asarray(sface.alignment)
    gaps_given, gaps_warped = [], []
    for name in PEOPLE:
        given = images.load(people / name / f"{name}_0001.webp").pixels
        warped = model_crop(given, sface, detector=_NoFaces())
        assert warped.shape == (112, 112, 3) and not np.array_equal(warped, given)
        gaps_given.append(_gap(given, template))
        gaps_warped.append(_gap(warped, template))
    # the average move brings every face closer to the template than the crop as given, most much closer
    assert all(w < g for w, g in zip(gaps_warped, gaps_given)), (gaps_warped, gaps_given)
    assert np.mean(gaps_warped) < np.mean(gaps_given) / 2, (gaps_warped, gaps_given)


def test_a_gallery_of_the_old_default_keeps_it_is_told_and_reindex_moves_its_crops(tmp_path, people):
    """builtin:default was the MobileNetV2: such a gallery opens with it (no re-embedding needed) and
    says how to move; reindex to SFace realigns the stored crops; back again, to the pack's geometry."""
    from click.testing import CliRunner
    from sqlalchemy import update

    from facesearch.cli import cli
    from facesearch.errors import OutdatedModelWarning
    from facesearch.gallery import FaceSearch
    from facesearch.store.schema import ModelRecord

    home = tmp_path / "old"
    with FaceSearch.open(home=home, model="lfw-mobilenet") as fs:
        fs.enroll_folder(people)
        # as a gallery made before the default changed recorded it
        with fs.store.Session.begin() as s:
            s.execute(update(ModelRecord).values(location="builtin:default"))
        before = fs.query(people / "Tony_Blair" / "Tony_Blair_0003.webp")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with FaceSearch.open(home=home) as fs:
            assert fs.config.name == "facesearch-mobilenet_v2-lfw-all"
            again = fs.query(people / "Tony_Blair" / "Tony_Blair_0003.webp")
            assert again.matches[0].distance == pytest.approx(before.matches[0].distance, abs=1e-6)
    notes = [w for w in caught if issubclass(w.category, OutdatedModelWarning)]
    assert len(notes) == 1 and "reindex --model default" in str(notes[0].message)
    out = CliRunner().invoke(cli, ["--home", str(home), "info"])
    assert out.exit_code == 0 and "note: this gallery is embedded by lfw-mobilenet" in out.stderr

    out = CliRunner().invoke(cli, ["--home", str(home), "reindex", "--model", "default"])
    assert out.exit_code == 0, out.output
    with FaceSearch.open(home=home) as fs:
        assert fs.config.name == "sface" and fs.store.active_model().location == "builtin:sface"
        moved = fs.query(people / "Tony_Blair" / "Tony_Blair_0003.webp")
    # the same answer, at the distance of a gallery enrolled with SFace from the start
    with FaceSearch.open(home=tmp_path / "new") as fresh:
        fresh.enroll_folder(people)
        direct = fresh.query(people / "Tony_Blair" / "Tony_Blair_0003.webp")
    assert moved.identity == direct.identity == "Tony_Blair"
    assert moved.matches[0].distance == pytest.approx(direct.matches[0].distance, abs=0.03)

    out = CliRunner().invoke(cli, ["--home", str(home), "reindex", "--model", "lfw-mobilenet"])
    assert out.exit_code == 0, out.output
    with FaceSearch.open(home=home) as fs:  # the crops were kept as given: the very distances of before
        back = fs.query(people / "Tony_Blair" / "Tony_Blair_0003.webp")
        assert back.matches[0].distance == pytest.approx(before.matches[0].distance, abs=1e-5)
