"""Evaluation end to end on real LFW images with a real (ImageNet-initialised) encoder.

Slices of the official pairs files keep it small: 10 folds of 4 + 4 pairs, and View 1's first pairs.
The ``model_dir`` fixture (conftest) is MobileNetV2 with ImageNet weights and a random head; ImageNet
features separate LFW pairs well above chance, so AUC > 0.6 is an honest bar.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from facesearch import evaluation as ev
from facesearch import metrics
from facesearch.cli.evaluate import format_identify

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
LFW = SHARED / "data" / "lfw"
LFW_ZIP = LFW / "lfw-deepfunneled-112.zip"

needs_lfw = pytest.mark.skipif(
    not (LFW_ZIP.exists() and (LFW / "pairs.txt").exists()), reason=f"LFW pack or pairs.txt not found in {LFW}"
)
pytestmark = needs_lfw


def slice_view2(dest: Path, per_fold: int) -> Path:
    """The first ``per_fold`` matched and mismatched pairs of each of the 10 folds of pairs.txt."""
    lines = (LFW / "pairs.txt").read_text().splitlines()
    n_sets, per = map(int, lines[0].split())
    body = lines[1:]
    out = [f"{n_sets}\t{per_fold}"]
    for k in range(n_sets):
        block = body[2 * per * k : 2 * per * (k + 1)]
        out += block[:per_fold] + block[per : per + per_fold]
    dest.write_text("\n".join(out) + "\n")
    return dest


def slice_view1(dest: Path, n: int) -> Path:
    lines = (LFW / "pairsDevTest.txt").read_text().splitlines()
    per = int(lines[0])
    dest.write_text("\n".join([str(n)] + lines[1 : 1 + n] + lines[1 + per : 1 + per + n]) + "\n")
    return dest


@pytest.fixture(scope="module")
def lfw_result(model_dir, tmp_path_factory):
    pairs = slice_view2(tmp_path_factory.mktemp("pairs") / "pairs80.txt", 4)
    calls = []

    class Bar:
        def __init__(self, desc, total):
            calls.append({"desc": desc, "total": total, "done": 0})

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            calls[-1]["done"] += n

    result = ev.evaluate_lfw(pairs, LFW_ZIP, model=model_dir, device="cpu", batch_size=32, progress=Bar)
    return result, calls


# --------------------------------------------------------------------------- pairs files


def test_read_pairs_view2_is_ten_folds_of_300_plus_300():
    p = ev.read_pairs(LFW / "pairs.txt")
    assert len(p) == 6000 and p.n_folds == 10 and p.protocol == "10-fold"
    assert np.bincount(p.fold).tolist() == [600] * 10
    assert [int(p.same[p.fold == k].sum()) for k in range(10)] == [300] * 10
    assert p.left[0] == ("Abel_Pacheco", 1) and p.right[0] == ("Abel_Pacheco", 4)
    assert p.left[300] == ("Abdel_Madi_Shabneh", 1) and p.right[300] == ("Dean_Barker", 1) and not p.same[300]


def test_read_pairs_view1_is_one_set():
    p = ev.read_pairs(LFW / "pairsDevTest.txt")
    assert len(p) == 1000 and p.n_folds == 1 and int(p.same.sum()) == 500
    assert set(p.fold.tolist()) == {0}


@pytest.mark.parametrize(
    "text, where",
    [
        ("2\t1\nA\t1\t2\nA\t1\tB\t1\n", "header announces"),  # too few lines
        ("1\t1\nA\t1\tB\t1\nA\t1\t2\n", ":2:"),  # mismatched pair where a matched one belongs
        ("1\t1\nA\t1\tx\nA\t1\tB\t1\n", ":2:"),  # not a number
        ("ten\nA\t1\t2\n", ":1:"),
        ("", "empty"),
    ],
)
def test_read_pairs_rejects_malformed_files(tmp_path, text, where):
    f = tmp_path / "pairs.txt"
    f.write_text(text)
    with pytest.raises(ev.PairsFileError, match=where):
        ev.read_pairs(f)


# --------------------------------------------------------------------------- library, end to end


def test_lfw_slice_ten_folds_with_held_out_thresholds(lfw_result):
    r, _ = lfw_result
    assert r.n_pairs == 80 and r.n_folds == 10 and len(r.folds) == 10
    assert np.all((r.dist >= -1e-5) & (r.dist <= 2 + 1e-5))
    for f in r.folds:
        k = f["fold"] - 1
        held = r.fold == k
        # the threshold comes from the other folds, the accuracy from this one
        assert f["threshold"] == metrics.best_threshold(r.dist[~held], r.same[~held])[0]
        assert f["accuracy"] == metrics.accuracy(r.dist[held], r.same[held], f["threshold"])
    assert r.mean_accuracy == pytest.approx(np.mean([f["accuracy"] for f in r.folds]))
    assert r.auc > 0.6  # ImageNet features: well above chance on LFW
    assert 0 <= r.eer < 0.5
    assert set(r.tar_at_far) == {"1e-02", "1e-03"}
    assert r.model_threshold == pytest.approx(0.3) and r.model_threshold_accuracy is not None
    json.dumps(r.summary())  # JSON-ready


def test_lfw_embeds_each_image_once(lfw_result):
    r, calls = lfw_result
    unique = set(r.left) | set(r.right)
    assert r.n_images == len(unique) < 2 * r.n_pairs
    assert [c["desc"] for c in calls] == ["embedding"]
    assert calls[0]["total"] == calls[0]["done"] == len(unique)


def test_embedding_in_chunks_equals_embedding_at_once(model_dir):
    from facesearch.model import encoder
    from facesearch.datasets import ImageFolder

    folder = ImageFolder(LFW_ZIP)
    keys = folder.items["Colin_Powell"][:3] + folder.items["Tony_Blair"][:2]
    net = encoder.load(model_dir, "cpu")
    a = ev.embed_keys(folder, keys, net, batch_size=2, chunk=2)
    b = ev.embed_keys(folder, keys, net, batch_size=64, chunk=512)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)


def test_report_files(lfw_result, tmp_path):
    from facesearch.evaluation import report

    r, _ = lfw_result
    paths = report.write_lfw_report(r, tmp_path / "rep")
    for k in ("roc", "hist"):
        assert paths[k].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[k].stat().st_size > 5000
    data = json.loads(paths["json"].read_text())
    assert len(data["folds"]) == 10 and len(data["pairs"]) == r.n_pairs
    assert data["auc"] == pytest.approx(r.auc)
    page = paths["html"].read_text()
    # self-contained: both plots are in the page itself (it can be moved or mailed alone)
    assert 'src="roc.png"' not in page and page.count('src="data:image/png;base64,') == 2
    assert f"{100 * r.mean_accuracy:.2f}%" in page
    with_warning = report.write_lfw_report(r, tmp_path / "rep2", warnings=["trained on these people"])["html"]
    assert "Read these numbers with care" in with_warning.read_text() and "trained on these people" in with_warning.read_text()
    assert "Hardest false matches" in page and "Hardest false non-matches" in page
    n_errors = len(r.errors("false_match", 99)) + len(r.errors("false_non_match", 99))
    assert n_errors > 0 and page.count("data:image/jpeg;base64,") == 2 * (
        len(r.errors("false_match", report.N_EXAMPLES)) + len(r.errors("false_non_match", report.N_EXAMPLES))
    )


# --------------------------------------------------------------------------- CLI


def _cli():
    from facesearch.cli.evaluate import evaluate

    return evaluate


def test_cli_lfw_table_and_json(model_dir, tmp_path):
    pairs = slice_view2(tmp_path / "pairs20.txt", 1)
    args = ["lfw", "--pairs", str(pairs), "--images", str(LFW_ZIP), "--model", str(model_dir), "--device", "cpu"]
    res = CliRunner().invoke(_cli(), args + ["--json", "--report", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert len(data["folds"]) == 10 and data["n_pairs"] == 20
    for key in ("mean_accuracy", "std_accuracy", "auc", "eer", "tar_at_far", "best_threshold", "seconds"):
        assert key in data
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "roc.png").is_file()

    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "fold  threshold  accuracy" in out
    for f in data["folds"]:  # the same numbers as --json
        assert f"{f['fold']:>4}  {f['threshold']:9.4f}  {100 * f['accuracy']:7.2f}%" in out
    assert f"{100 * data['mean_accuracy']:.2f}% ± {100 * data['std_accuracy']:.2f}%" in out
    assert f"{data['auc']:.4f}" in out and "EER" in out and "TAR @ FAR = 1e-03" in out


def extract_for(pairs: Path, dest: Path) -> Path:
    """A folder of identities (dest/<name>/<name>_NNNN.webp) holding just the images ``pairs`` uses."""
    with zipfile.ZipFile(LFW_ZIP) as z:
        for name, n in ev.read_pairs(pairs).images():
            (dest / name).mkdir(parents=True, exist_ok=True)
            member = f"lfw-deepfunneled-112/{name}/{name}_{n:04d}.webp"
            (dest / name / Path(member).name).write_bytes(z.read(member))
    return dest


def test_cli_lfw_view1_on_a_folder_reports_the_model_threshold(model_dir, tmp_path):
    pairs = slice_view1(tmp_path / "dev.txt", 8)
    root = extract_for(pairs, tmp_path / "faces")
    res = CliRunner().invoke(
        _cli(), ["lfw", "--pairs", str(pairs), "--images", str(root), "--model", str(model_dir), "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["n_folds"] == 1 and data["folds"] == [] and data["mean_accuracy"] is None
    assert data["model_threshold"] == pytest.approx(0.3) and 0 <= data["model_threshold_accuracy"] <= 1
    assert 0.5 <= data["best_threshold_accuracy"] <= 1


def test_cli_errors_are_clear(tmp_path, monkeypatch):
    pairs = tmp_path / "p.txt"
    pairs.write_text("1\nAaron_Eckhart\t1\t2\nAaron_Eckhart\t1\tAbel_Pacheco\t1\n")
    from facesearch.model import files

    monkeypatch.setattr(files, "BUILTIN_MODELS", tmp_path / "no-model")  # where resolve() looks
    res = CliRunner().invoke(_cli(), ["lfw", "--pairs", str(pairs), "--images", str(LFW_ZIP)])
    assert res.exit_code == 1 and "Aaron_Eckhart #2 not found" in res.output  # checked before the model

    pairs.write_text("1\nAbel_Pacheco\t1\t2\nAaron_Eckhart\t1\tAbel_Pacheco\t1\n")
    res = CliRunner().invoke(_cli(), ["lfw", "--pairs", str(pairs), "--images", str(LFW_ZIP)])
    assert res.exit_code == 1 and "default model is not installed" in res.output and "--model" in res.output

    pairs.write_text("2\t1\nAbel_Pacheco\t1\t2\n")
    res = CliRunner().invoke(_cli(), ["lfw", "--pairs", str(pairs), "--images", str(LFW_ZIP)])
    assert res.exit_code == 1 and "header announces" in res.output


# --------------------------------------------------------------------------- open-set identification


def test_identification_split_is_disjoint_and_deterministic():
    from facesearch.datasets import ImageFolder

    folder = ImageFolder(LFW_ZIP)
    gallery, known, unknown = ev.select_identification(folder, 1, 2, max_identities=50, seed=3)
    assert len(gallery) == 25 and all(len(v) == 1 for v in gallery.values())
    gal_keys = {k for v in gallery.values() for k in v}
    assert not gal_keys & {k for _, k in known}  # a probe is never a gallery image
    assert {p for p, _ in known} <= set(gallery) and not {p for p, _ in unknown} & set(gallery)
    assert all(len(folder.items[p]) >= 2 for p in list(gallery) + [p for p, _ in unknown])
    assert ev.select_identification(folder, 1, 2, max_identities=50, seed=3) == (gallery, known, unknown)


def test_identify_end_to_end_through_the_service(model_dir):
    r = ev.evaluate_identify(LFW_ZIP, model=model_dir, device="cpu", max_identities=40, probes_per_identity=1)
    assert r.n_enrolled_identities == 20 and r.n_gallery_images == 20
    assert r.n_known_probes == 20 and r.n_unknown_probes == 20 and r.n_unknown_identities == 20
    assert 1 / 20 < r.rank1 <= r.rank5 <= 1  # better than guessing one of 20 people
    for v in r.dir_at_fpir.values():
        assert 0 <= v["dir"] <= r.rank1
    assert r.dir_at_fpir["1e-02"]["dir"] <= r.dir_at_fpir["1e-01"]["dir"]
    # 20 unknown probes resolve an FPIR of 10% (2 false alarms), not 1%: the text says so
    assert r.dir_at_fpir["1e-01"]["measurable"] and not r.dir_at_fpir["1e-02"]["measurable"]
    text = format_identify(r)
    assert "oracle '-': not measurable with 20 unknown probes: 1e-02 needs at least 100" in text
    assert "warning: these are LFW images" not in text  # this model was not trained on LFW
    r.model = dict(r.model, training={"data": "lfw-deepfunneled-112.zip", "people": 1512})
    assert "warning: these are LFW images, and this model was trained on LFW people" in format_identify(r)
    assert r.model_threshold == pytest.approx(0.3)
    assert 0 <= r.unknown_rejected <= 1 and r.dir_at_model_threshold <= r.rank1
    json.dumps(r.summary())


def test_identify_reports_the_stored_operating_points(model_dir, model_dir_with_operating_points):
    r = ev.evaluate_identify(LFW_ZIP, model=model_dir_with_operating_points, device="cpu", max_identities=40,
                             probes_per_identity=1)
    ops = r.at_operating_points
    assert set(ops) == {"1e-02", "1e-03"} and ops["1e-03"]["threshold"] == 0.125
    # stricter thresholds reject at least as many unknown probes and identify at most as many known ones
    assert r.unknown_rejected <= ops["1e-02"]["unknown_rejected"] <= ops["1e-03"]["unknown_rejected"] <= 1
    assert r.dir_at_model_threshold >= ops["1e-02"]["dir"] >= ops["1e-03"]["dir"] >= 0
    assert ev.evaluate_identify(LFW_ZIP, model=model_dir, device="cpu", max_identities=12).at_operating_points == {}


def test_cli_identify_json(model_dir):
    res = CliRunner().invoke(
        _cli(),
        ["identify", "--images", str(LFW_ZIP), "--model", str(model_dir), "--max-identities", "12", "--json"],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    for key in ("rank1", "rank5", "dir_at_fpir", "unknown_rejected", "model_threshold"):
        assert key in data
