"""The CLI end to end with click's CliRunner: real store, index, model and images."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from facesearch.cli import cli
from tests.conftest import PEOPLE


@pytest.fixture
def run(tmp_path, model_dir):
    home = tmp_path / "home"

    def _run(*args, model=True, ok=True, code=0):
        argv = ["--home", str(home), "--device", "cpu"] + (["--model", str(model_dir)] if model else []) + list(args)
        r = CliRunner().invoke(cli, argv, catch_exceptions=False)
        if ok:
            assert r.exit_code == code, r.output
        return r

    return _run


@pytest.fixture
def gallery(gallery_src, tmp_path):
    g = tmp_path / "g"
    for p in PEOPLE:
        (g / p).mkdir(parents=True)
        for i in (1, 2, 3):
            shutil.copy(gallery_src / p / f"{p}_{i:04d}.webp", g / p)
    (g / "Bill_Gates" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return g


def test_enroll_query_verify_info_json(run, gallery, gallery_src):
    r = run("enroll", str(gallery), "--json", code=3)  # 3: broken.jpg failed, the rest was enrolled
    rep = json.loads(r.stdout)
    assert rep["added"] == 3 * len(PEOPLE) and rep["failed"] == 1 and rep["skipped"] == 0
    assert rep["failures"][0]["source"].endswith("broken.jpg") and rep["failures"][0]["reason"]

    probe = gallery_src / "Hugo_Chavez" / "Hugo_Chavez_0004.webp"
    [q] = json.loads(run("query", str(probe), "--json", "--top-k", "3").stdout)  # a list, even for one
    assert set(q) >= {"matches", "threshold", "identity"}
    assert len(q["matches"]) == 3
    for i, m in enumerate(q["matches"]):
        assert set(m) >= {"identity", "distance", "match", "face_id"}
        assert m["match"] == (i == 0 and m["distance"] <= q["threshold"])  # at most the accepted identity
    top = q["matches"][0]
    src = gallery / top["identity"]
    first = sorted(src.iterdir())[0]
    v = json.loads(run("verify", str(probe), str(first), "--json").stdout)
    assert set(v) == {"distance", "threshold", "same"} and v["threshold"] == q["threshold"]
    assert v["same"] == (v["distance"] <= v["threshold"])

    info = json.loads(run("info", "--json", model=False).stdout)
    assert info["faces"] == info["index"]["size"] == 3 * len(PEOPLE)
    assert info["identities"] == len(PEOPLE)


def test_human_output_and_identities_commands(run, gallery, gallery_src, other_model_dir):
    out = run("enroll", str(gallery), code=3).output
    assert "added: 18" in out and "failed: 1" in out and "broken.jpg" in out
    # a photo enrolled already, asked for under another name (in the gallery, and twice in one run)
    again = gallery.parent / "again"
    for who in ("Someone_Else", "Another_One"):
        (again / who).mkdir(parents=True)
        shutil.copy(gallery / "Bill_Gates" / "Bill_Gates_0001.webp", again / who / "x.webp")
        shutil.copy(gallery_src / "Hugo_Chavez" / "Hugo_Chavez_0004.webp", again / who / "y.webp")
    out = run("enroll", str(again)).output
    assert "added: 1" in out and "3 file(s) are enrolled already as another identity" in out
    assert f"{again / 'Another_One' / 'x.webp'}: asked Another_One, enrolled as Bill_Gates" in out
    assert f"{again / 'Someone_Else' / 'y.webp'}: asked Someone_Else, enrolled as Another_One" in out
    run("identities", "remove", "Another_One", "--yes", model=False)
    out = run("query", str(gallery_src / "Tony_Blair" / "Tony_Blair_0001.webp")).output
    assert "Tony_Blair (distance 0.0000 <= threshold 0.3000)" in out
    listing = run("identities", "list", model=False).output
    assert all(f"{p}\t3" in listing for p in PEOPLE)
    run("identities", "rename", "Tony_Blair", "Anthony_Blair", model=False)
    shown = json.loads(run("identities", "show", "Anthony_Blair", "--json", model=False).stdout)
    assert len(shown["faces"]) == 3
    assert "removed Anthony_Blair (3 faces)" in run("identities", "remove", "Anthony_Blair", "--yes", model=False).output
    info = json.loads(run("info", "--json", model=False).stdout)
    assert info["faces"] == info["index"]["size"] == 15
    assert "index rebuilt: 15 faces" in run("reindex", model=False).output
    other = json.loads(run("reindex", "--model", str(other_model_dir), "--json", model=False).stdout)
    assert other["reembedded"] == other["faces"] == 15 and other["model"].startswith("test-other@")
    assert json.loads(run("info", "--json", model=False).stdout)["model"]["key"] == other["model"]
    assert "current: 0008  head: 0008" in run("db", "current", model=False).output


def test_threshold_and_far_decide_matches(run, gallery, gallery_src, model_dir_with_operating_points, tmp_path):
    run("enroll", str(gallery), code=3)
    probe = gallery_src / "Tony_Blair" / "Tony_Blair_0001.webp"  # enrolled: distance ~0 to itself
    other = gallery / "Hugo_Chavez" / "Hugo_Chavez_0001.webp"
    [q] = json.loads(run("query", str(probe), "--threshold", "0.0001", "--json").stdout)
    assert q["threshold"] == 0.0001 and q["identity"] == "Tony_Blair"
    assert [m["match"] for m in q["matches"]] == [True] + [False] * (len(q["matches"]) - 1)
    assert json.loads(run("query", str(probe), "--json").stdout)[0]["threshold"] == 0.3  # the model's
    assert json.loads(run("verify", str(probe), str(other), "--threshold", "2", "--json").stdout)["same"] is True
    v = json.loads(run("verify", str(probe), str(other), "--threshold", "0", "--json").stdout)
    assert v["same"] is False and v["threshold"] == 0.0
    # the test model stores no operating points: --far is refused with the way out, as is asking for both
    r = run("query", str(probe), "--far", "1e-3", ok=False)
    assert r.exit_code == 2 and "no threshold for FAR 0.001" in r.output and "facesearch calibrate" in r.output
    r = run("verify", str(probe), str(other), "--far", "1e-3", "--threshold", "0.1", ok=False)
    assert r.exit_code == 2 and "not both" in r.output
    # a model whose calibration stored them: --far uses the stored threshold
    argv = ["--home", str(tmp_path / "home"), "--device", "cpu", "--model", str(model_dir_with_operating_points)]
    r = CliRunner().invoke(cli, argv + ["verify", str(probe), str(other), "--far", "1e-3", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["threshold"] == 0.125
    r = CliRunner().invoke(cli, argv + ["info"])
    assert "--far 0.001: 0.1250" in r.output


def test_batch_query_of_a_folder(run, gallery, gallery_src, tmp_path):
    run("enroll", str(gallery), code=3)
    probes = tmp_path / "probes"
    probes.mkdir()
    for p in PEOPLE[:3]:
        shutil.copy(gallery_src / p / f"{p}_0004.webp", probes)
    out = json.loads(run("query", str(probes), "--json").stdout)
    assert isinstance(out, list) and len(out) == 3
    assert all(o["matches"] for o in out)


@pytest.mark.parametrize("args,message", [
    (["enroll", "/definitely/not/here"], "does not exist"),
    (["enroll", "--identity", "../etc", "x.jpg"], "path separator"),
    (["query", "/nope.jpg"], "no gallery in"),  # a home without a gallery: not made empty and searched
    (["verify", "/a.jpg", "/b.jpg"], "no such file"),  # verify needs no gallery
    (["identities", "show", "Nobody"], "no gallery in"),
    (["reindex"], "no gallery in"),
])
def test_errors_are_messages_not_tracebacks(run, args, message, tmp_path):
    r = run(*args, ok=False)
    assert r.exit_code in (1, 2)
    assert message in r.output
    assert "Traceback" not in r.output
    if message == "no gallery in":
        assert not (tmp_path / "home").exists()  # a mistyped --home is not created by a read


def test_empty_folder_is_an_error(run, tmp_path):
    (tmp_path / "empty").mkdir()
    r = run("enroll", str(tmp_path / "empty"), ok=False)
    assert r.exit_code == 1 and "no identity folders" in r.output


def test_evaluate_uses_the_global_model_option(model_dir, tmp_path):
    from tests.conftest import LFW_DIR, LFW_ZIP

    lines = (LFW_DIR / "pairsDevTest.txt").read_text().splitlines()
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(["2"] + lines[1:3] + lines[501:503]) + "\n")  # View 1 layout: 2 matched, 2 mismatched
    r = CliRunner().invoke(cli, ["--model", str(model_dir), "evaluate", "lfw", "--pairs", str(pairs),
                                 "--images", str(LFW_ZIP), "--json", "-q", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert str(model_dir) in json.dumps(out)


def test_database_and_home_problems_are_messages_not_tracebacks(tmp_path, model_dir):
    """What a user can fix is said in one line (exit 1), never a Python traceback; nothing is created."""
    not_db = tmp_path / "notdb"
    not_db.mkdir()
    (not_db / "facesearch.db").write_bytes(b"this is not a SQLite database, it only has its name" * 100)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["--home", str(not_db)], "cannot open database sqlite:///"),
        (["--home", str(tmp_path / "h1"), "--db", "nonsense://x"], "cannot use database nonsense://x"),
        (["--home", str(tmp_path / "h2"), "--db", "::::"], "the database URL is not valid"),
        (["--home", str(tmp_path / "h3"), "--db", "postgresql+psycopg://bob:s3cret@h:5x432/g"],
         "the database URL is not valid"),
        (["--home", str(a_file / "sub")], "cannot use " + str(a_file / "sub") + " as the facesearch home"),
    ]
    for args, message in cases:
        r = CliRunner().invoke(cli, args + ["--model", str(model_dir), "--device", "cpu", "info"])
        assert r.exit_code == 1, (args, r.output)
        assert message in r.output and "Traceback" not in r.output and r.exception.__class__ is SystemExit
        assert "s3cret" not in r.output
    assert (not_db / "facesearch.db").read_bytes().startswith(b"this is not")
    assert not (tmp_path / "h1").exists() or not any((tmp_path / "h1").iterdir())


def test_a_bad_index_option_is_refused_before_any_work(run, tmp_path, gallery_src):
    """--index is checked when the gallery is opened; an IVF with more lists than faces says why."""
    r = run("--index", "bogus", "info", ok=False)
    assert r.exit_code == 1 and "--index 'bogus' is not an index FAISS can build" in r.output
    r = run("--index", "IDMap,Flat", "info", ok=False)  # FAISS parses it, but adding to it fails later
    assert r.exit_code == 1 and "leave IDMap out" in r.output
    run("enroll", "-i", "Bill_Gates", *map(str, sorted((gallery_src / "Bill_Gates").iterdir())))
    r = run("--index", "IVF64,Flat", "reindex", ok=False)
    assert r.exit_code == 1 and "cannot train index 'IVF64,Flat' on 4 faces" in r.output and "Traceback" not in r.output
    assert "index rebuilt: 4 faces, Flat" in run("reindex").output  # the gallery is fine


def test_a_reader_that_goes_away_is_not_an_error(tmp_path, model_dir):
    """`facesearch info | head -1`: when the reader has closed the pipe, the command stops quietly, as
    other tools do, instead of printing "Error: Broken pipe"."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write fails with EPIPE
    try:
        p = subprocess.run([sys.executable, "-m", "facesearch.cli", "--home", str(tmp_path / "home"), "--model",
                            str(model_dir), "info"], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert p.returncode == 1  # click's exit for a closed stdout
    assert "Error" not in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_a_device_that_is_not_there_is_a_message(tmp_path, model_dir, gallery_src):
    import torch

    probe = str(next((gallery_src / "Bill_Gates").iterdir()))
    base = ["--home", str(tmp_path / "home"), "--model", str(model_dir)]
    r = CliRunner().invoke(cli, base + ["--device", "bogus", "query", probe])
    assert r.exit_code == 1 and "unknown device 'bogus': use auto, cpu, cuda or cuda:N" in r.output, r.output
    r = CliRunner().invoke(cli, base + ["--device", "bogus", "info"])  # checked before anything is opened
    assert r.exit_code == 1 and "unknown device 'bogus'" in r.output, r.output
    if not torch.backends.mps.is_available():
        r = CliRunner().invoke(cli, base + ["--device", "mps", "verify", probe, probe])
        assert r.exit_code == 1 and "device mps is not usable here" in r.output, r.output
    if not torch.cuda.is_available():
        r = CliRunner().invoke(cli, base + ["--device", "cuda", "verify", probe, probe])
        assert r.exit_code == 1 and "torch sees no CUDA GPU on this machine" in r.output, r.output
    else:
        r = CliRunner().invoke(cli, base + ["--device", f"cuda:{torch.cuda.device_count()}", "verify", probe, probe])
        assert r.exit_code == 1 and "numbered from 0" in r.output, r.output


def test_backends_and_devices_that_are_not_there_are_said_so(tmp_path, model_dir):
    import torch

    from facesearch import index

    base = ["--home", str(tmp_path / "home"), "--model", str(model_dir)]
    assert CliRunner().invoke(cli, base + ["info"]).exit_code == 0
    if not index.faiss_has_gpu():
        r = CliRunner().invoke(cli, base + ["--backend", "faiss-gpu", "info"])
        assert r.exit_code == 1 and "the installed FAISS has no GPU support" in r.output, r.output
        fresh = tmp_path / "fresh"  # refused before anything is created or recorded
        r = CliRunner().invoke(cli, ["--home", str(fresh), "--model", str(model_dir), "--backend", "faiss-gpu", "info"])
        assert r.exit_code == 1 and not fresh.exists(), r.output
    if not torch.cuda.is_available():
        r = CliRunner().invoke(cli, base + ["--backend", "torch-cuda", "info"])
        assert r.exit_code == 1 and "torch sees no CUDA GPU" in r.output, r.output
        info = json.loads(CliRunner().invoke(cli, base + ["--device", "cuda", "info", "--json"]).stdout)
        assert info["device"].startswith("cuda (not usable here: device cuda: torch sees no CUDA GPU")


def test_the_errors_the_readme_names_are_importable_and_facesearch_errors():
    import facesearch
    from facesearch import errors

    for name in ("InvalidImageError", "InvalidIdentityError", "UnknownIdentityError", "ModelMismatchError",
                 "SchemaError", "ModelFileError", "ThresholdError"):
        assert getattr(facesearch, name) is getattr(errors, name)
        assert issubclass(getattr(facesearch, name), facesearch.FaceSearchError)


def test_with_json_an_error_is_a_json_object_on_stderr(run, gallery):
    """The last line of stderr (notes and warnings may come before it) is the error as JSON."""
    run("enroll", str(gallery), code=3)

    def error(r):
        return json.loads(r.stderr.strip().splitlines()[-1])

    r = run("query", "/no/such/probe.jpg", "--json", ok=False)  # a probe that fails: an entry, as among many
    assert r.exit_code == 1 and json.loads(r.stdout) == [{"probe": "/no/such/probe.jpg", "error": "no such file"}]
    r = run("--home", str(gallery / "nowhere"), "query", "/no/such/probe.jpg", "--json", ok=False)
    assert r.stdout == "" and error(r)["exit_code"] == 1 and error(r)["error"].startswith("no gallery in")
    r = run("identities", "show", "Nobody", "--json", ok=False)
    assert error(r) == {"error": "no identity named 'Nobody'", "exit_code": 1}
    r = run("query", "--json", "--fpir", "0.5", "--far", "0.1", str(gallery / "Bill_Gates"), ok=False)
    assert error(r) == {"error": "give one of --fpir, --far and --threshold", "exit_code": 2}


def test_enroll_one_persons_folder_with_identity(run, gallery_src, tmp_path):
    folder = tmp_path / "holiday photos of ann"
    folder.mkdir()
    for i in (1, 2, 3):
        shutil.copy(gallery_src / "Serena_Williams" / f"Serena_Williams_{i:04d}.webp", folder)
    (folder / "notes.txt").write_text("not an image: passed over")
    (folder / "sub").mkdir()
    shutil.copy(gallery_src / "Bill_Gates" / "Bill_Gates_0001.webp", folder / "sub")  # sub-folders are not read
    rep = json.loads(run("enroll", "--identity", "Ann", str(folder), "--json").stdout)
    assert rep["added"] == 3 and rep["identities"] == ["Ann"]
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("enroll", "-i", "Ann", str(empty), ok=False)
    assert r.exit_code == 2 and "holds no image files" in r.output


def test_cluster_unenrolled_photos_then_enroll_a_cluster_by_name(tmp_path, gallery_src):
    """Three people never enrolled, three photos each and one stranger: grouped by person with the
    built-in model, written as folders, and one folder enrolled under a name in one command."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in PEOPLE[3:6]:
        for i in (1, 2, 3):
            shutil.copy(gallery_src / p / f"{p}_{i:04d}.webp", photos / f"{p}_{i}.webp")
    shutil.copy(gallery_src / PEOPLE[0] / f"{PEOPLE[0]}_0001.webp", photos / "stranger.webp")
    (photos / "broken.jpg").write_bytes(b"not an image")
    base = ["--home", str(tmp_path / "home"), "--device", "cpu"]
    r = CliRunner().invoke(cli, base + ["cluster", str(photos), "--out", str(tmp_path / "groups"), "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 3, r.output  # broken.jpg failed, the rest was grouped
    d = json.loads(r.stdout)
    got = sorted(sorted({s.split("/")[-1].rsplit("_", 1)[0] for s in g["sources"]}) for g in d["groups"])
    assert got == [[p] for p in sorted(PEOPLE[3:6])] and all(g["size"] == 3 for g in d["groups"])
    assert [s.split("/")[-1] for s in d["singletons"]] == ["stranger.webp"]
    assert d["failures"][0]["source"].endswith("broken.jpg") and len(d["written"]) == 3
    first = d["written"][0]
    who = d["groups"][0]["sources"][0].split("/")[-1].rsplit("_", 1)[0]
    r = CliRunner().invoke(cli, base + ["enroll", "--identity", "Named_Later", first, "--json"], catch_exceptions=False)
    assert r.exit_code == 0 and json.loads(r.stdout)["added"] == 3
    probe = gallery_src / who / f"{who}_0004.webp"  # a photo of that person not among the clustered ones
    [q] = json.loads(CliRunner().invoke(cli, base + ["query", str(probe), "--json"]).stdout)
    assert q["identity"] == "Named_Later"
    r = CliRunner().invoke(cli, base + ["cluster", str(photos), "--out", str(tmp_path / "groups")])
    assert r.exit_code == 1 and "exists" in r.output  # never over an earlier result


def test_merge_identities_and_remove_one_face(run, gallery, gallery_src):
    run("enroll", str(gallery), code=3)
    run("enroll", "-i", "Bill_G", str(gallery_src / "Bill_Gates" / "Bill_Gates_0004.webp"))  # a second name
    out = json.loads(run("identities", "merge", "Bill_G", "Bill_Gates", "--json", model=False).stdout)
    assert out == {"merged": "Bill_G", "into": "Bill_Gates", "faces": 1}
    listing = json.loads(run("identities", "list", "--json", model=False).stdout)
    assert "Bill_G" not in [i["identity"] for i in listing]
    assert next(i["faces"] for i in listing if i["identity"] == "Bill_Gates") == 4
    [q] = json.loads(run("query", str(gallery_src / "Bill_Gates" / "Bill_Gates_0004.webp"), "--json").stdout)
    assert q["identity"] == "Bill_Gates" and q["matches"][0]["distance"] < 1e-4  # the moved face, same id
    faces = json.loads(run("faces", "list", "-i", "Bill_Gates", "--json", model=False).stdout)
    wrong = next(f for f in faces if f["source"].endswith("Bill_Gates_0004.webp"))
    r = run("faces", "remove", str(wrong["face_id"]), "999999", "--json", ok=False, model=False)
    assert r.exit_code == 3 and json.loads(r.stdout) == {"removed": 1, "not_enrolled": 1}
    everyone = json.loads(run("faces", "list", "--json", model=False).stdout)
    assert wrong["face_id"] not in [f["face_id"] for f in everyone] and len(everyone) == 3 * len(PEOPLE)
    assert json.loads(run("info", "--json", model=False).stdout)["index"]["size"] == 3 * len(PEOPLE)
    r = run("identities", "merge", "Nobody", "Bill_Gates", ok=False, model=False)
    assert r.exit_code == 1 and "no identity named 'Nobody'" in r.output


def test_every_reporting_command_speaks_json(run, gallery):
    run("enroll", str(gallery), code=3)
    assert json.loads(run("identities", "rename", "Bill_Gates", "William", "--json", model=False).stdout) == {
        "renamed": "Bill_Gates", "to": "William"}
    assert json.loads(run("identities", "remove", "William", "--yes", "--json", model=False).stdout) == {
        "removed": "William", "faces": 3}
    r = run("identities", "remove", "Tony_Blair", "--json", ok=False, model=False)
    assert r.exit_code == 2  # --json asks nothing: it needs --yes
    d = json.loads(run("db", "current", "--json", model=False).stdout)
    assert d["current"] == d["head"] and d["up_to_date"] is True


def test_sources_are_stored_as_absolute_paths(run, gallery, monkeypatch):
    monkeypatch.chdir(gallery.parent)
    rep = json.loads(run("enroll", gallery.name, "--json", code=3).stdout)  # a relative folder
    assert all(Path(f["source"]).is_absolute() for f in rep["failures"])
    run("enroll", "-i", "Solo", f"{gallery.name}/Bill_Gates/Bill_Gates_0001.webp", code=0)
    faces = json.loads(run("faces", "list", "--json", model=False).stdout)
    assert faces and all(Path(f["source"]).is_absolute() and Path(f["source"]).exists() for f in faces)


def test_enrolling_photos_without_detect_warns_that_they_are_not_crops(run, gallery_src, tmp_path):
    from PIL import Image

    folder = tmp_path / "photos" / "Someone"
    folder.mkdir(parents=True)
    face = Image.open(gallery_src / "Tony_Blair" / "Tony_Blair_0001.webp").convert("RGB")
    canvas = Image.new("RGB", (1200, 900), (90, 120, 150))
    canvas.paste(face.resize((200, 200)), (500, 300))  # a photo: the face is a small part of it
    canvas.save(folder / "holiday.jpg")
    shutil.copy(gallery_src / "Tony_Blair" / "Tony_Blair_0002.webp", folder)  # a real crop: no warning
    r = run("enroll", str(tmp_path / "photos"), "--json")
    rep = json.loads(r.stdout)
    assert [u["source"].endswith("holiday.jpg") for u in rep["unlike_aligned_crops"]] == [True]
    assert "1200x900 pixels: much larger than a face crop" in rep["unlike_aligned_crops"][0]["why"]
    canvas.paste(face.resize((260, 260)), (100, 100))  # another photo, enrolled for the human-readable warning
    canvas.save(folder / "beach.jpg")
    human = run("enroll", str(tmp_path / "photos"))
    assert "added: 1" in human.stdout
    assert "warning: 1 image(s) do not look like aligned face crops" in human.stderr and "--detect" in human.stderr
